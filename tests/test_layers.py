"""MultiHeadAttention / MLP against a direct NumPy computation of PyTorch's formulas."""

import jax
import jax.numpy as jnp
import numpy as np

from o2vis_jax.models import layers


def _numpy_mha(params, q, k, v, num_heads):
  p = lambda name, x: x @ np.asarray(params[name]["kernel"]) + np.asarray(params[name]["bias"])
  qq, kk, vv = p("q_proj", q), p("k_proj", k), p("v_proj", v)
  c = q.shape[-1]
  d = c // num_heads
  out = np.zeros((q.shape[0], c))
  for h in range(num_heads):
    sl = slice(h * d, (h + 1) * d)
    logits = qq[:, sl] @ kk[:, sl].T / np.sqrt(d)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out[:, sl] = w @ vv[:, sl]
  return p("out_proj", out)


def test_mha_matches_numpy():
  rng = np.random.default_rng(0)
  q = rng.normal(size=(5, 16)).astype(np.float32)
  kv = rng.normal(size=(7, 16)).astype(np.float32)
  mha = layers.MultiHeadAttention(num_heads=4)
  params = mha.init(jax.random.PRNGKey(0), q, kv, kv)["params"]
  got = mha.apply({"params": params}, q, kv, kv)
  want = _numpy_mha(jax.tree.map(np.asarray, params), q, kv, kv, 4)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_mha_mask_excludes_keys():
  rng = np.random.default_rng(1)
  q = rng.normal(size=(3, 8)).astype(np.float32)
  kv = rng.normal(size=(4, 8)).astype(np.float32)
  mha = layers.MultiHeadAttention(num_heads=2)
  params = mha.init(jax.random.PRNGKey(0), q, kv, kv)["params"]
  mask = np.array([True, True, False, False])
  masked = mha.apply({"params": params}, q, kv, kv, mask=mask[None, None, :])
  truncated = mha.apply({"params": params}, q, kv[:2], kv[:2])
  np.testing.assert_allclose(np.asarray(masked), np.asarray(truncated), rtol=1e-5, atol=1e-6)


def test_mlp_relu_between_layers_only():
  mlp = layers.MLP(hidden_dim=4, output_dim=3, num_layers=2)
  x = jnp.ones((2, 5))
  params = mlp.init(jax.random.PRNGKey(0), x)["params"]
  w0, b0 = params["layers_0"]["kernel"], params["layers_0"]["bias"]
  w1, b1 = params["layers_1"]["kernel"], params["layers_1"]["bias"]
  want = np.maximum(np.asarray(x) @ w0 + b0, 0) @ w1 + b1
  np.testing.assert_allclose(np.asarray(mlp.apply({"params": params}, x)), want, rtol=1e-6)
