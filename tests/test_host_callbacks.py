"""Host round trips (issue 18): with matcher='host' the O2VIS frame step makes ONE host callback per frame
(sigma_t and both OHM stages; before: three), the OHM alone one (before: two), and the trackers' video
matcher one per clip (before: one per frame). `staged_hungarian` equals the stage-by-stage Hungarian it
replaces, on the host and on the device."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from o2vis_jax import association
from o2vis_jax.association.ops import hungarian as hungarian_lib
from o2vis_jax.losses import assignment

C, K, N, T = 16, 3, 6, 4


def count_callbacks(fn, *args):
  """pure_callback equations in the jaxpr of fn(*args), each loop / cond body counted once."""
  count = 0

  def walk(jaxpr):
    nonlocal count
    for eqn in jaxpr.eqns:
      count += eqn.primitive.name == "pure_callback"
      for value in eqn.params.values():
        for sub in (value if isinstance(value, (list, tuple)) else [value]):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            walk(sub)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return count


def stage_by_stage(costs, stage_rows, matcher):
  """The replaced implementation: one `hungarian` per stage, columns taken by earlier stages removed."""
  num_cols = costs.shape[-1]
  out = jnp.full(costs.shape[-2:-1], -1, jnp.int32)
  free = jnp.ones((num_cols,), bool)
  for stage in range(costs.shape[0]):
    rows = stage_rows[stage]
    assigned = jnp.where(rows, hungarian_lib.hungarian(costs[stage], rows, free, matcher=matcher), -1)
    out = jnp.where(rows, assigned, out)
    free = free & ~jnp.any(assigned[:, None] == jnp.arange(num_cols), axis=0)
  return out


def _o2vis():
  from configs import tiny
  config = association.with_method(tiny.get_config(), "o2vis")
  config.tracker.num_layers, config.tracker.ffn_dim, config.tracker.num_heads = 1, 32, 4
  params = association.get("o2vis").init_params(config, jax.random.PRNGKey(0), num_classes=K, hidden_dim=C)
  rng = np.random.default_rng(0)
  frames = dict(embeds=rng.normal(size=(T, N, C)).astype(np.float32),
                embeds_without_norm=rng.normal(size=(T, N, C)).astype(np.float32),
                mask_features=rng.normal(size=(T, 3, 4, C)).astype(np.float32),
                logits=rng.normal(size=(T, N, K + 1)).astype(np.float32))
  return config, params, frames


def test_o2vis_step_makes_one_host_callback_per_frame():
  config, params, frames = _o2vis()
  config.tracker.matcher = "host"
  # The scan body holds the frame step once: one callback in it = one per frame.
  assert count_callbacks(lambda p, f: association.track(config, p, f), params, frames) == 1
  without_logits = {k: v for k, v in frames.items() if k != "logits"}
  assert count_callbacks(lambda p, f: association.track(config, p, f), params, without_logits) == 1
  early = count_callbacks(lambda p, f: association.track(config, p, f, train=True, phase="early"),
                          params, frames)
  assert early == 1
  config.tracker.matcher = "device"
  assert count_callbacks(lambda p, f: association.track(config, p, f), params, frames) == 0


def test_o2vis_host_and_device_matchers_agree():
  config, params, frames = _o2vis()
  got = {}
  for matcher in ("host", "device"):
    config.tracker.matcher = matcher
    got[matcher] = association.track(config, params, frames)
  for key in ("assignment", "indices", "pred_logits"):
    np.testing.assert_allclose(np.asarray(got["host"][key]), np.asarray(got["device"][key]), atol=1e-5,
                               err_msg=key)


def test_ohm_is_one_host_callback():
  slots, current = jnp.ones((N, C)), jnp.ones((N, C))
  occupied = jnp.arange(N) % 2 == 0
  assert count_callbacks(lambda s, c, o: hungarian_lib.occupancy_guided_matching(s, c, o), slots, current,
                         occupied) == 1


@pytest.mark.parametrize("matcher", ["host", "device"])
@pytest.mark.parametrize("shape", [(2, 5, 5), (3, 4, 6), (4, 6, 3)])
def test_staged_hungarian_equals_stage_by_stage(matcher, shape):
  stages, rows, cols = shape
  staged = jax.jit(lambda c, r: hungarian_lib.staged_hungarian(c, r, matcher=matcher))
  by_stage = jax.jit(lambda c, r: stage_by_stage(c, r, matcher))
  for seed in range(4):
    rng = np.random.default_rng(seed)
    costs = jnp.asarray(rng.normal(size=shape), jnp.float32)
    stage_of_row = rng.integers(-1, stages, size=rows)        # -1: the row is in no stage
    stage_rows = jnp.asarray(stage_of_row[None, :] == np.arange(stages)[:, None])
    got = staged(costs, stage_rows)
    want = by_stage(costs, stage_rows)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"seed {seed}")
    assert np.all(np.asarray(got)[stage_of_row < 0] == -1)


def test_staged_hungarian_under_vmap():
  rng = np.random.default_rng(7)
  costs = jnp.asarray(rng.normal(size=(3, 2, 5, 5)), jnp.float32)
  occupied = jnp.asarray(rng.random((3, 5)) < 0.5)
  stage_rows = jnp.stack([occupied, ~occupied], axis=1)
  got = jax.vmap(lambda c, r: hungarian_lib.staged_hungarian(c, r))(costs, stage_rows)
  for b in range(3):
    want = stage_by_stage(costs[b], stage_rows[b], "host")
    np.testing.assert_array_equal(np.asarray(got[b]), np.asarray(want))


def test_video_matcher_is_one_host_callback_per_clip():
  rng = np.random.default_rng(3)
  num_frames, gts, queries = 5, 4, 7
  costs = jnp.asarray(rng.normal(size=(num_frames, gts, queries)), jnp.float32)
  present = jnp.asarray(rng.random((num_frames, gts)) < 0.4)
  assert count_callbacks(lambda c, p: assignment.consistent_video_matching(c, p, "host"), costs, present) == 1
  first = assignment.first_appearance(present)
  stages = first[None, :] == jnp.arange(num_frames)[:, None]
  for matcher in ("host", "device"):
    got = assignment.consistent_video_matching(costs, present, matcher)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(stage_by_stage(costs, stages, "host")))
  assert np.all(np.asarray(got)[np.asarray(first) < 0] == -1)
