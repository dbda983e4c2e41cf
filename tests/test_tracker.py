"""T_E / T_A stacks (REFERENCE.md section 2) against the NumPy re-implementation, float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_numpy as ref
from configs import tiny
from o2vis_jax import association
from o2vis_jax.checkpoint_conversion import tracker_from_reference

O2VIS = association.get("o2vis")


def _module(config):
  return O2VIS.module(config, hidden_dim=config.model.hidden_dim, num_classes=config.model.num_classes)


def _init(config):
  return O2VIS.init_params(config, jax.random.PRNGKey(0), num_classes=config.model.num_classes,
                           hidden_dim=config.model.hidden_dim)

C, K, FFN, N, HEADS, LAYERS = 16, 3, 32, 5, 4, 3


@pytest.fixture(scope="module")
def converted():
  sd = ref.random_state_dict(np.random.default_rng(0), C, K, FFN, LAYERS, ref_proj_gain=2.0)
  config, params = tracker_from_reference(sd, HEADS)
  return sd, config, params


def test_stacks_and_heads_match_numpy(converted):
  sd, config, params = converted
  rng = np.random.default_rng(1)
  kv, anchor, feats = rng.normal(size=(N, C)), rng.normal(size=(N, C)), rng.normal(size=(3, 2, C))
  with jax.enable_x64(True):
    model = _module(config)

    @jax.jit
    def run(params, kv, anchor, feats, use_anchor):
      bound = model.bind({"params": params})
      out = dict(self_E=bound.run_stack("E", kv), anchor_A=bound.run_stack("A", kv, anchor=anchor),
                 switched=bound.run_stack("E", kv, anchor=anchor, use_anchor=use_anchor))
      out["logits"], out["masks"] = bound.predict(out["anchor_A"][-1], feats)
      return out

    for use_anchor in (False, True):
      out = run(params, kv, anchor, feats, use_anchor)
      self_e = np.stack(ref.self_ref(sd, "E", kv, LAYERS, HEADS))
      anchor_a = np.stack(ref.anchor_ref(sd, "A", anchor, kv, LAYERS, HEADS))
      assert out["self_E"].dtype == jnp.float64
      np.testing.assert_allclose(np.asarray(out["self_E"]), self_e, rtol=0, atol=1e-12)
      np.testing.assert_allclose(np.asarray(out["anchor_A"]), anchor_a, rtol=0, atol=1e-12)
      # The traced switch (frame 0 vs later frames in one program) equals the static modes.
      want = np.stack(ref.anchor_ref(sd, "E", anchor, kv, LAYERS, HEADS)) if use_anchor else self_e
      np.testing.assert_allclose(np.asarray(out["switched"]), want, rtol=0, atol=1e-12)
      np.testing.assert_allclose(np.asarray(out["logits"]), ref.class_logits(sd, anchor_a[-1]), atol=1e-12)
      np.testing.assert_allclose(np.asarray(out["masks"]), ref.mask_logits(sd, anchor_a[-1], feats),
                                 atol=1e-12)
  # T_E and T_A really are different stacks: different weights give different outputs.
  assert np.abs(self_e[-1] - np.stack(ref.self_ref(sd, "A", kv, LAYERS, HEADS))[-1]).max() > 1e-3


def test_float32_stack_close_to_float64_reference(converted):
  sd, config, params = converted
  kv = np.random.default_rng(2).normal(size=(N, C))
  model = _module(config)
  run = jax.jit(lambda p, kv: model.bind({"params": p}).run_stack("A", kv))
  got = run(jax.tree.map(lambda x: x.astype(np.float32), params), kv.astype(np.float32))
  assert got.dtype == jnp.float32
  want = np.stack(ref.self_ref(sd, "A", kv, LAYERS, HEADS))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)


def test_init_params_tree_equals_converted_tree():
  config = tiny.get_config()
  params = _init(config)
  c, k, f = config.model.hidden_dim, config.model.num_classes, config.tracker.ffn_dim
  sd = ref.random_state_dict(np.random.default_rng(0), c, k, f, config.tracker.num_layers)
  _, converted = tracker_from_reference(sd, config.tracker.num_heads)
  shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
  assert shapes(params) == shapes(converted)
  # Parameters of the tracker are their own tree: nothing of the segmenter.
  assert "ref_proj" in params and "class_embed" in params and len(params) == 6 * config.tracker.num_layers + 4


def test_unknown_tracker_name():
  config = tiny.get_config()
  params = _init(config)
  bound = _module(config).bind({"params": params})
  with pytest.raises(ValueError, match="tracker must be one of"):
    bound.run_stack("B", jnp.zeros((2, config.model.hidden_dim)))
