"""Hungarian (host and device) against scipy; OHM (Eq. 6) against the NumPy reference of REFERENCE.md 5d."""

import functools

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.sharding import Mesh, PartitionSpec as P

import reference_numpy as ref
from o2vis_jax.association.ops.hungarian import hungarian, hungarian_numpy, occupancy_guided_matching

MAX = 7  # every problem is padded to [MAX, MAX] so each matcher compiles once.


@functools.lru_cache(maxsize=None)
def _jitted(matcher):
  return jax.jit(lambda c, r, k: hungarian(c, r, k, matcher=matcher))


def _pad(cost, rows, cols):
  full = np.full((MAX, MAX), 7.0, np.float32)
  full[:cost.shape[0], :cost.shape[1]] = cost
  row_valid = np.zeros(MAX, bool)
  row_valid[:cost.shape[0]] = rows
  col_valid = np.zeros(MAX, bool)
  col_valid[:cost.shape[1]] = cols
  return full, row_valid, col_valid


def _check_against_scipy(cost, row_valid, col_valid, assignment):
  """The assignment is a valid matching of maximum cardinality with scipy's optimal cost."""
  assignment = np.asarray(assignment)
  sub = cost[np.ix_(np.flatnonzero(row_valid), np.flatnonzero(col_valid))]
  sub = np.where(np.isnan(sub), 0.0, sub)
  assigned = assignment >= 0
  assert not (assigned & ~row_valid).any(), f"invalid row assigned: {assignment} rows {row_valid}"
  cols = assignment[assigned]
  assert len(set(cols.tolist())) == len(cols), f"column used twice: {assignment}"
  assert col_valid[cols].all(), f"invalid column used: {assignment} cols {col_valid}"
  assert assigned.sum() == min(sub.shape), f"{assigned.sum()} rows assigned, expected {min(sub.shape)}"
  if sub.size:
    r, c = scipy.optimize.linear_sum_assignment(sub)
    want = sub[r, c].sum()
    got = np.where(np.isnan(cost), 0.0, cost)[np.flatnonzero(assigned), cols].sum()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("matcher", ["host", "device"])
def test_random_square_and_rectangular_match_scipy(matcher):
  rng = np.random.default_rng(0)
  solve = _jitted(matcher)
  for trial in range(60):
    rows, cols = rng.integers(1, MAX + 1, size=2)
    cost = rng.normal(size=(rows, cols)).astype(np.float32)
    if trial % 3 == 0:  # many ties
      cost = np.round(cost).astype(np.float32)
    full, rv, cv = _pad(cost, True, True)
    _check_against_scipy(full, rv, cv, solve(full, rv, cv))


@pytest.mark.parametrize("matcher", ["host", "device"])
def test_host_equals_scipy_exactly_and_hand_case(matcher):
  cost = np.array([[4., 1., 3.], [2., 0., 5.], [3., 2., 2.]], np.float32)
  got = np.asarray(hungarian(cost, matcher=matcher))
  np.testing.assert_array_equal(got, [1, 0, 2])  # total 5, the unique optimum.
  # More rows than columns: the cheapest two rows get the columns, the other gets -1.
  tall = np.array([[1., 9.], [9., 1.], [5., 5.]], np.float32)
  got = np.asarray(hungarian(tall, matcher=matcher))
  np.testing.assert_array_equal(got, [0, 1, -1])


@pytest.mark.parametrize("matcher", ["host", "device"])
def test_all_ties_give_a_permutation(matcher):
  got = np.asarray(hungarian(np.ones((5, 5), np.float32), matcher=matcher))
  np.testing.assert_array_equal(np.sort(got), np.arange(5))


@pytest.mark.parametrize("matcher", ["host", "device"])
def test_nan_costs_count_as_zero(matcher):
  cost = np.array([[np.nan, 1.], [0.5, 3.]], np.float32)
  # NaN -> 0: [0->0, 1->1] costs 3, [0->1, 1->0] costs 1.5.
  np.testing.assert_array_equal(np.asarray(hungarian(cost, matcher=matcher)), [1, 0])
  cost = np.array([[np.nan, 1.], [1., 0.5]], np.float32)  # 0 + 0.5 beats 1 + 1.
  np.testing.assert_array_equal(np.asarray(hungarian(cost, matcher=matcher)), [0, 1])


@pytest.mark.parametrize("matcher", ["host", "device"])
def test_empty_problems(matcher):
  solve = _jitted(matcher)
  cost = np.arange(MAX * MAX, dtype=np.float32).reshape(MAX, MAX)
  none, every = np.zeros(MAX, bool), np.ones(MAX, bool)
  for rv, cv in ((none, every), (every, none), (none, none)):
    np.testing.assert_array_equal(np.asarray(solve(cost, rv, cv)), -np.ones(MAX))
  # Zero-size shapes (a 0x0 problem returns an empty index vector, REFERENCE.md section 2).
  assert hungarian(np.zeros((0, 3)), matcher=matcher).shape == (0,)
  np.testing.assert_array_equal(np.asarray(hungarian(np.zeros((2, 0)), matcher=matcher)), [-1, -1])


@pytest.mark.parametrize("matcher", ["host", "device"])
@hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
@hypothesis.given(
    cost=hnp.arrays(np.float32, (MAX, MAX),
                    elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, -1.0, np.nan])),
    row_valid=hnp.arrays(bool, (MAX,)), col_valid=hnp.arrays(bool, (MAX,)))
def test_property_masked_problems(matcher, cost, row_valid, col_valid):
  _check_against_scipy(cost, row_valid, col_valid, _jitted(matcher)(cost, row_valid, col_valid))


@pytest.mark.parametrize("matcher", ["host", "device"])
def test_jit_vmap_scan_and_zero_gradient(matcher):
  rng = np.random.default_rng(1)
  costs = rng.normal(size=(3, 2, 4, 5)).astype(np.float32)
  row_valid = rng.random((3, 2, 4)) < 0.8
  want = hungarian_numpy(costs, row_valid, np.ones(5, bool))
  # Two vmaps over the leading axes; the column mask is unbatched.
  vmapped = jax.jit(jax.vmap(jax.vmap(
      lambda c, r: hungarian(c, r, jnp.ones(5, bool), matcher=matcher))))
  got = np.asarray(vmapped(costs, row_valid))
  for idx in np.ndindex(3, 2):
    _check_against_scipy(costs[idx], row_valid[idx], np.ones(5, bool), got[idx])
    if matcher == "host":
      np.testing.assert_array_equal(got[idx], want[idx])

  def body(total, xs):
    cost, rv = xs
    a = hungarian(cost, rv, matcher=matcher)
    picked = jnp.take_along_axis(cost, jnp.maximum(a, 0)[:, None], axis=1)[:, 0]
    return total + jnp.sum(jnp.where(a >= 0, picked, 0.0)), a

  flat_costs, flat_rows = costs.reshape(6, 4, 5), row_valid.reshape(6, 4)
  total, scanned = jax.jit(lambda c, r: jax.lax.scan(body, 0.0, (c, r)))(flat_costs, flat_rows)
  np.testing.assert_array_equal(np.asarray(scanned), got.reshape(6, 4))
  # The gather by the assignment is differentiable; the assignment itself carries no gradient.
  grad = jax.grad(lambda c: jax.lax.scan(body, 0.0, (c, flat_rows))[0])(flat_costs)
  a = np.asarray(scanned)
  want_grad = np.zeros_like(flat_costs)
  for i, j in zip(*np.nonzero(a >= 0)):
    want_grad[i, j, a[i, j]] = 1.0
  np.testing.assert_array_equal(np.asarray(grad), want_grad)


@pytest.mark.parametrize("matcher", ["host", "device"])
def test_shard_map_over_four_devices(matcher):
  devices = np.array(jax.devices()[:4])
  assert len(devices) == 4, "conftest forces 4 host devices"
  mesh = Mesh(devices, ("batch",))
  rng = np.random.default_rng(2)
  costs = rng.normal(size=(8, 5, 5)).astype(np.float32)
  fn = jax.jit(jax.shard_map(lambda c: hungarian(c, matcher=matcher), mesh=mesh,
                             in_specs=P("batch"), out_specs=P("batch")))
  got = np.asarray(fn(costs))
  for b in range(8):
    _check_against_scipy(costs[b], np.ones(5, bool), np.ones(5, bool), got[b])


@pytest.mark.parametrize("matcher", ["host", "device"])
def test_ohm_matches_reference_all_branches(matcher):
  rng = np.random.default_rng(3)
  n, c = 6, 8
  fn = jax.jit(lambda s, x, o: occupancy_guided_matching(s, x, o, matcher=matcher))
  for occupied in (np.zeros(n, bool), np.ones(n, bool), np.array([1, 0, 1, 1, 0, 0], bool),
                   np.array([0, 0, 0, 0, 0, 1], bool)):
    for _ in range(5):
      slots = rng.normal(size=(n, c))
      cur = rng.normal(size=(n, c))
      want = ref.ohm(slots, cur, occupied)
      got = np.asarray(fn(slots.astype(np.float32), cur.astype(np.float32), occupied))
      if matcher == "host":
        np.testing.assert_array_equal(got, want)
      np.testing.assert_array_equal(np.sort(got), np.arange(n))
      cost = 1 - (slots / np.linalg.norm(slots, axis=1, keepdims=True)) @ (
          cur / np.linalg.norm(cur, axis=1, keepdims=True)).T
      # Each stage is optimal on its own: same stage costs as the reference.
      for stage in (occupied, ~occupied):
        np.testing.assert_allclose(cost[stage, got[stage]].sum(), cost[stage, want[stage]].sum(),
                                   atol=1e-5)


def test_ohm_stage_order_hand_case():
  # Slot 0 (free) fits current 0 best; slot 1 (occupied) also fits current 0 best.
  # Stage 1 gives current 0 to the occupied slot 1, the free slot 0 gets what is left (current 1),
  # although a plain Hungarian would give slot 0 current 0 and slot 1 current 1 (total cost lower).
  slots = np.array([[1.0, 0.0], [1.0, 0.1]], np.float32)
  cur = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  for matcher in ("host", "device"):
    got = occupancy_guided_matching(slots, cur, np.array([False, True]), matcher=matcher)
    np.testing.assert_array_equal(np.asarray(got), [1, 0])
    got = occupancy_guided_matching(slots, cur, np.array([False, False]), matcher=matcher)
    np.testing.assert_array_equal(np.asarray(got), [0, 1])


def test_unknown_matcher_is_named():
  with pytest.raises(ValueError, match="matcher must be one of"):
    hungarian(np.zeros((2, 2)), matcher="greedy")
