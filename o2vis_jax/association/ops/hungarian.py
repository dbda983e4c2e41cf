"""Minimum-cost assignment (Hungarian) on the host and on the device, and the occupancy-guided
Hungarian matching of Eq. 6 (OHM).

`hungarian(cost, row_valid, col_valid, matcher)` returns, per leading batch index, the column assigned
to every row (-1 = unassigned); invalid rows and columns take no part, so static shapes carry problems of
any size (a 0x0 problem is all -1). When there are more valid rows than valid columns, every valid column
is assigned and the surplus rows get -1 (scipy's rectangular convention). NaN costs count as 0
(REFERENCE.md section 2: a NaN cost is a perfect match). Costs must otherwise be finite (use the masks, not +inf,
to forbid rows or columns).

* `matcher='host'`: `jax.pure_callback` to `scipy.optimize.linear_sum_assignment` on the valid
  sub-matrix (rows and columns in increasing order, as the reference extracts it, so ties resolve as in
  the reference). Fixed output shape, inputs stop-gradient; works under jit, scan, vmap and shard_map.
* `matcher='device'`: an exact shortest-augmenting-path solver (Jonker-Volgenant style potentials,
  Dijkstra over columns) in `lax.while_loop`s; same optimal cost as scipy, ties may differ.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

MATCHERS = ("host", "device")


def _broadcast_masks(cost, row_valid, col_valid):
  batch, rows, cols = cost.shape[:-2], cost.shape[-2], cost.shape[-1]
  row_valid = (jnp.ones(batch + (rows,), bool) if row_valid is None
               else jnp.broadcast_to(jnp.asarray(row_valid, bool), batch + (rows,)))
  col_valid = (jnp.ones(batch + (cols,), bool) if col_valid is None
               else jnp.broadcast_to(jnp.asarray(col_valid, bool), batch + (cols,)))
  return row_valid, col_valid


def hungarian_numpy(cost: np.ndarray, row_valid: np.ndarray, col_valid: np.ndarray) -> np.ndarray:
  """The host solver: scipy's LSA on each valid sub-matrix. Shapes [..., R, C], [..., R], [..., C]."""
  cost = np.asarray(cost)
  batch, rows, cols = cost.shape[:-2], cost.shape[-2], cost.shape[-1]
  row_valid = np.broadcast_to(np.asarray(row_valid, bool), batch + (rows,)).reshape(-1, rows)
  col_valid = np.broadcast_to(np.asarray(col_valid, bool), batch + (cols,)).reshape(-1, cols)
  flat = cost.reshape(-1, rows, cols).astype(np.float64)
  out = np.full((flat.shape[0], rows), -1, np.int32)
  for b in range(flat.shape[0]):
    row_ids, col_ids = np.flatnonzero(row_valid[b]), np.flatnonzero(col_valid[b])
    if row_ids.size == 0 or col_ids.size == 0:
      continue
    sub = flat[b][np.ix_(row_ids, col_ids)]
    sub = np.where(np.isnan(sub), 0.0, sub)
    assigned_rows, assigned_cols = scipy.optimize.linear_sum_assignment(sub)
    out[b, row_ids[assigned_rows]] = col_ids[assigned_cols]
  return out.reshape(batch + (rows,))


def _hungarian_host(cost, row_valid, col_valid):
  result_shape = jax.ShapeDtypeStruct(cost.shape[:-1], jnp.int32)
  return jax.pure_callback(hungarian_numpy, result_shape, cost, row_valid, col_valid,
                           vmap_method="broadcast_all")


def _solve_rows_fit(cost, row_valid, col_valid):
  """Shortest augmenting paths for one [n, n] problem with at most as many valid rows as valid columns.

  Classic O(n^3) potentials formulation with a dummy column 0 (arrays are 1-indexed): rows are added
  one at a time; for each, a Dijkstra over columns in reduced costs finds the cheapest augmenting path.
  Invalid columns have infinite cost (never reached); invalid rows are skipped. Returns
  (col4row [n], row4col [n]), -1 where unassigned.
  """
  n = cost.shape[0]
  dtype = cost.dtype
  inf = jnp.asarray(jnp.inf, dtype)
  big = jnp.where(row_valid[:, None] & col_valid[None, :], cost, inf)
  big = jnp.pad(big, ((1, 0), (1, 0)), constant_values=0)
  col_open = jnp.concatenate([jnp.zeros((1,), bool), col_valid])
  # A False that depends on every input: under shard_map, loop carries must vary over the same mesh axes
  # as the values the loop body produces from the inputs.
  false = (cost[0, 0] != cost[0, 0]) & row_valid[0] & col_valid[0]
  float_zero, int_zero = false.astype(dtype), false.astype(jnp.int32)

  def add_row(i, state):
    u, v, p = state
    active = row_valid[i - 1] | false
    p = p.at[0].set(i)
    search0 = (u, v, p, jnp.full((n + 1,), inf) + float_zero, jnp.zeros((n + 1,), bool) | false,
               jnp.zeros((n + 1,), jnp.int32) + int_zero, int_zero, active)

    def search_cond(s):
      _, _, p, _, _, _, j0, going = s
      return going & (p[j0] != 0)

    def search_body(s):
      u, v, p, minv, used, way, j0, _ = s
      used = used.at[j0].set(True)
      i0 = p[j0]
      reduced = big[i0] - u[i0] - v
      free = ~used & col_open
      better = free & (reduced < minv)
      minv = jnp.where(better, reduced, minv)
      way = jnp.where(better, j0, way)
      candidates = jnp.where(free, minv, inf)
      j1 = jnp.argmin(candidates).astype(jnp.int32)
      delta = candidates[j1]
      going = jnp.isfinite(delta)  # False only if no free column is reachable (not for valid input).
      delta = jnp.where(going, delta, 0)
      u = u.at[p].add(jnp.where(used, delta, 0))
      v = jnp.where(used, v - delta, v)
      minv = jnp.where(used, minv, minv - delta)
      return u, v, p, minv, used, way, j1, going

    u, v, p, _, _, way, j0, _ = jax.lax.while_loop(search_cond, search_body, search0)
    j0 = jnp.where(active, j0, 0)

    def augment_body(s):
      p, j0 = s
      j1 = way[j0]
      return p.at[j0].set(p[j1]), j1

    p, _ = jax.lax.while_loop(lambda s: s[1] != 0, augment_body, (p, j0))
    return u, v, p

  state = (jnp.zeros((n + 1,), dtype) + float_zero, jnp.zeros((n + 1,), dtype) + float_zero,
           jnp.zeros((n + 1,), jnp.int32) + int_zero)
  _, _, p = jax.lax.fori_loop(1, n + 1, add_row, state)
  row4col = p[1:] - 1
  col4row = jnp.full((n,), -1, jnp.int32).at[jnp.where(row4col >= 0, row4col, n)].set(
      jnp.arange(n, dtype=jnp.int32), mode="drop")
  return col4row, row4col


def _hungarian_device_single(cost, row_valid, col_valid):
  rows, cols = cost.shape
  n = max(rows, cols)
  square = jnp.pad(cost, ((0, n - rows), (0, n - cols)))
  row_valid = jnp.pad(row_valid, (0, n - rows))
  col_valid = jnp.pad(col_valid, (0, n - cols))
  # The solver needs valid rows <= valid columns; otherwise solve the transposed problem.
  flip = jnp.sum(row_valid) > jnp.sum(col_valid)
  col4row, row4col = _solve_rows_fit(jnp.where(flip, square.T, square),
                                     jnp.where(flip, col_valid, row_valid),
                                     jnp.where(flip, row_valid, col_valid))
  return jnp.where(flip, row4col, col4row)[:rows].astype(jnp.int32)


def _hungarian_device(cost, row_valid, col_valid):
  cost = cost.astype(jnp.promote_types(cost.dtype, jnp.float32))
  solve = _hungarian_device_single
  for _ in range(cost.ndim - 2):
    solve = jax.vmap(solve)
  return solve(cost, row_valid, col_valid)


def hungarian(cost: jax.Array, row_valid: Optional[jax.Array] = None,
              col_valid: Optional[jax.Array] = None, matcher: str = "host") -> jax.Array:
  """Minimum-cost assignment per leading batch index.

  Args:
    cost: [..., R, C] float.
    row_valid, col_valid: optional bool [..., R] / [..., C] (broadcast against the batch); invalid rows and
      columns take no part.
    matcher: 'host' (scipy through `jax.pure_callback`) or 'device' (exact pure-JAX solver).
  Returns:
    int32 [..., R]: the column assigned to each row, -1 for invalid or unassigned rows. Not differentiable
    (inputs are stop-gradient).
  """
  if matcher not in MATCHERS:
    raise ValueError(f"matching.hungarian: matcher must be one of {MATCHERS}, got {matcher!r}")
  cost = jnp.asarray(cost)
  if cost.ndim < 2:
    raise ValueError(f"matching.hungarian: cost must be [..., R, C], got shape {cost.shape}")
  cost = jax.lax.stop_gradient(cost)
  cost = jnp.where(jnp.isnan(cost), jnp.zeros_like(cost), cost)
  row_valid, col_valid = _broadcast_masks(cost, row_valid, col_valid)
  if cost.shape[-1] == 0 or cost.shape[-2] == 0:
    return jnp.full(cost.shape[:-1], -1, jnp.int32)
  if matcher == "host":
    return _hungarian_host(cost, row_valid, col_valid)
  return _hungarian_device(cost, row_valid, col_valid)


def staged_hungarian_numpy(costs: np.ndarray, stage_rows: np.ndarray, col_valid: np.ndarray) -> np.ndarray:
  """The host solver of `staged_hungarian`: [..., S, R, C], [..., S, R], [..., C] -> [..., R]."""
  costs = np.asarray(costs)
  batch, stages, rows, cols = costs.shape[:-3], costs.shape[-3], costs.shape[-2], costs.shape[-1]
  costs = costs.reshape((-1, stages, rows, cols))
  stage_rows = np.broadcast_to(np.asarray(stage_rows, bool), batch + (stages, rows)).reshape(-1, stages, rows)
  col_valid = np.broadcast_to(np.asarray(col_valid, bool), batch + (cols,)).reshape(-1, cols)
  out = np.full((costs.shape[0], rows), -1, np.int32)
  for b in range(costs.shape[0]):
    free = col_valid[b].copy()
    for stage in range(stages):
      assigned = hungarian_numpy(costs[b, stage], stage_rows[b, stage], free)
      active = stage_rows[b, stage]
      out[b, active] = assigned[active]
      free[assigned[active & (assigned >= 0)]] = False
  return out.reshape(batch + (rows,))


def staged_hungarian(costs: jax.Array, stage_rows: jax.Array, col_valid: Optional[jax.Array] = None,
                     matcher: str = "host") -> jax.Array:
  """Hungarian in stages that share the columns: stage s assigns its rows (`stage_rows[..., s, :]`,
  disjoint between stages) by `costs[..., s, :, :]` to the valid columns no earlier stage took.

  The OHM's two stages (Eq. 6) and the first-appearance video matcher of the trackers' loss (Eq. 10, one
  stage per frame) are this. With matcher='host' all the stages are ONE host callback (issue 18: one
  round trip per frame for the OHM, per clip for the video matcher, instead of one per stage); with
  'device' they run one after the other on the device.

  Args:
    costs: [..., S, R, C]; stage_rows: bool [..., S, R]; col_valid: optional bool [..., C].
  Returns:
    int32 [..., R]: the column of every row at its stage, -1 for rows in no stage or unassigned.
  """
  if matcher not in MATCHERS:
    raise ValueError(f"matching.staged_hungarian: matcher must be one of {MATCHERS}, got {matcher!r}")
  costs = jax.lax.stop_gradient(jnp.asarray(costs))
  if costs.ndim < 3:
    raise ValueError(f"matching.staged_hungarian: costs must be [..., S, R, C], got shape {costs.shape}")
  costs = jnp.where(jnp.isnan(costs), jnp.zeros_like(costs), costs)
  batch, stages, rows, cols = costs.shape[:-3], costs.shape[-3], costs.shape[-2], costs.shape[-1]
  stage_rows = jnp.broadcast_to(jnp.asarray(stage_rows, bool), batch + (stages, rows))
  col_valid = (jnp.ones(batch + (cols,), bool) if col_valid is None
               else jnp.broadcast_to(jnp.asarray(col_valid, bool), batch + (cols,)))
  if rows == 0 or cols == 0 or stages == 0:
    return jnp.full(batch + (rows,), -1, jnp.int32)
  if matcher == "host":
    return jax.pure_callback(staged_hungarian_numpy, jax.ShapeDtypeStruct(batch + (rows,), jnp.int32),
                             costs, stage_rows, col_valid, vmap_method="broadcast_all")
  out = jnp.full(batch + (rows,), -1, jnp.int32)
  free = col_valid
  for stage in range(stages):
    active = stage_rows[..., stage, :]
    assigned = jnp.where(active, _hungarian_device(costs[..., stage, :, :], active, free), -1)
    out = jnp.where(active, assigned, out)
    free = free & ~jnp.any(assigned[..., :, None] == jnp.arange(cols), axis=-2)
  return out


def cosine_cost(slot_feats: jax.Array, cur_feats: jax.Array, norm_eps: float = 1e-6) -> jax.Array:
  """Matching cost `1 - cos` between rows: x / (||x|| + eps) (REFERENCE.md section 2). [..., N, M]."""
  normalize = lambda x: x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + norm_eps)
  return 1.0 - jnp.einsum("...nc,...mc->...nm", normalize(slot_feats), normalize(cur_feats))


def occupancy_guided_matching(slot_feats: jax.Array, cur_feats: jax.Array, occupied: jax.Array,
                              matcher: str = "host", norm_eps: float = 1e-6) -> jax.Array:
  """Occupancy-guided Hungarian matching, Eq. 6 (REFERENCE.md section 5d).

  Stage 1 matches the occupied slots against all current objects; stage 2 matches the free slots against
  the current objects stage 1 left. With no occupied slot, stage 1 is empty and stage 2 is the plain
  Hungarian over everything, which is exactly the reference's "nothing occupied" branch. Both stages are
  one `staged_hungarian` (one host callback with matcher='host').

  Args:
    slot_feats: [..., N, C] slot features (memory side); cur_feats: [..., M, C] current objects;
    occupied: bool [..., N]. norm_eps: 1e-6 (tracker); 0 reproduces the baselines' plain cosine (section 11).
  Returns:
    int32 [..., N]: the current object assigned to each slot (-1 only when M < N leaves a slot unmatched).
  """
  costs, stage_rows = ohm_stages(cosine_cost(slot_feats, cur_feats, norm_eps), occupied)
  return staged_hungarian(costs, stage_rows, matcher=matcher)


def ohm_stages(cost: jax.Array, occupied: jax.Array):
  """The two stages of Eq. 6 for `staged_hungarian`: (costs [..., 2, N, M], stage_rows [..., 2, N]);
  stage 1 the occupied slots, stage 2 the free ones, on the same cost [..., N, M]."""
  occupied = jnp.broadcast_to(jnp.asarray(occupied, bool), cost.shape[:-1])
  return jnp.stack([cost, cost], axis=-3), jnp.stack([occupied, ~occupied], axis=-2)


def single_stage(cost: jax.Array):
  """A plain Hungarian (every row, every column) as `staged_hungarian` problem, to be solved in the same
  host call as other problems of the same shape: (costs [..., 2, R, C], stage_rows [..., 2, R])."""
  rows = jnp.ones(cost.shape[:-1], bool)
  return jnp.stack([cost, cost], axis=-3), jnp.stack([rows, ~rows], axis=-2)
