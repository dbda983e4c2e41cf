"""`losses.assignment`: the matching cost against NumPy, the first-appearance video matcher (Eq. 10,
REFERENCE.md 7.1) and the per-frame matcher against brute force over all injective assignments."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from o2vis_jax import losses
from o2vis_jax.losses import assignment, point_sampling


def _softplus(x):
  return np.logaddexp(0.0, x)


def test_match_cost_matches_numpy():
  rng = np.random.default_rng(0)
  n, g, k, p = 5, 3, 4, 11
  logits = rng.normal(size=(n, k + 1)).astype(np.float32)
  masks = rng.normal(scale=2.0, size=(n, 4, 6)).astype(np.float32)
  labels = np.array([2, 0, 3], np.int32)
  gt = rng.uniform(size=(g, 8, 12)) > 0.6
  coords = rng.uniform(size=(p, 2)).astype(np.float32)
  got = np.asarray(assignment.match_cost(jnp.asarray(logits), jnp.asarray(masks), jnp.asarray(labels),
                                         jnp.asarray(gt), jnp.asarray(coords)))
  x = np.asarray(point_sampling.point_sample(jnp.asarray(masks), jnp.asarray(coords)), np.float64)
  t = np.asarray(point_sampling.point_sample(jnp.asarray(gt), jnp.asarray(coords)), np.float64)
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  want = np.zeros((g, n))
  for i in range(g):
    for j in range(n):
      bce = np.mean(t[i] * _softplus(-x[j]) + (1 - t[i]) * _softplus(x[j]))
      s = 1 / (1 + np.exp(-x[j]))
      dice = 1 - (2 * np.sum(s * t[i]) + 1) / (np.sum(s) + np.sum(t[i]) + 1)
      want[i, j] = 2 * -probs[j, labels[i]] + 5 * bce + 5 * dice
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_clip_costs_use_one_point_set_per_frame():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)
  masks = jnp.asarray(rng.normal(size=(2, 4, 4, 4)), jnp.float32)
  labels = jnp.asarray([[0, 1], [0, 1]], jnp.int32)
  gt = jnp.asarray(rng.uniform(size=(2, 2, 8, 8)) > 0.5)
  key = jax.random.PRNGKey(3)
  got = assignment.clip_match_costs(key, logits, masks, labels, gt, num_points=7)
  for t, frame_key in enumerate(jax.random.split(key, 2)):
    coords = jax.random.uniform(frame_key, (7, 2))
    want = assignment.match_cost(logits[t], masks[t], labels[t], gt[t], coords)
    np.testing.assert_allclose(np.asarray(got[t]), np.asarray(want), rtol=1e-6)


def brute_force_video_matching(costs, present):
  """Frame by frame, the cheapest injective map of the GTs first appearing at f onto queries untaken."""
  t_count, g_count, n_count = costs.shape
  first = [int(np.argmax(present[:, g])) if present[:, g].any() else -1 for g in range(g_count)]
  result = np.full(g_count, -1)
  taken = set()
  for f in range(t_count):
    rows = [g for g in range(g_count) if first[g] == f]
    if not rows:
      continue
    free = [q for q in range(n_count) if q not in taken]
    best, best_cost = None, np.inf
    for perm in itertools.permutations(free, len(rows)):
      c = sum(costs[f, g, q] for g, q in zip(rows, perm))
      if c < best_cost:
        best, best_cost = perm, c
    for g, q in zip(rows, best):
      result[g] = q
      taken.add(q)
  return result


_consistent = jax.jit(assignment.consistent_video_matching)


def test_consistent_matching_equals_brute_force():
  rng = np.random.default_rng(2)
  for trial in range(12):
    costs = rng.normal(size=(4, 3, 5)).astype(np.float32)
    present = rng.uniform(size=(4, 3)) > 0.5
    if trial == 0:
      present[:, 2] = False          # a GT that never appears stays unmatched.
    got = np.asarray(_consistent(jnp.asarray(costs), jnp.asarray(present)))
    np.testing.assert_array_equal(got, brute_force_video_matching(costs, present),
                                  err_msg=f"trial {trial}: present=\n{present}")
    if trial == 0:
      assert got[2] == -1


def test_consistent_matching_is_sequential_not_global():
  # GT 0 appears at frame 0 and takes query 0 (cost 0 vs 1); GT 1, first at frame 1, then cannot use
  # query 0 even though the global optimum (GT 0 -> 1, GT 1 -> 0: 1 + 0 < 0 + 5) would.
  costs = np.full((2, 2, 2), 10.0, np.float32)
  costs[0, 0] = [0.0, 1.0]
  costs[1, 1] = [0.0, 5.0]
  present = np.array([[True, False], [True, True]])
  got = np.asarray(_consistent(jnp.asarray(costs), jnp.asarray(present)))
  np.testing.assert_array_equal(got, [0, 1])


def test_consistent_matching_under_vmap():
  rng = np.random.default_rng(3)
  costs = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
  present = rng.uniform(size=(2, 4, 3)) > 0.4
  got = np.asarray(jax.jit(jax.vmap(assignment.consistent_video_matching))(
      jnp.asarray(costs), jnp.asarray(present)))
  for b in range(2):
    np.testing.assert_array_equal(got[b], brute_force_video_matching(costs[b], present[b]))


def test_per_frame_matching_equals_brute_force():
  rng = np.random.default_rng(4)
  costs = rng.normal(size=(3, 3, 4)).astype(np.float32)
  present = np.array([[True, True, False], [False, False, False], [True, True, True]])
  got = np.asarray(jax.jit(assignment.per_frame_matching)(jnp.asarray(costs), jnp.asarray(present)))
  for t in range(3):
    rows = np.flatnonzero(present[t])
    want = np.full(3, -1)
    if rows.size:
      best = min(itertools.permutations(range(4), rows.size),
                 key=lambda perm: sum(costs[t, g, q] for g, q in zip(rows, perm)))
      want[rows] = best
    np.testing.assert_array_equal(got[t], want, err_msg=f"frame {t}")


def test_first_appearance():
  present = jnp.asarray([[False, True, False], [True, True, False], [True, False, False]])
  np.testing.assert_array_equal(np.asarray(assignment.first_appearance(present)), [1, 0, -1])


def test_video_and_frame_assignment_use_the_config():
  rng = np.random.default_rng(5)
  logits = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
  masks = jnp.asarray(rng.normal(scale=2.0, size=(3, 5, 4, 4)), jnp.float32)
  present = np.array([[True, False, True], [True, True, False], [False, True, True]])
  gt = rng.uniform(size=(3, 3, 8, 8)) > 0.5
  targets = losses.video_targets(jnp.asarray([0, 2, 1], jnp.int32), jnp.ones(3, bool),
                                 jnp.asarray(gt & present[..., None, None]), jnp.asarray(present),
                                 jnp.ones(3, bool))
  config = losses.LossConfig(class_weight=0.0, mask_weight=0.0, dice_weight=1.0, num_points=7)
  key = jax.random.PRNGKey(6)
  costs = assignment.clip_match_costs(key, logits, masks, targets.labels, targets.masks, 7,
                                      assignment.CostWeights(0.0, 0.0, 1.0))
  np.testing.assert_array_equal(
      np.asarray(assignment.video_assignment(key, logits, masks, targets, config)),
      np.asarray(assignment.consistent_video_matching(costs, targets.present)))
  np.testing.assert_array_equal(
      np.asarray(assignment.frame_assignment(key, logits, masks, targets, config)),
      np.asarray(assignment.per_frame_matching(costs, targets.present)))
