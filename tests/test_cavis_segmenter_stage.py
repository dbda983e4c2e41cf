"""CAVIS's segmenter stage (CAVIS_segmenter) on the shared trainer: `tasks.SegmenterTask` trains the segmenter
with the method's ReID head and adds L_CTX + L_PCC (`Method.segmenter_loss`) next to the per-frame
Mask2Former losses on every clip GT at every frame (`Method.segmenter_targets`); the export holds the head
under the method's params, where the tracker stage finds it."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cavis_common, cavis_ovis_r50, cavis_tiny, cavis_ytvis19_r50
from o2vis_jax import association, config_validation, losses, tasks, train
from o2vis_jax.association.cavis import segmenter_loss
from o2vis_jax.association.cavis import step as cavis_step
from o2vis_jax.checkpoint_conversion.io import load_converted
from shared_inputs import FixedBatch, lighten_segmenter


def _targets(present, masks):
  present = jnp.asarray(present, bool)
  return losses.VideoTargets(labels=jnp.zeros(present.shape, jnp.int32), masks=jnp.asarray(masks, jnp.float32),
                             present=present, frame_valid=jnp.ones((present.shape[0],), bool))


def test_clip_targets_make_every_clip_gt_a_target_of_every_frame():
  targets = _targets([[True, False, False], [False, False, False], [False, True, False]], np.zeros((3, 3, 2, 2)))
  targets = targets._replace(frame_valid=jnp.array([True, True, False]))
  clip = segmenter_loss.clip_targets(targets)
  # GT 1 is present only on the padded frame: not in the clip. GT 0 is a target of both valid frames.
  np.testing.assert_array_equal(np.asarray(clip.present), [[True, False, False], [True, False, False],
                                                           [False, False, False]])
  assert float(losses.segmenter_mask_count(clip)) == 2.0


def test_prototype_loss_skips_a_clip_with_an_instance_without_pixels():
  """A:679-681: a clip where some instance's GT mask is empty in every frame gives no L_PCC."""
  features = np.zeros((1, 2, 2, 2), np.float32)
  features[0, 0, 0], features[0, 1, 1] = [1, 0], [0, 1]
  masks = np.zeros((1, 3, 2, 2), np.float32)
  masks[0, 0, 0, 0] = masks[0, 1, 1, 1] = 1
  with_pixels = segmenter_loss.prototype_contrastive_loss(jnp.asarray(features),
                                                          _targets([[True, True, False]], masks))
  assert float(with_pixels["loss_proto"]) == pytest.approx(np.log1p(np.exp(-1.0)), rel=1e-6)
  empty = segmenter_loss.prototype_contrastive_loss(jnp.asarray(features), _targets([[True, True, True]], masks))
  assert float(empty["loss_proto"]) == 0.0 and float(empty["loss_proto_aux"]) == 0.0
  # The zero prototypes of the GTs without pixels at a frame leave the gradient finite (F.normalize's
  # max(||x||, eps) written without a NaN derivative at 0).
  grad = jax.grad(lambda f: sum(segmenter_loss.prototype_contrastive_loss(
      f, _targets([[True, True, False]], masks)).values()))(jnp.asarray(features))
  assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).max()) > 0


def test_segmenter_variants_hold_the_authors_settings():
  for module, dataset, contrastive in ((cavis_ytvis19_r50, "ytvis_2019", True), (cavis_ovis_r50, "ovis", False)):
    config = module.get_config("segmenter")
    config_validation.validate(config, training=True)
    assert config.train.task == "segmenter" and config.data.dataset == dataset
    assert (config.num_train_steps, tuple(config.train.decay_steps), config.batch_size) == (40000, (28000,), 8)
    assert (config.data.num_frames, config.data.sampling_frame_range) == (3, 2)
    assert config.train.learning_rate == 1e-4 and config.train.backbone_lr_multiplier == 0.1
    assert config.loss.contrastive_weight == 0.0
    section = config.association.cavis
    assert (section.ctx_weight, section.proto_weight, section.context_filter_size) == (2.0, 2.0, 9)
    assert section.reference_contrastive == contrastive
    assert module.get_config().train.task == "tracker"
  with pytest.raises(ValueError, match="variant"):
    cavis_common.get_variant("ytvis19", "r50", "segmentr")
  tiny = cavis_tiny.get_config("segmenter")
  config_validation.validate(tiny, training=True)
  assert tiny.train.task == "segmenter" and tiny.loss.contrastive_weight == 0.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("cavis_segmenter"))
  config = lighten_segmenter(cavis_tiny.get_config("segmenter"))
  config.batch_size = 4   # one clip per forced host device (conftest: 4)
  config.train.clip_grad_norm = 1.0
  config.train.learning_rate = 1e-3
  batch = next(tasks.make_train_iterator(config, seed=0, workdir=workdir))
  return config, workdir, batch


def test_task_loss_holds_the_method_terms(setup):
  """L_CTX / L_PCC in the task's loss dict equal `segmenter_loss` on the same inputs: the segmenter's
  outputs, the ReID head of the trainable method params, the last layer's per-frame assignment of every
  clip GT (same keys as the criterion), averaged over the videos."""
  config, workdir, batch = setup
  config = config.copy_and_resolve_references()
  config.batch_size = 2                               # two videos of the fixture's batch
  batch = jax.tree.map(lambda x: x[:2], batch)
  task = tasks.SegmenterTask(config, workdir)
  task._num_masks = losses.average_num_masks          # outside the trainer's shard_map: no device axis
  trainable, frozen = task.init_params(jax.random.PRNGKey(3))
  assert set(trainable) == {"segmenter", "tracker"} and frozen == {}
  assert "tracker/ctx_query_embed" in task.frozen_subtrees and "tracker/reid_embed" not in task.frozen_subtrees
  batch = jax.tree.map(jnp.asarray, batch)
  rngs = jax.random.key_data(jax.random.split(jax.random.PRNGKey(5), config.batch_size))
  total, terms = jax.jit(lambda p, b, r: task.loss(p, frozen, b, r, 0, "main"))(trainable, batch, rngs)
  assert "loss_contrastive" not in terms      # CAVIS_segmenter has no Eq. 13

  filter_size = config.association.cavis.context_filter_size

  @jax.jit
  def by_hand(params, batch, rngs):
    seg = tasks.segmenter_forward(config, params["segmenter"], batch["frames"], batch["pixel_valid"])
    targets = losses.targets_from_batch(batch)
    model = association.get("cavis").module(config, hidden_dim=config.model.hidden_dim,
                                            num_classes=config.model.num_classes).bind({"params": params["tracker"]})
    num_masks = losses.average_num_masks(jax.vmap(lambda t: losses.segmenter_mask_count(
        segmenter_loss.clip_targets(t)))(targets))
    results = []
    for b in range(config.batch_size):
      video = jax.tree.map(lambda x: x[b], targets)
      set_key = jax.random.wrap_key_data(rngs[b])
      outputs = dict(pred_logits=seg["pred_logits"][b], pred_masks=seg["pred_masks"][b],
                     aux=[dict(pred_logits=a["pred_logits"][b], pred_masks=a["pred_masks"][b])
                          for a in seg["aux_outputs"]])
      set_total, _, query_of_gt = losses.segmenter_criterion_and_assignment(
          set_key, outputs, segmenter_loss.clip_targets(video), num_masks, task.loss_config)
      frames = dict(embeds=seg["pred_embds"][b], masks=seg["pred_masks"][b],
                    mask_features=seg["mask_features"][b])
      reid = jax.vmap(lambda f: cavis_step.reid_features(model, filter_size, f))(frames)
      video_terms = dict(segmenter_loss.context_contrastive_loss(reid, query_of_gt, video))
      video_terms.update(segmenter_loss.prototype_contrastive_loss(frames["mask_features"], video))
      results.append((set_total, video_terms))
    return results

  results = jax.device_get(by_hand(trainable, batch, rngs))
  set_totals = [r[0] for r in results]
  expected = {k: [r[1][k] for r in results] for k in ("loss_ctx", "loss_ctx_aux", "loss_proto", "loss_proto_aux")}
  for k, values in expected.items():
    assert float(terms[k]) == pytest.approx(np.mean(values), rel=1e-4, abs=1e-6), k
  assert float(terms["loss_ctx"]) > 0 and float(terms["loss_proto"]) > 0
  method_total = 2.0 * sum(np.mean(v) for v in expected.values())
  assert float(total) == pytest.approx(np.mean(set_totals) + method_total, rel=1e-4)


def test_short_segmenter_run_lowers_the_loss_and_trains_the_reid_head(setup, tmp_path):
  """Six steps on one fixed batch: the total falls, the segmenter and the ReID head move, CAIT stays as
  initialised; the export holds the head under 'tracker', and the tracker stage starts from it."""
  config, data_workdir, batch = setup
  config = config.copy_and_resolve_references()
  config.num_train_steps = 6
  config.checkpoint_every_steps = 100
  config.train.warmup_steps = 0
  task = tasks.SegmenterTask(config, data_workdir)
  task.train_iterator = lambda seed: FixedBatch(batch)
  initial, _ = task.init_params(jax.random.split(jax.random.PRNGKey(config.seed))[0])
  workdir = str(tmp_path / "run")
  state = train.train_and_evaluate(config, workdir, task, progress=False)
  params = jax.device_get(state.params)
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), initial, params)
  assert max(jax.tree.leaves(moved["tracker"]["reid_embed"])) > 0.0
  assert max(jax.tree.leaves(moved["segmenter"])) > 0.0
  others = {k: v for k, v in moved["tracker"].items() if k != "reid_embed"}
  assert max(jax.tree.leaves(others)) == 0.0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  history = [r["loss"] for r in records]
  assert len(history) == 6 and np.all(np.isfinite(history))
  assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_ctx", "loss_ctx_aux", "loss_proto",
          "loss_proto_aux"} <= set(records[0])
  assert np.mean(history[-2:]) < 0.9 * np.mean(history[:2]), f"loss did not fall: {history}"

  exported = train.export(str(tmp_path / "export"), config, task.export_params(params))
  _, loaded = load_converted(exported)
  assert set(loaded) == {"segmenter", "tracker"}
  tracker_config = config.copy_and_resolve_references()
  tracker_config.train.task = "tracker"
  tracker_config.init_checkpoint = exported
  tracker, _ = tasks.TrackingTask(tracker_config, data_workdir).init_params(jax.random.PRNGKey(1))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(tracker["reid_embed"]),
               params["tracker"]["reid_embed"])
