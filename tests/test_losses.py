"""Every loss against NumPy on small inputs; T_E's modified targets and L_sim on the probe scenarios of
REFERENCE.md 7.3 (tables derived by hand); the tracker, T_E-only and segmenter criteria end to end
(`o2vis_jax.losses`, `association/o2vis/loss.py`, `association/o2vis_te_only/loss.py`)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from o2vis_jax import losses
from o2vis_jax.association.o2vis import loss as o2vis_loss
from o2vis_jax.association.o2vis_te_only import loss as te_only_loss
from o2vis_jax.losses import point_sampling

K = 3            # classes; no-object = 3.
CONFIG = losses.LossConfig(num_points=16)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def numpy_weighted_ce(logits, classes, frame_valid=None, no_object_weight=0.1):
  nll = -np.take_along_axis(_log_softmax(logits.astype(np.float64)), classes[..., None], -1)[..., 0]
  w = np.where(classes == logits.shape[-1] - 1, no_object_weight, 1.0)
  if frame_valid is not None:
    w = w * frame_valid[:, None]
  return np.sum(w * nll) / np.sum(w)


def test_classification_loss_weights_no_object():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, K + 1)).astype(np.float32)
  classes = rng.integers(0, K + 1, size=(3, 5)).astype(np.int32)
  frame_valid = np.array([True, True, False])
  got = losses.classification_loss(jnp.asarray(logits), jnp.asarray(classes), jnp.asarray(frame_valid), 0.1)
  np.testing.assert_allclose(float(got), numpy_weighted_ce(logits, classes, frame_valid), rtol=1e-5)


def test_target_classes_scatter_labels():
  query_of_gt = jnp.asarray([[2, 0, -1], [4, -1, 1]])
  pair_valid = query_of_gt >= 0
  labels = jnp.asarray([[1, 2, 0], [1, 2, 0]])
  got = losses.target_classes(query_of_gt, pair_valid, labels, 5, K)
  np.testing.assert_array_equal(np.asarray(got), [[2, 3, 1, 3, 3], [3, 0, 3, 3, 1]])


def test_point_mask_losses_match_numpy():
  rng = np.random.default_rng(1)
  x = rng.normal(scale=2, size=(4, 9))
  t = rng.uniform(size=(4, 9))
  w = np.array([1.0, 0.0, 1.0, 1.0])
  bce, dice = losses.point_mask_losses(jnp.asarray(x), jnp.asarray(t), jnp.asarray(w))
  s = 1 / (1 + np.exp(-x))
  want_bce = np.sum(w * np.mean(-(t * np.log(s) + (1 - t) * np.log(1 - s)), -1))
  want_dice = np.sum(w * (1 - (2 * np.sum(s * t, -1) + 1) / (s.sum(-1) + t.sum(-1) + 1)))
  np.testing.assert_allclose(float(bce), want_bce, rtol=1e-5)
  np.testing.assert_allclose(float(dice), want_dice, rtol=1e-5)


def test_mask_losses_match_numpy_on_uncertain_points():
  rng = np.random.default_rng(2)
  pred = rng.normal(scale=3, size=(2, 3, 4, 4)).astype(np.float32)
  gt = rng.uniform(size=(2, 2, 8, 8)) > 0.5
  query_of_gt = np.array([[0, 2], [1, -1]])
  pair_valid = query_of_gt >= 0
  key = jax.random.PRNGKey(5)
  bce, dice = losses.mask_losses(key, jnp.asarray(pred), jnp.asarray(gt), jnp.asarray(query_of_gt),
                                 jnp.asarray(pair_valid), jnp.float32(2.5), CONFIG)
  src = np.stack([pred[t, max(q, 0)] for t in range(2) for q in query_of_gt[t]])   # [4, 4, 4]
  tgt = gt.reshape(4, 8, 8)
  coords = point_sampling.uncertain_point_coords(key, jnp.asarray(src), 16, 3.0, 0.75)
  x = np.asarray(point_sampling.point_sample(jnp.asarray(src), coords), np.float64)
  t = np.asarray(point_sampling.point_sample(jnp.asarray(tgt), coords), np.float64)
  s = 1 / (1 + np.exp(-x))
  w = pair_valid.reshape(-1)
  want_bce = np.sum(w * np.mean(-(t * np.log(s) + (1 - t) * np.log(1 - s)), -1)) / 2.5
  want_dice = np.sum(w * (1 - (2 * np.sum(s * t, -1) + 1) / (s.sum(-1) + t.sum(-1) + 1))) / 2.5
  np.testing.assert_allclose(float(bce), want_bce, rtol=1e-5)
  np.testing.assert_allclose(float(dice), want_dice, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# The probe scenarios of REFERENCE.md 7.3.

def _targets(present, labels, valid=None, num_frames=None):
  """VideoTargets where every GT g is a fixed 4x4 block of an 8x8 image whenever present."""
  present = np.asarray(present, bool)
  num_frames, num_gts = present.shape
  blocks = [(0, 0), (4, 4), (0, 4), (4, 0)]
  masks = np.zeros((num_frames, num_gts, 8, 8), bool)
  for g in range(num_gts):
    r, c = blocks[g]
    masks[:, g, r:r + 4, c:c + 4] = present[:, g, None, None]
  valid = np.ones(num_gts, bool) if valid is None else np.asarray(valid)
  return losses.video_targets(jnp.asarray(labels, jnp.int32), jnp.asarray(valid), jnp.asarray(masks),
                              jnp.asarray(present), jnp.ones(num_frames, bool))


def test_probe_a_new_object_at_frame_2():
  # GT 0 visible at 0..3; GT 1 first appears at frame 2. Hand table: at t = 1 GT 1 is absent (id -1) and
  # GT 1 was absent at frame 0, so -1 is among the earlier ids: positive. At t = 2 it is new: negative,
  # so its T_E label is no-object for the whole clip and its mask is zeroed at frame 2 only.
  targets = _targets([[1, 0], [1, 0], [1, 1], [1, 1]], [0, 1])
  query_of_gt = jnp.asarray([1, 0])
  positive, judged = o2vis_loss.reference_sim_targets(targets, query_of_gt)
  np.testing.assert_array_equal(np.asarray(judged), [[0, 0], [1, 1], [1, 1], [1, 1]])
  np.testing.assert_array_equal(np.asarray(positive), [[0, 0], [1, 1], [1, 0], [1, 1]])
  modified = o2vis_loss.modified_targets(targets, query_of_gt, K, "reference")
  np.testing.assert_array_equal(np.asarray(modified.labels), [[0, K]] * 4)
  mask_sums = np.asarray(modified.masks).sum((2, 3))
  np.testing.assert_array_equal(mask_sums, [[16, 0], [16, 0], [16, 0], [16, 16]])
  paper = o2vis_loss.modified_targets(targets, query_of_gt, K, "paper")
  np.testing.assert_array_equal(np.asarray(paper.labels), [[0, 1], [0, 1], [0, K], [0, 1]])
  np.testing.assert_array_equal(np.asarray(paper.masks).sum((2, 3)), [[16, 0], [16, 0], [16, 0], [16, 16]])


def test_probe_b_object_vanishing_at_frame_2():
  # GT 1 visible at 0..1, gone at 2..3; no GT was absent before frame 2, so at t = 2 its id -1 is new:
  # negative, and every GT absent at 2 (GT 1) is no-object for T_E at every frame, frames 0-1 included,
  # where its mask stays. At t = 3, -1 occurred at frame 2: positive.
  targets = _targets([[1, 1], [1, 1], [1, 0], [1, 0]], [0, 2])
  query_of_gt = jnp.asarray([1, 0])
  positive, _ = o2vis_loss.reference_sim_targets(targets, query_of_gt)
  np.testing.assert_array_equal(np.asarray(positive), [[0, 0], [1, 1], [1, 0], [1, 1]])
  modified = o2vis_loss.modified_targets(targets, query_of_gt, K, "reference")
  np.testing.assert_array_equal(np.asarray(modified.labels), [[0, K]] * 4)
  np.testing.assert_array_equal(np.asarray(modified.masks).sum((2, 3)),
                                [[16, 16], [16, 16], [16, 0], [16, 0]])
  # The paper's rule only concerns appearances: nothing changes here.
  paper = o2vis_loss.modified_targets(targets, query_of_gt, K, "paper")
  np.testing.assert_array_equal(np.asarray(paper.labels), np.asarray(targets.labels))


# The combined scenario: GT 0 at 0..3 (query 1), GT 1 appears at 2 (query 3), GT 2 at 0..1 then gone
# (query 0), GT 3 padding. Hand table of (positive / negative) per frame t >= 1:
#   t=1: q1 +, q3 + (absent; GT 1 was absent at 0), q0 +
#   t=2: q1 +, q3 - (new), q0 + (absent; -1 already seen)
#   t=3: all +
PRESENT = [[1, 0, 1, 0], [1, 0, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
LABELS = [0, 1, 2, 0]
VALID = [True, True, True, False]
QUERY_OF_GT = np.array([1, 3, 0, -1])


def _hand_sim_reference(s):
  mse = lambda v, target: np.mean((np.asarray(v) - target) ** 2)
  t1 = mse(s[1, [1, 3, 0]], 1.0)
  t2 = mse(s[2, [1, 0]], 1.0) + s[2, 3] ** 2
  t3 = mse(s[3, [1, 3, 0]], 1.0)
  return (t1 + t2 + t3) / 4


def test_similarity_loss_reference_on_hand_table():
  rng = np.random.default_rng(3)
  s = rng.uniform(-0.5, 1.0, size=(4, 5)).astype(np.float32)
  targets = _targets(PRESENT, LABELS, VALID)
  got = o2vis_loss.similarity_loss_reference(jnp.asarray(s), targets, jnp.asarray(QUERY_OF_GT))
  np.testing.assert_allclose(float(got), _hand_sim_reference(s.astype(np.float64)), rtol=1e-5)
  modified = o2vis_loss.modified_targets(targets, jnp.asarray(QUERY_OF_GT), K, "reference")
  np.testing.assert_array_equal(np.asarray(modified.labels)[:, :3], [[0, K, 2]] * 4)
  # Gradient (only through s): d/ds (s-1)^2 / (|pos_t| T) and s^2 / (|neg_t| T) at the matched slots.
  grad = np.asarray(jax.grad(o2vis_loss.similarity_loss_reference)(jnp.asarray(s), targets,
                                                               jnp.asarray(QUERY_OF_GT)))
  want = np.zeros((4, 5))
  want[1, [1, 3, 0]] = 2 * (s[1, [1, 3, 0]] - 1) / (3 * 4)
  want[2, [1, 0]] = 2 * (s[2, [1, 0]] - 1) / (2 * 4)
  want[2, 3] = 2 * s[2, 3] / 4
  want[3, [1, 3, 0]] = 2 * (s[3, [1, 3, 0]] - 1) / (3 * 4)
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)
  # No matched pair at all: the reference replaces the (zero) loss by 0.
  none = o2vis_loss.similarity_loss_reference(jnp.asarray(s), targets, jnp.full((4,), -1))
  assert float(none) == 0.0


def test_similarity_loss_paper_eq11():
  rng = np.random.default_rng(4)
  s = rng.uniform(-0.5, 1.0, size=(4, 5)).astype(np.float32)
  occupied = rng.uniform(size=(4, 5)) > 0.5
  targets = _targets(PRESENT, LABELS, VALID)
  got = o2vis_loss.similarity_loss_paper(jnp.asarray(s), jnp.asarray(occupied), targets,
                                     jnp.asarray(QUERY_OF_GT))
  want = sum((s[t, q] - occupied[t, q]) ** 2 for t in range(1, 4) for q in (1, 3, 0)) / (4 * 3)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Criteria end to end.

def _tracker_predictions(rng, assignment=QUERY_OF_GT, num_frames=4, num_queries=5):
  """Predictions where query assignment[g] has GT g's block and class at every frame."""
  blocks = [(0, 0), (2, 2), (0, 2), (2, 0)]
  masks = np.full((num_frames, num_queries, 4, 4), -8.0, np.float32)
  logits = np.zeros((num_frames, num_queries, K + 1), np.float32)
  logits[:, :, K] = 6.0
  for g, q in enumerate(assignment):
    if q < 0:
      continue
    r, c = blocks[g]
    masks[:, q, r:r + 2, c:c + 2] = 8.0
    logits[:, q] = 0.0
    logits[:, q, LABELS[g]] = 6.0
  logits = logits + rng.normal(scale=0.3, size=logits.shape).astype(np.float32)
  return logits, masks


def _ce_with_assignment(logits, query_of_gt, labels):
  classes = np.full(logits.shape[:2], K)
  for g, q in enumerate(query_of_gt):
    if q >= 0:
      classes[:, q] = labels[g]
  return numpy_weighted_ce(logits, classes)


def _tracker_outputs(rng):
  logits, masks = _tracker_predictions(rng)
  perm = np.array([2, 4, 0, 1, 3])    # aux layer 0 = the last layer with queries permuted.
  logits_e = rng.normal(size=logits.shape).astype(np.float32)
  outputs = {
      "pred_logits": logits, "pred_masks": masks,
      "aux": [{"pred_logits": logits[:, perm], "pred_masks": masks[:, perm]},
              {"pred_logits": logits, "pred_masks": masks}],
      "pred_logits_E": logits_e, "pred_masks_E": masks,
      "aux_E": [{"pred_logits": logits_e, "pred_masks": masks}] * 2,
      "similarity": rng.uniform(size=(4, 5)).astype(np.float32),
  }
  return jax.tree.map(jnp.asarray, outputs), perm


_tracker_criterion = jax.jit(o2vis_loss.tracker_criterion, static_argnames=("config",))


def test_tracker_criterion_terms_and_values():
  rng = np.random.default_rng(5)
  outputs, _ = _tracker_outputs(rng)
  targets = _targets(PRESENT, LABELS, VALID)
  num_masks = losses.tracker_mask_count(targets)
  assert float(num_masks) == 4 * 3
  key = jax.random.PRNGKey(0)
  query = losses.video_assignment(key, outputs["pred_logits"], outputs["pred_masks"], targets, CONFIG)
  np.testing.assert_array_equal(np.asarray(query), QUERY_OF_GT)
  total, terms = _tracker_criterion(key, outputs, targets, num_masks, config=CONFIG)
  names = {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0", "_1", "_E", "_E_0", "_E_1")}
  assert set(terms) == names | {"loss_sim"}, sorted(terms)
  weights = {"ce": 2.0, "mask": 5.0, "dice": 5.0, "sim": 1.0}
  want_total = sum(weights[name.split("_")[1]] * float(v) for name, v in terms.items())
  np.testing.assert_allclose(float(total), want_total, rtol=1e-5)
  np.testing.assert_allclose(float(terms["loss_ce"]),
                             _ce_with_assignment(np.asarray(outputs["pred_logits"]), QUERY_OF_GT, LABELS),
                             rtol=1e-5)
  # Re-matched aux layer 0 (permuted queries) finds the permuted assignment: the same CE.
  np.testing.assert_allclose(float(terms["loss_ce_0"]), float(terms["loss_ce"]), rtol=1e-5)
  # T_E main: main assignment, labels of the modified targets (GT 1 is no-object clip-wide).
  np.testing.assert_allclose(
      float(terms["loss_ce_E"]),
      _ce_with_assignment(np.asarray(outputs["pred_logits_E"]), QUERY_OF_GT, [0, K, 2, 0]), rtol=1e-5)
  np.testing.assert_allclose(float(terms["loss_sim"]),
                             _hand_sim_reference(np.asarray(outputs["similarity"], np.float64)), rtol=1e-5)
  # The predicted masks are right where the GT is present: small mask losses, larger where absent frames
  # ask for empty masks (GT 2 at frames 2-3) -- both are counted (the pair holds at every frame).
  assert 0.0 < float(terms["loss_dice"]) < 1.0
  for value in terms.values():
    assert np.isfinite(float(value))


def test_tracker_criterion_matches_every_prediction_set_in_two_host_callbacks():
  """Issue 18: T_A's main and aux sets are matched in ONE host callback, T_E's aux sets (against the
  modified targets, which need T_A's main assignment) in a second; with matcher_outputs (early training)
  the one assignment is reused: one callback. Before: one per set (1 + 2 + 2 here)."""
  rng = np.random.default_rng(5)
  outputs, _ = _tracker_outputs(rng)
  targets = _targets(PRESENT, LABELS, VALID)
  num_masks = losses.tracker_mask_count(targets)
  key = jax.random.PRNGKey(0)
  count = lambda fn: str(jax.make_jaxpr(fn)(outputs)).count("pure_callback")
  assert CONFIG.matcher == "host"
  assert count(lambda o: _tracker_criterion(key, o, targets, num_masks, config=CONFIG)) == 2
  early = lambda o: _tracker_criterion(key, o, targets, num_masks, config=CONFIG,
                                       matcher_outputs={"pred_logits": o["pred_logits"],
                                                        "pred_masks": o["pred_masks"]})
  assert count(early) == 1


def test_tracker_criterion_early_training_reuses_the_assignment():
  rng = np.random.default_rng(6)
  outputs, _ = _tracker_outputs(rng)
  targets = _targets(PRESENT, LABELS, VALID)
  # The re-ordered segmenter predictions put GT g on other queries: that assignment is used everywhere.
  early_assignment = np.array([4, 2, 1, -1])
  seg_logits, seg_masks = _tracker_predictions(rng, early_assignment)
  matcher_outputs = {"pred_logits": jnp.asarray(seg_logits), "pred_masks": jnp.asarray(seg_masks)}
  _, terms = _tracker_criterion(jax.random.PRNGKey(1), outputs, targets, jnp.float32(12.0),
                                config=CONFIG, matcher_outputs=matcher_outputs)
  for name, logits in (("loss_ce", outputs["pred_logits"]), ("loss_ce_0", outputs["aux"][0]["pred_logits"]),
                       ("loss_ce_1", outputs["aux"][1]["pred_logits"])):
    np.testing.assert_allclose(float(terms[name]),
                               _ce_with_assignment(np.asarray(logits), early_assignment, LABELS),
                               rtol=1e-5, err_msg=name)
  # Early assignment: GT 1 at frame 2 is still the new object -> T_E labels [0, K, 2].
  for name, logits in (("loss_ce_E", outputs["pred_logits_E"]),
                       ("loss_ce_E_1", outputs["aux_E"][1]["pred_logits"])):
    np.testing.assert_allclose(float(terms[name]),
                               _ce_with_assignment(np.asarray(logits), early_assignment, [0, K, 2, 0]),
                               rtol=1e-5, err_msg=name)


def test_tracker_criterion_paper_rules():
  rng = np.random.default_rng(7)
  outputs, _ = _tracker_outputs(rng)
  outputs = {k: v for k, v in outputs.items() if k not in ("aux", "aux_E")}
  targets = _targets(PRESENT, LABELS, VALID)
  paper = losses.LossConfig(num_points=16, target_rule="paper", sim_rule="paper")
  with pytest.raises(KeyError, match="prev_occupied"):
    o2vis_loss.tracker_criterion(jax.random.PRNGKey(0), outputs, targets, jnp.float32(12.0), paper)
  with pytest.raises(ValueError, match="target_rule"):
    losses.LossConfig(target_rule="papr")
  occupied = rng.uniform(size=(4, 5)) > 0.5
  outputs["prev_occupied"] = jnp.asarray(occupied)
  _, terms = _tracker_criterion(jax.random.PRNGKey(0), outputs, targets, jnp.float32(12.0), config=paper)
  assert set(terms) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_E", "loss_mask_E", "loss_dice_E",
                        "loss_sim"}
  s = np.asarray(outputs["similarity"], np.float64)
  want_sim = sum((s[t, q] - occupied[t, q]) ** 2 for t in range(1, 4) for q in (1, 3, 0)) / (4 * 3)
  np.testing.assert_allclose(float(terms["loss_sim"]), want_sim, rtol=1e-5)
  # Eq. 10 text: GT 1 (query 3) is no-object at its first frame 2 only.
  classes = np.full((4, 5), K)
  classes[:, 1], classes[:, 3], classes[:, 0] = 0, 1, 2
  classes[2, 3] = K
  np.testing.assert_allclose(float(terms["loss_ce_E"]),
                             numpy_weighted_ce(np.asarray(outputs["pred_logits_E"]), classes), rtol=1e-5)


def test_te_only_criterion_early_matching_and_e_terms_only():
  rng = np.random.default_rng(12)
  outputs, _ = _tracker_outputs(rng)
  outputs = {k: v for k, v in outputs.items() if k not in ("aux", "similarity")}
  targets = _targets(PRESENT, LABELS, VALID)
  key = jax.random.PRNGKey(4)
  total, terms = jax.jit(te_only_loss.te_only_criterion, static_argnames=("config",))(
      key, outputs, targets, jnp.float32(12.0), config=CONFIG)
  assert set(terms) == {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("_E", "_E_0", "_E_1")}
  # The assignment is made once on pred_logits / pred_masks (QUERY_OF_GT) and kept for every T_E set,
  # against the modified targets (GT 1 is no-object clip-wide).
  for name, logits in (("loss_ce_E", outputs["pred_logits_E"]),
                       ("loss_ce_E_0", outputs["aux_E"][0]["pred_logits"]),
                       ("loss_ce_E_1", outputs["aux_E"][1]["pred_logits"])):
    np.testing.assert_allclose(float(terms[name]),
                               _ce_with_assignment(np.asarray(logits), QUERY_OF_GT, [0, K, 2, 0]),
                               rtol=1e-5, err_msg=name)
  # Randomness: match, main and aux keys are split(key, 3); the main set's points use the second.
  _, main_key, _ = jax.random.split(key, 3)
  modified = o2vis_loss.modified_targets(targets, jnp.asarray(QUERY_OF_GT), K, "reference")
  want = losses.set_loss(main_key, outputs["pred_logits_E"], outputs["pred_masks_E"], modified,
                         jnp.asarray(QUERY_OF_GT), jnp.float32(12.0), CONFIG, "_E")
  for name, value in want.items():
    np.testing.assert_allclose(float(terms[name]), float(value), rtol=1e-6, err_msg=name)
  np.testing.assert_allclose(float(total), sum(CONFIG.weight_of(n) * float(v) for n, v in terms.items()),
                             rtol=1e-5)


def test_mean_over_videos_is_the_mean_of_the_tracker_criterion():
  rng = np.random.default_rng(8)
  outputs, _ = _tracker_outputs(rng)
  outputs_2, _ = _tracker_outputs(rng)
  targets = _targets(PRESENT, LABELS, VALID)
  targets_2 = _targets([[1, 1, 0, 0]] * 4, LABELS, VALID)
  stack = lambda a, b: jax.tree.map(lambda x, y: jnp.stack([x, y]), a, b)
  batch_outputs, batch_targets = stack(outputs, outputs_2), stack(targets, targets_2)
  counts = jax.vmap(losses.tracker_mask_count)(batch_targets)
  np.testing.assert_array_equal(np.asarray(counts), [12.0, 8.0])
  num_masks = losses.average_num_masks(counts)
  np.testing.assert_allclose(float(num_masks), 10.0)
  keys = jax.random.split(jax.random.PRNGKey(2), 2)     # raw uint32 key data [B, 2], as the trainer's.
  batch_loss = jax.jit(lambda k, o, t, n: losses.mean_over_videos(
      lambda key, video_outputs, video_targets: o2vis_loss.tracker_criterion(
          key, video_outputs, video_targets, n, CONFIG), k, o, t))
  total, terms = batch_loss(keys, batch_outputs, batch_targets, num_masks)
  per_video = [_tracker_criterion(keys[0], outputs, targets, num_masks, config=CONFIG),
               _tracker_criterion(keys[1], outputs_2, targets_2, num_masks, config=CONFIG)]
  assert set(terms) == set(per_video[0][1]), sorted(terms)
  np.testing.assert_allclose(float(total), np.mean([float(p[0]) for p in per_video]), rtol=1e-5)
  for name in terms:
    np.testing.assert_allclose(float(terms[name]), np.mean([float(p[1][name]) for p in per_video]),
                               rtol=1e-5, err_msg=name)
  # Typed keys give the same numbers as their raw key data.
  typed_total, _ = batch_loss(jax.random.wrap_key_data(keys), batch_outputs, batch_targets, num_masks)
  assert float(typed_total) == float(total)


def test_average_num_masks_over_devices():
  counts = jnp.asarray([[3.0, 5.0], [0.0, 0.0], [10.0, 2.0]])   # 3 devices x 2 videos.
  got = jax.vmap(lambda c: losses.average_num_masks(c, "data"), axis_name="data")(counts)
  np.testing.assert_allclose(np.asarray(got), [20.0 / 6] * 3, rtol=1e-6)
  assert float(losses.average_num_masks(jnp.zeros(2))) == 1.0


def numpy_contrastive(emb, query_of_gt, frame_valid):
  values = []
  t_count, g_count = query_of_gt.shape
  for t in range(t_count):
    for g in range(g_count):
      if query_of_gt[t, g] < 0 or not frame_valid[t]:
        continue
      v = emb[t, query_of_gt[t, g]]
      for u in range(t_count):
        if u == t or not frame_valid[u] or query_of_gt[u, g] < 0:
          continue
        kp = emb[u, query_of_gt[u, g]]
        negs = [emb[u, query_of_gt[u, h]] for h in range(g_count) if h != g and query_of_gt[u, h] >= 0]
        values.append(np.log1p(sum(np.exp(v @ kn - v @ kp) for kn in negs)))
  return np.mean(values) if values else 0.0


def test_contrastive_loss_eq13_matches_numpy():
  rng = np.random.default_rng(9)
  emb = rng.normal(size=(4, 6, 8)).astype(np.float32) * 0.5
  query_of_gt = np.array([[0, 3, -1], [2, -1, 5], [1, 4, 0], [3, 0, 2]])
  frame_valid = np.array([True, True, True, False])
  got = losses.contrastive_loss(jnp.asarray(emb), jnp.asarray(query_of_gt), jnp.asarray(frame_valid))
  np.testing.assert_allclose(float(got), numpy_contrastive(emb.astype(np.float64), query_of_gt, frame_valid),
                             rtol=1e-5)
  unmatched = losses.contrastive_loss(jnp.asarray(emb), jnp.full((4, 3), -1), jnp.asarray(frame_valid))
  assert float(unmatched) == 0.0


def test_segmenter_criterion_per_frame_deep_supervision():
  rng = np.random.default_rng(10)
  logits, masks = _tracker_predictions(rng)
  emb = rng.normal(size=(4, 5, 8)).astype(np.float32)
  outputs = jax.tree.map(jnp.asarray, {
      "pred_logits": logits, "pred_masks": masks, "embeddings": emb,
      "aux": [{"pred_logits": logits[:, ::-1], "pred_masks": masks[:, ::-1]}]})
  targets = _targets(PRESENT, LABELS, VALID)
  num_masks = losses.segmenter_mask_count(targets)
  assert float(num_masks) == 8.0
  total, terms = jax.jit(losses.segmenter_criterion, static_argnames=("config",))(
      jax.random.PRNGKey(3), outputs, targets, num_masks, config=CONFIG)
  assert set(terms) == {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0",
                        "loss_contrastive"}
  # Per frame only the present GTs are targets.
  present = np.asarray(PRESENT, bool)
  classes = np.full((4, 5), K)
  per_frame = np.where(present, QUERY_OF_GT[None, :], -1)
  for t in range(4):
    for g in range(4):
      if present[t, g]:
        classes[t, QUERY_OF_GT[g]] = LABELS[g]
  np.testing.assert_allclose(float(terms["loss_ce"]), numpy_weighted_ce(logits, classes), rtol=1e-5)
  np.testing.assert_allclose(float(terms["loss_ce_0"]), float(terms["loss_ce"]), rtol=1e-5)
  np.testing.assert_allclose(float(terms["loss_contrastive"]),
                             numpy_contrastive(emb.astype(np.float64), per_frame, np.ones(4, bool)),
                             rtol=1e-5)
  # Right masks where present (only boundary points, where the bilinear samples are soft, cost): dice of
  # the 8 present pairs stays well below that of empty predictions (about 1 per pair).
  assert float(terms["loss_dice"]) < 0.5
  want_total = sum(CONFIG.weight_of(n) * float(v) for n, v in terms.items())
  np.testing.assert_allclose(float(total), want_total, rtol=1e-5)


def test_loss_config_from_experiment_config():
  config = ml_collections.ConfigDict({"tracker": {"semantics": "reference", "matcher": "host"},
                                      "loss": {"num_points": 64, "sim_weight": 2.0}})
  # The method's section is not read: its rules and matcher come as defaults, which config.loss overrides.
  got = losses.loss_config_from(config, target_rule="paper", sim_rule="paper", matcher="device")
  assert (got.target_rule, got.sim_rule, got.matcher, got.num_points, got.sim_weight) == (
      "paper", "paper", "device", 64, 2.0)
  config.loss.matcher = "host"
  assert losses.loss_config_from(config, matcher="device").matcher == "host"
  assert losses.loss_config_from(ml_collections.ConfigDict()) == losses.LossConfig()
  with pytest.raises(TypeError, match="semantics"):
    losses.loss_config_from(config, semantics="paper")


def test_default_loss_config_is_loss_config_defaults():
  defaults = losses.LossConfig()
  section = losses.default_config()
  assert set(section) == set(losses.config.CONFIG_FIELDS)
  for name, value in section.items():
    assert value == getattr(defaults, name), name
  # The experiment config's section builds exactly the default LossConfig.
  config = ml_collections.ConfigDict({"loss": section})
  assert losses.loss_config_from(config) == defaults
  losses.tiny(config)
  assert config.loss.num_points == 64
  # The matching cost's default weights are the loss weights.
  assert losses.CostWeights() == losses.CostWeights.of(defaults) == (
      defaults.class_weight, defaults.mask_weight, defaults.dice_weight)


def test_tracker_outputs_from_track_layout():
  rng = np.random.default_rng(11)
  b, t, layers, n, h = 2, 3, 2, 4, 5
  track = {
      "pred_logits": rng.normal(size=(b, t, n, K + 1)), "pred_masks": rng.normal(size=(b, t, n, h, h)),
      "pred_logits_E": rng.normal(size=(b, t, n, K + 1)), "pred_masks_E": rng.normal(size=(b, t, n, h, h)),
      "aux_logits": rng.normal(size=(b, t, layers, n, K + 1)),
      "aux_masks": rng.normal(size=(b, t, layers, n, h, h)),
      "aux_logits_E": rng.normal(size=(b, t, layers, n, K + 1)),
      "aux_masks_E": rng.normal(size=(b, t, layers, n, h, h)),
      "similarity": rng.normal(size=(b, t, n)), "occupied": rng.uniform(size=(b, t, n)) > 0.5}
  track = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in track.items()}
  got = o2vis_loss.tracker_outputs_from_track(jax.tree.map(jnp.asarray, track))
  assert len(got["aux"]) == len(got["aux_E"]) == layers
  np.testing.assert_array_equal(np.asarray(got["aux"][1]["pred_logits"]), track["aux_logits"][:, :, 1])
  np.testing.assert_array_equal(np.asarray(got["aux_E"][0]["pred_masks"]), track["aux_masks_E"][:, :, 0])
  np.testing.assert_array_equal(np.asarray(got["prev_occupied"])[:, 1:], track["occupied"][:, :-1])
  assert not np.asarray(got["prev_occupied"])[:, 0].any()
