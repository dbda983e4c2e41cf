"""CAVIS training (o2vis_jax/association/cavis/loss.py, segmenter_loss.py): the reference-query contrastive
loss, L_CTX and L_PCC on hand-computed cases, and a short tracker-stage run on the tiny config that lowers
the loss."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cavis_tiny
from o2vis_jax import association, losses, tasks, train
from o2vis_jax.association.cavis import loss as cavis_loss
from o2vis_jax.association.cavis import segmenter_loss
from shared_inputs import FixedBatch, lighten_segmenter


def test_item_terms_hand_cases():
  contrastive, aux = cavis_loss.item_terms(jnp.array([2.0, 0.0]), jnp.array([[1.0, 0.0], [0.0, 1.0]]),
                                           jnp.array([True, False]), jnp.array([True, True]))
  assert float(contrastive) == pytest.approx(np.log(1 + np.exp(-2.0)), rel=1e-6)
  assert float(aux) == pytest.approx(0.0, abs=1e-7)
  # d = (1, 2, 2), the positive is the last: log(1 + e^(1-2) + e^(2-2)); cos = (1/sqrt2, 1/sqrt2, 1).
  contrastive, aux = cavis_loss.item_terms(jnp.array([1.0, 1.0]), jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]),
                                           jnp.array([False, False, True]), jnp.array([True, True, True]))
  assert float(contrastive) == pytest.approx(np.log(1 + np.exp(-1.0) + 1.0), rel=1e-6)
  assert float(aux) == pytest.approx(1.0 / 3.0, rel=1e-6)


def test_reference_contrastive_hand_case():
  """T = 4: the authors' reference list holds frames 1..3; anchors at frames 2 (previous and next keys)
  and 3 (previous only). GT 0 -> query 0; GT 1 unmatched (skipped); GT 2 -> query 1 is absent from every
  frame here but matched, so it counts (the authors' loop does not look at presence)."""
  refs = jnp.array([[[0.0, 0.0], [0.0, 0.0]],
                    [[1.0, 0.0], [0.0, 1.0]],
                    [[2.0, 0.0], [0.0, 1.0]],
                    [[0.0, 1.0], [1.0, 0.0]]])
  terms = cavis_loss.reference_contrastive_loss(refs, jnp.array([0, -1]), jnp.ones(4, bool))
  # GT 0 only: (f=2, prev) log(1 + e^-2), aux 0; (f=2, next) log(1 + e^2), aux 1; (f=3, prev) log(1 + e), aux 1.
  expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(2.0)) + np.log1p(np.e)) / 3
  assert float(terms["loss_reid"]) == pytest.approx(expected, rel=1e-6)
  assert float(terms["loss_reid_aux"]) == pytest.approx(2.0 / 3.0, rel=1e-6)
  # Two matched GTs: GT 1 -> query 1 adds its three items.
  both = cavis_loss.reference_contrastive_loss(refs, jnp.array([0, 1]), jnp.ones(4, bool))
  # query 1: (f=2, prev) anchor (0,1), keys (1,0),(0,1): pos d 1, neg d 0 -> log(1 + e^-1), aux 0;
  # (f=2, next) keys (0,1),(1,0): pos (1,0) d 0, neg (0,1) d 1 -> log(1 + e), aux 1;
  # (f=3, prev) anchor (1,0), keys (2,0),(0,1): pos (0,1) d 0, neg (2,0) d 2 -> log(1 + e^2), aux 1.
  second = np.log1p(np.exp(-1.0)) + np.log1p(np.e) + np.log1p(np.exp(2.0))
  assert float(both["loss_reid"]) == pytest.approx((3 * expected + second) / 6, rel=1e-6)
  assert float(both["loss_reid_aux"]) == pytest.approx(4.0 / 6.0, rel=1e-6)
  # Fewer than three frames: no anchor, both terms 0.
  none = cavis_loss.reference_contrastive_loss(refs[:2], jnp.array([0, 1]), jnp.ones(2, bool))
  assert float(none["loss_reid"]) == 0.0 and float(none["loss_reid_aux"]) == 0.0


def _targets(present, masks=None):
  present = jnp.asarray(present, bool)
  num_frames, num_gts = present.shape
  masks = jnp.zeros((num_frames, num_gts, 2, 2)) if masks is None else jnp.asarray(masks, jnp.float32)
  return losses.VideoTargets(labels=jnp.zeros((num_frames, num_gts), jnp.int32), masks=masks, present=present,
                             frame_valid=jnp.ones((num_frames,), bool))


def test_context_loss_hand_case_with_an_absent_id_group():
  """Frame 0: GT 0 -> q0 (1,0), GT 1 -> q1 (0,1). Frame 1: GT 0 -> q2 (1,0), GT 1 absent -> q0 (0,2): id -1.
  Groups: {e00, e10} (GT 0), {e01} (GT 1), {e11} (-1): three items."""
  reid = jnp.array([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]],
                    [[0.0, 2.0], [3.0, 3.0], [1.0, 0.0]]])
  terms = segmenter_loss.context_contrastive_loss(reid, jnp.array([[0, 1], [2, 0]]),
                                                  _targets([[True, True], [True, False]]))
  e = np.e
  expected = (2 * np.log(1 + 4 / e) + np.log(1 + 2 / e + e) + np.log(1 + 2 * e ** -4 + e ** -2)) / 3
  assert float(terms["loss_ctx"]) == pytest.approx(expected, rel=1e-6)
  assert float(terms["loss_ctx_aux"]) == pytest.approx(1.0 / 6.0, rel=1e-6)
  # One group only (no negatives): no item, both 0, and a finite (zero) gradient.
  grad = jax.grad(lambda r: segmenter_loss.context_contrastive_loss(
      r, jnp.array([[0, -1], [2, -1]]), _targets([[True, False], [True, False]]))["loss_ctx"])(reid)
  assert np.all(np.asarray(grad) == 0.0)


def test_prototype_loss_hand_case_and_one_instance_skip():
  features = np.zeros((2, 2, 2, 2), np.float32)
  features[0, 0, 0] = [1, 0]
  features[0, 0, 1] = [0, 1]
  features[1, 1, 0] = [2, 0]
  masks = np.zeros((2, 3, 2, 2), np.float32)     # GT 2: padding
  masks[0, 0, 0, 0] = masks[0, 1, 0, 1] = masks[1, 0, 1, 0] = 1
  present = [[True, True, False], [True, False, False]]
  terms = segmenter_loss.prototype_contrastive_loss(jnp.asarray(features), _targets(present, masks))
  e = np.e
  expected = (np.log(1 + 1 / e + e ** -2) + np.log(1 + e ** -2 + e ** -4) + np.log(1 + 2 / e)) / 2
  assert float(terms["loss_proto"]) == pytest.approx(expected, rel=1e-6)
  assert float(terms["loss_proto_aux"]) == pytest.approx(0.0, abs=1e-7)
  # The GT masks are resized (bilinear, align_corners False) to the features: 4x4 -> 2x2 gives the same.
  big = np.repeat(np.repeat(masks, 2, axis=2), 2, axis=3)
  again = segmenter_loss.prototype_contrastive_loss(jnp.asarray(features), _targets(present, big))
  assert float(again["loss_proto"]) == pytest.approx(expected, rel=1e-6)
  # A clip with one instance: skipped.
  one = segmenter_loss.prototype_contrastive_loss(
      jnp.asarray(features), _targets([[True, False, False], [True, False, False]], masks))
  assert float(one["loss_proto"]) == 0.0 and float(one["loss_proto_aux"]) == 0.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("cavis_train"))
  config = lighten_segmenter(cavis_tiny.get_config())
  config.batch_size = 4   # one clip per forced host device (conftest: 4)
  config.train.clip_grad_norm = 1.0
  config.train.learning_rate = 1e-3
  batch = next(tasks.make_train_iterator(config, seed=0, workdir=workdir))
  return config, workdir, batch


def test_phases_follow_the_segmenter_guided_fraction(setup):
  config = setup[0].copy_and_resolve_references()
  config.num_train_steps = 10
  method = association.get("cavis")
  assert [method.phase(config, s) for s in (0, 4, 5, 9)] == ["segmenter_guided"] * 2 + ["main"] * 2


def test_short_tracker_run_lowers_the_loss(setup, tmp_path):
  """Six steps on one fixed batch in the segmenter-guided phase (the matching is fixed by the segmenter,
  so the loss is one function of the tracker's weights across steps); every CAVIS term is logged."""
  config, data_workdir, batch = setup
  config = config.copy_and_resolve_references()
  config.num_train_steps = 6
  config.checkpoint_every_steps = 100
  config.train.warmup_steps = 0
  config.association.cavis.segmenter_guided_fraction = 1.0
  task = tasks.TrackingTask(config, data_workdir)
  task.train_iterator = lambda seed: FixedBatch(batch)
  initial, _ = task.init_params(jax.random.split(jax.random.PRNGKey(config.seed))[0])
  state = train.train_and_evaluate(config, str(tmp_path), task, progress=False)
  # The ReID head is the segmenter stage's: the tracker stage keeps it (frozen_in_training); CAIT moves.
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), initial,
                       jax.device_get(state.params))
  assert max(jax.tree.leaves(moved["reid_embed"])) == 0.0
  assert max(jax.tree.leaves(moved["ctx_query_embed"])) > 0.0
  with open(os.path.join(str(tmp_path), "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  losses = [r["loss"] for r in records]
  assert len(losses) == 6 and np.all(np.isfinite(losses))
  assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_reid", "loss_reid_aux"} <= set(records[0])
  assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), f"loss did not fall: {losses}"
