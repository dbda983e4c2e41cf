"""Compile once: `association.track` / `run_chunk` and the segmenter's jitted apply trace (and so compile)
once per (config, shapes, dtype), whatever the caller does between calls (a fresh copy of the config,
a new params tree of the same shapes); a changed config value or shape is a new program."""

import copy

import jax
import jax.numpy as jnp
import numpy as np

from configs import tiny
from o2vis_jax import association, compile_cache, models
from o2vis_jax.association import driver

C, K, N, T = 16, 3, 6, 4


def _config():
  config = association.with_method(tiny.get_config(), "o2vis")
  config.model.hidden_dim, config.model.num_classes = C, K
  config.tracker.num_layers, config.tracker.ffn_dim, config.tracker.num_heads = 1, 32, 4
  return config


def _frames(seed, t=T):
  rng = np.random.default_rng(seed)
  return dict(embeds=rng.normal(size=(t, N, C)).astype(np.float32),
              embeds_without_norm=rng.normal(size=(t, N, C)).astype(np.float32),
              mask_features=rng.normal(size=(t, 3, 4, C)).astype(np.float32),
              logits=rng.normal(size=(t, N, K + 1)).astype(np.float32))


def test_track_compiles_once_per_config_and_shape():
  config = _config()
  method = association.get("o2vis")
  params = method.init_params(config, jax.random.PRNGKey(0), num_classes=K, hidden_dim=C)
  before = driver.trace_count()
  first = association.track(config, params, _frames(0))
  assert driver.trace_count() == before + 1
  # Equal config (a copy), other values, new params of the same shapes: no new trace.
  params2 = jax.tree.map(lambda x: x + 0.5, params)
  second = association.track(copy.deepcopy(config), params2, _frames(1))
  association.track(config, params, _frames(2))
  assert driver.trace_count() == before + 1, "track traced again for an equal config and equal shapes"
  assert not np.allclose(np.asarray(first["pred_logits"]), np.asarray(second["pred_logits"]))
  # run_chunk on the same shapes reuses the same program (its state is the one track builds).
  frames = dict(_frames(3), valid=np.ones((T,), bool))
  state = association.init_state(config, params, frames)
  association.run_chunk(config, params, state, frames)
  assert driver.trace_count() == before + 1
  # A new shape (more frames) or a changed config value is a new program, once.
  association.track(config, params, _frames(4, t=T + 1))
  association.track(config, params, _frames(5, t=T + 1))
  assert driver.trace_count() == before + 2
  changed = copy.deepcopy(config)
  changed.tracker.anchor = "memory"
  association.track(changed, params, _frames(0))
  association.track(changed, params, _frames(1))
  assert driver.trace_count() == before + 3


def test_mutating_a_config_after_the_call_does_not_change_the_cached_program():
  config = _config()
  params = association.get("o2vis").init_params(config, jax.random.PRNGKey(1), num_classes=K, hidden_dim=C)
  frames = _frames(6)
  want = np.asarray(association.track(config, params, frames)["pred_logits"])
  config.tracker.anchor = "current"           # the caller mutates its config...
  association.track(config, params, frames)
  config.tracker.anchor = None                # ... and restores it: the first program, unchanged.
  np.testing.assert_array_equal(np.asarray(association.track(config, params, frames)["pred_logits"]), want)


def test_config_key_is_by_value():
  a, b = _config(), _config()
  key = compile_cache.config_key
  assert key(a) == key(b) and hash(key(a)) == hash(key(b))
  b.tracker.ffn_dim = 48
  assert key(a) != key(b)


def test_segmenter_apply_compiles_once():
  config = tiny.get_config()
  params = models.init_segmenter_params(config, jax.random.PRNGKey(0))
  images = jnp.zeros((1, 64, 64, 3), jnp.float32)
  apply = models.segmenter_apply(config)
  assert models.segmenter_apply(copy.deepcopy(config)) is apply, "an equal config gives the cached function"
  before = models.segmenter_trace_count()
  apply(params, images)
  apply(params, images + 1.0)
  models.segmenter_apply(copy.deepcopy(config))(params, images)
  assert models.segmenter_trace_count() == before + 1
