"""The real O2VIS training steps (tiny config, synthetic data): device-count invariance of the tracker
step, and short runs that lower the loss for the tracker and the segmenter tasks. The trainer's
mechanics (resume, SIGTERM, two processes, NaN guard) are tested on a cheaper task in test_train.py."""

import json
import os

import jax
import numpy as np
import pytest

from configs import tiny
from o2vis_jax import tasks, train
from shared_inputs import FixedBatch, lighten_segmenter


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("o2vis_train"))
  config = tiny.get_config()
  config.batch_size = 4
  config.train.clip_grad_norm = 1.0
  config.train.learning_rate = 1e-3
  batch = next(tasks.make_train_iterator(config, seed=0, workdir=workdir))
  return config, workdir, batch


def _with_fixed_batch(task_cls, config, workdir, batch):
  task = task_cls(config, workdir)
  task.train_iterator = lambda seed: FixedBatch(batch)
  return task


def _step(config, workdir, batch, devices):
  # Adam's first update is ~lr * sign(g): elements with |g| << eps-free noise would flip sign between
  # summation orders. A large eps makes the update linear in g, so the comparison is meaningful.
  config = config.copy_and_resolve_references()
  config.train.adam_eps = 1e-2
  task = tasks.TrackingTask(config, workdir)
  state, frozen, tx = train.initial_state(task, config)
  mesh = train.make_mesh(devices)
  step = train.make_train_step(task, tx, mesh, config.batch_size)
  new_state, metrics = step(state, frozen, train._global_batch(batch, mesh))
  update = jax.tree.map(lambda new, old: np.asarray(new, np.float64) - np.asarray(old, np.float64),
                        jax.device_get(new_state.params), jax.device_get(state.params))
  return update, jax.device_get(metrics)


def test_batch_has_the_documented_format(setup):
  config, _, batch = setup
  b, t, g = config.batch_size, config.data.num_frames, config.data.max_instances
  h, w = config.data.pad_buckets[0]
  assert batch["frames"].shape == (b, t, h, w, 3) and batch["frames"].dtype == np.float32
  assert batch["masks"].shape == (b, t, g, h, w) and batch["masks"].dtype == bool
  assert batch["labels"].shape == (b, g) and batch["present"].shape == (b, t, g)
  assert batch["instance_valid"].any(), "the synthetic clips should contain objects"


def test_tracker_step_same_on_one_and_four_devices(setup):
  config, workdir, batch = setup
  update1, metrics1 = _step(config, workdir, batch, jax.devices()[:1])
  update4, metrics4 = _step(config, workdir, batch, jax.devices()[:4])
  for name in ("loss", "loss_ce", "loss_mask", "loss_dice", "loss_sim", "loss_ce_E", "grad_norm"):
    np.testing.assert_allclose(metrics4[name], metrics1[name], rtol=2e-4, err_msg=name)
  # The update is compared relative to its own size: a single element's float32 reduction order (sums
  # over 1 vs 4 devices) may move it by ~1e-7 absolute, which is noise next to the update's norm.
  flat1 = np.concatenate([x.ravel() for x in jax.tree.leaves(update1)])
  flat4 = np.concatenate([x.ravel() for x in jax.tree.leaves(update4)])
  scale = np.linalg.norm(flat1)
  assert scale > 0, "the step did not move the parameters"
  assert np.linalg.norm(flat4 - flat1) <= 1e-4 * scale, np.linalg.norm(flat4 - flat1) / scale
  assert np.abs(flat4 - flat1).max() <= 1e-3 * np.abs(flat1).max()


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


@pytest.mark.parametrize("task_cls", [tasks.TrackingTask, tasks.SegmenterTask])
def test_short_run_lowers_the_loss(setup, tmp_path, task_cls):
  config, data_workdir, batch = setup
  config = lighten_segmenter(config.copy_and_resolve_references())
  config.num_train_steps = 6
  config.checkpoint_every_steps = 100
  config.train.warmup_steps = 0
  # One phase and the device matcher: the same compiled step as the resume test's (a persistent-cache
  # hit for whichever runs second; phases: test_losses, test_te_only).
  config.train.early_training_fraction = 0.0
  config.tracker.matcher = "device"
  task = _with_fixed_batch(task_cls, config, data_workdir, batch)
  train.train_and_evaluate(config, str(tmp_path), task, progress=False)
  losses = _losses(str(tmp_path))
  assert len(losses) == 6 and np.all(np.isfinite(losses))
  assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), f"loss did not fall: {losses}"


def test_te_only_step_trains_only_the_E_terms(setup):
  """Table 3(a) row 6: one training step of the T_E-only model (early matching, _E losses only)."""
  config, workdir, batch = setup
  config = lighten_segmenter(config.copy_and_resolve_references())
  config.association.method = "o2vis_te_only"
  task = tasks.TrackingTask(config, workdir)
  state, frozen, tx = train.initial_state(task, config)
  mesh = train.make_mesh(jax.devices()[:1])
  step = train.make_train_step(task, tx, mesh, config.batch_size, phase=task.phase(0))
  new_state, metrics = step(state, frozen, train._global_batch(batch, mesh))
  terms = sorted(k for k in metrics if k.startswith("loss_"))
  assert terms and all("_E" in k for k in terms), terms
  assert {"loss_ce_E", "loss_mask_E", "loss_dice_E"} <= set(terms)
  assert np.isfinite(metrics["loss"]) and float(metrics["grad_norm"]) > 0
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       state.params, new_state.params)
  assert max(jax.tree.leaves(moved)) > 0


def test_tracker_training_resumes_exactly_with_the_real_pipeline(setup, tmp_path):
  """Killed after the step-2 checkpoint (while fetching batch 3), resumed: the losses of steps 3-4 equal
  those of a run that never stopped (params, optimiser, RNG and the grain iterator state restored)."""
  config, data_workdir, _ = setup
  config = lighten_segmenter(config.copy_and_resolve_references())
  config.num_train_steps = 4
  config.checkpoint_every_steps = 2
  # One phase and the device matcher (no host callback: conftest): the three runs share one compiled step,
  # the short run's (the same settings, warm-up included).
  config.train.early_training_fraction = 0.0
  config.tracker.matcher = "device"
  config.train.warmup_steps = 0
  full_dir, killed_dir = str(tmp_path / "full"), str(tmp_path / "killed")
  train.train_and_evaluate(config, full_dir, tasks.TrackingTask(config, data_workdir), progress=False)

  class Killed(RuntimeError):
    pass

  class KilledAtThirdBatch(tasks.TrackingTask):
    def train_iterator(self, seed):
      inner = super().train_iterator(seed)

      class Iterator:
        fetched = 0

        def __next__(self):
          Iterator.fetched += 1
          if Iterator.fetched == 3:
            raise Killed()
          return next(inner)

        def get_state(self):
          return inner.get_state()

        def set_state(self, state):
          inner.set_state(state)
      return Iterator()

  with pytest.raises(Killed):
    train.train_and_evaluate(config, killed_dir, KilledAtThirdBatch(config, data_workdir), progress=False)
  train.train_and_evaluate(config, killed_dir, tasks.TrackingTask(config, data_workdir), progress=False)
  full, resumed = _losses(full_dir), _losses(killed_dir)
  assert len(full) == 4 and len(resumed) == 4, (full, resumed)
  np.testing.assert_allclose(resumed, full, rtol=1e-5)


def test_tracker_heads_from_segmenter(setup, tmp_path):
  """`train.tracker_heads_from_segmenter`: a fresh tracker starts with copies of the segmenter's LN_d,
  class and mask heads, and nothing else changes; a head of another shape is refused by name."""
  config, workdir, _ = setup
  config = config.copy_and_resolve_references()
  plain, frozen = tasks.TrackingTask(config, workdir).init_params(jax.random.PRNGKey(3))
  config.train.tracker_heads_from_segmenter = True
  copied, _ = tasks.TrackingTask(config, workdir).init_params(jax.random.PRNGKey(3))
  predictor = frozen["segmenter"]["predictor"]
  for name in tasks.TRACKER_HEADS:
    for a, b in zip(jax.tree.leaves(copied[name]), jax.tree.leaves(predictor[name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if name != "decoder_norm":   # a fresh LayerNorm (1, 0) equals the untrained segmenter's.
      assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(plain[name]),
                                                           jax.tree.leaves(predictor[name])))
  for name in set(plain) - set(tasks.TRACKER_HEADS):
    for a, b in zip(jax.tree.leaves(plain[name]), jax.tree.leaves(copied[name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  wrong = dict(frozen["segmenter"], predictor=dict(
      predictor, class_embed=jax.tree.map(lambda x: x[..., :2], predictor["class_embed"])))
  with pytest.raises(ValueError, match="class_embed"):
    tasks.heads_from_segmenter(plain, wrong)
