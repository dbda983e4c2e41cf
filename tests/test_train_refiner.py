"""Training the offline temporal refiner (`train.task='refiner'`, tasks.RefinerTask;
shared/reference/refiner.md "Training"): the matching switch from the frozen tracker's outputs to the
refiner's own layers on a hand case, the video-as-one-image stacking, a short run on a fixed batch that
lowers the loss and leaves the frozen segmenter and tracker untouched, the phase switch, the export, the
config checks and values, and time reversal."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import offline_r50
from o2vis_jax import config_validation, input_pipeline, losses, tasks, train
from o2vis_jax.checkpoint_conversion import io as checkpoint_io
from shared_inputs import FixedBatch


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """The tiny offline config, one training batch and an online checkpoint ({'segmenter', 'tracker'},
  random weights) to train the refiner on."""
  root = str(tmp_path_factory.mktemp("refiner_train"))
  config = offline_r50.get_config("tiny")
  config.batch_size = 4      # one clip per forced host device (conftest).
  config.data.num_frames = 3
  config.data.min_size_train = (64, 64)
  config.data.max_size_train = 64
  config.data.crop_enabled = False
  config.data.pad_buckets = ((64, 64),)
  # A lighter segmenter than the tiny default: the two phases compile in ~30 s instead of ~50 s.
  config.model.backbone.depth = 18
  config.model.pixel_decoder.num_encoder_layers = 1
  config.model.transformer_decoder.num_layers = 2
  config.train.learning_rate = 1e-3
  config.train.clip_grad_norm = 1.0
  batch = next(tasks.make_train_iterator(config, seed=0, workdir=root))
  online_config = config.copy_and_resolve_references()
  online_config.train.task = "tracker"
  tracker, frozen = tasks.TrackingTask(online_config, root).init_params(jax.random.PRNGKey(1))
  online = train.export(os.path.join(root, "online"), online_config,
                        {"segmenter": frozen["segmenter"], "tracker": tracker})
  config.init_checkpoint = online
  return config, root, batch


# ------------------------------------------------------------------------------ the hand-made case
def _blob(size, rows, cols):
  mask = np.zeros((size, size), np.float32)
  mask[rows[0]:rows[1], cols[0]:cols[1]] = 1.0
  return mask


def _hand_case():
  """T = 2 frames, N = 3 slots, one GT (class 1) in the top-left quarter of both frames. The tracker's
  slot 0 covers it, the refiner's last layer puts it in slot 2 and its aux layer in slot 1."""
  size, num_frames, num_classes = 8, 2, 3
  gt = _blob(size, (0, 4), (0, 4))
  other = _blob(size, (4, 8), (4, 8))

  def slots(good):   # mask logits [T, 3, h, w]: the good slot on the GT, the others elsewhere.
    masks = np.stack([gt if n == good else other for n in range(3)])
    return jnp.asarray(np.broadcast_to(20.0 * masks - 10.0, (num_frames, 3, size, size)))

  def logits(good):   # [3, K+1]: the good slot says class 1, the others no-object.
    out = np.full((3, num_classes + 1), -5.0, np.float32)
    out[:, num_classes] = 5.0
    out[good] = -5.0
    out[good, 1] = 5.0
    return jnp.asarray(out)

  tracker_outputs = dict(pred_logits=jnp.broadcast_to(logits(0), (num_frames, 3, num_classes + 1)),
                         pred_masks=slots(0))
  refined = dict(pred_logits=logits(2), pred_masks=slots(2),
                 aux_outputs=[dict(pred_logits=logits(1), pred_masks=slots(1))])
  targets = losses.VideoTargets(labels=jnp.ones((num_frames, 1), jnp.int32),
                                masks=jnp.asarray(np.broadcast_to(gt, (num_frames, 1, size, size))),
                                present=jnp.ones((num_frames, 1), bool),
                                frame_valid=jnp.ones((num_frames,), bool))
  return refined, tracker_outputs, targets


def test_early_matching_uses_the_trackers_slots_for_every_layer_late_rematches():
  refined, tracker_outputs, targets = _hand_case()
  config = losses.LossConfig(num_points=64)
  key = jax.random.PRNGKey(0)
  early = tasks.refiner_assignments(key, refined, tracker_outputs, targets, config, "early")
  late = tasks.refiner_assignments(key, refined, tracker_outputs, targets, config, "late")
  # Layer order: last, then aux 0.
  assert [int(a[0]) for a in early] == [0, 0], "early: the tracker's slot 0 for every layer"
  assert [int(a[0]) for a in late] == [2, 1], "late: each layer its own best slot (last 2, aux 1)"

  num_masks = jnp.asarray(1.0)
  _, early_terms = tasks.refiner_criterion(key, refined, tracker_outputs, targets, num_masks, config,
                                           "early")
  _, late_terms = tasks.refiner_criterion(key, refined, tracker_outputs, targets, num_masks, config,
                                          "late")
  assert set(late_terms) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0",
                             "loss_dice_0"}
  for name in late_terms:   # matched to a slot that misses the GT: every term is larger.
    assert early_terms[name] > late_terms[name] + 0.1, (name, early_terms[name], late_terms[name])


def test_video_is_one_image_of_frames_stacked_vertically():
  masks = jnp.arange(2 * 3 * 2 * 4, dtype=jnp.float32).reshape(2, 3, 2, 4)   # [T, N, h, w]
  stacked = tasks.stack_over_time(masks)
  assert stacked.shape == (3, 4, 4)
  np.testing.assert_array_equal(stacked[1, 2:4], masks[1, 1])   # frame 1 of slot 1: rows h..2h-1.
  _, _, targets = _hand_case()
  image = tasks.stacked_targets(targets)
  assert image.masks.shape == (1, 1, 16, 8) and image.labels.shape == (1, 1)
  assert float(tasks.refiner_mask_count(targets)) == 1.0, "num_masks counts instances, not frames"


# ------------------------------------------------------------------------------------ the task
def test_phases_switch_at_the_configured_fraction(setup):
  config, root, _ = setup
  config = config.copy_and_resolve_references()
  config.num_train_steps = 10
  for fraction, switch in ((0.5, 5), (0.0, 0), (1.0, 10), (0.25, 3)):
    config.train.refiner_matching_switch = fraction
    task = tasks.RefinerTask(config, root)
    phases = [task.phase(step) for step in range(10)]
    assert phases == ["early"] * switch + ["late"] * (10 - switch), (fraction, phases)
  assert tasks.RefinerTask.phases == ("early", "late")


def test_short_run_lowers_the_loss_trains_only_the_refiner_and_exports_all_three(setup, monkeypatch):
  config, root, batch = setup
  config = config.copy_and_resolve_references()
  config.num_train_steps = 6
  config.log_every_steps = 1
  config.checkpoint_every_steps = 6
  workdir = os.path.join(root, "run")
  seen_phases = []
  phase_of = tasks.RefinerTask.phase

  def recording_phase(self, step):
    seen_phases.append((step, phase_of(self, step)))
    return seen_phases[-1][1]

  monkeypatch.setattr(tasks.RefinerTask, "train_iterator", lambda self, seed: FixedBatch(batch))
  monkeypatch.setattr(tasks.RefinerTask, "phase", recording_phase)
  exported = train.run_training(config, workdir, progress=False)

  assert [p for _, p in seen_phases[:6]] == ["early"] * 3 + ["late"] * 3, seen_phases
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  loss = [r["loss"] for r in records]
  assert len(loss) == 6 and all(np.isfinite(loss))
  assert {"loss_ce", "loss_mask_0", "loss_dice_0"} <= set(records[0])
  # Within each phase the loss falls on the repeated batch (the matching changes at the switch).
  assert loss[2] < loss[0] and loss[5] < loss[3], loss

  online = checkpoint_io.read_params(os.path.join(config.init_checkpoint, "params"))
  params = checkpoint_io.read_params(os.path.join(exported, "params"))
  assert set(params) == {"segmenter", "tracker", "refiner"}
  for part in ("segmenter", "tracker"):   # frozen: exported exactly as loaded.
    jax.tree.map(np.testing.assert_array_equal, params[part], online[part])
  task = tasks.RefinerTask(config, workdir)
  fresh, _ = task.init_params(jax.random.split(jax.random.PRNGKey(config.seed))[0])
  assert jax.tree.structure(params["refiner"]) == jax.tree.structure(fresh)
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                         params["refiner"], fresh))
  assert any(changed), "the refiner should have trained"
  exported_config, _ = checkpoint_io.load_converted(exported)   # the one reader accepts the export.
  assert exported_config.train.task == "refiner"
  assert exported_config.refiner.num_layers == config.refiner.num_layers
  # ... and a refiner run can start from it (config.init_refiner).
  resumed = config.copy_and_resolve_references()
  resumed.init_checkpoint, resumed.init_refiner = exported, True
  refiner, _ = tasks.RefinerTask(resumed, workdir).init_params(jax.random.PRNGKey(0))
  jax.tree.map(np.testing.assert_array_equal, refiner, params["refiner"])


def test_optimiser_and_state_hold_only_the_refiner(setup):
  config, root, _ = setup
  task = tasks.RefinerTask(config, root)
  state, frozen, _ = train.initial_state(task, config)
  assert set(frozen) == {"segmenter", "tracker"}
  assert "decoder_norm" in state.params and "segmenter" not in state.params
  size = lambda tree: sum(int(np.size(x)) for x in jax.tree.leaves(tree))
  # Adam's two moments over the refiner (plus counters): nothing for the frozen segmenter and tracker.
  assert size(state.opt_state) <= 2 * size(state.params) + 16, (size(state.opt_state), size(state.params))
  assert jax.tree.structure(state.opt_state).num_leaves >= 2 * len(jax.tree.leaves(state.params))


def test_needs_an_online_checkpoint(setup, tmp_path):
  config, root, _ = setup
  no_checkpoint = config.copy_and_resolve_references()
  no_checkpoint.init_checkpoint = ""
  # The shipped offline configs validate without one (it is given on the command line, as for the R50
  # tracker configs); the task fails before any data is read or step is compiled.
  config_validation.validate(no_checkpoint, training=True)
  with pytest.raises(ValueError, match="set config.init_checkpoint"):
    tasks.RefinerTask(no_checkpoint, root).init_params(jax.random.PRNGKey(0))
  online = checkpoint_io.read_params(os.path.join(config.init_checkpoint, "params"))
  segmenter_only = train.export(str(tmp_path / "segmenter_only"), config, {"segmenter": online["segmenter"]})
  with_segmenter_only = config.copy_and_resolve_references()
  with_segmenter_only.init_checkpoint = segmenter_only
  with pytest.raises(ValueError, match="'tracker'"):
    tasks.RefinerTask(with_segmenter_only, root).init_params(jax.random.PRNGKey(0))


@pytest.mark.parametrize("field, value", [("data.reverse_prob", 1.5), ("train.refiner_matching_switch", -0.1),
                                          ("train.task", "refine")])
def test_config_checks_name_the_field(field, value):
  config = offline_r50.get_config("tiny")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(config_validation.ConfigError, match=field.replace(".", r"\.")):
    config_validation.validate(config)


def test_time_reversal_reverses_the_clip_and_keeps_the_stream(setup):
  config, root, _ = setup
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.data_dir = tasks.resolve_data_dir(config, root)
  videos, _, _ = input_pipeline.open_train_sources(config)
  record = videos[0]

  def clip(reverse_prob):
    config.data.reverse_prob = reverse_prob
    options = input_pipeline.ClipOptions.from_config(config.data)
    return input_pipeline.make_training_clip(record, np.random.default_rng(3), options=options,
                                             pseudo_clip=False, pad_value=config.data.pad_value)

  forward, backward = clip(0.0), clip(1.0)
  np.testing.assert_array_equal(backward["frames"], forward["frames"][::-1])
  np.testing.assert_array_equal(backward["masks"], forward["masks"][::-1])
  np.testing.assert_array_equal(backward["present"], forward["present"][::-1])
  np.testing.assert_array_equal(backward["labels"], forward["labels"])


# --------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("dataset", ["ytvis19", "ytvis21", "ytvis22", "ovis"])
def test_offline_configs_carry_the_lomm_offline_settings(dataset):
  from configs import offline_vitl, r50_common
  for module in (offline_r50, offline_vitl):
    config = module.get_config(dataset)
    online = r50_common.tracker_training_config(dataset)
    assert (config.train.task, config.num_train_steps, tuple(config.train.decay_steps)) == (
        "refiner", 40000, (28000,)), module.__name__
    data = config.data
    assert (data.num_frames, data.sampling_frame_range, data.reverse_prob) == (15, 7, 0.5)
    assert (config.refiner.num_layers, config.train.refiner_matching_switch) == (6, 0.5)
    assert (config.model.num_classes, config.data.dataset) == (online.model.num_classes, online.data.dataset)
    config_validation.validate(config, training=True)


def test_synthetic_refiner_variant_fits_the_shipped_model():
  from configs import synthetic_tiny
  config = synthetic_tiny.get_config("refiner")
  assert config.train.task == "refiner" and config.data.num_frames == 15 and config.data.reverse_prob == 0.5
  config_validation.validate(config, training=True)
  loaded = tasks.load_init_params(config.init_checkpoint, config, ("segmenter", "tracker"))
  assert {"segmenter", "tracker"} <= set(loaded)
