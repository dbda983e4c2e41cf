"""Layers shared by the segmenter and the trackers.

`MultiHeadAttention` computes exactly what PyTorch's `nn.MultiheadAttention` computes (batch-first
here): separate q/k/v projections (PyTorch fuses them in `in_proj_weight`, rows [0:C], [C:2C],
[2C:3C]; weight import splits them), softmax(q.k / sqrt(C/h)) over keys, heads concatenated,
`out_proj`. Submodule names follow the PyTorch names so that weight import is a table.

`SelfAttentionLayer` and `FFNLayer` are the post-norm blocks of Mask2Former's decoder, also the
self-attention and FFN blocks of the O2VIS trackers (which use no positional embedding).
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def resolve_dtype(name_or_dtype) -> Dtype:
  """'float32' / 'bfloat16' / 'float64' (or a dtype) -> a jnp dtype."""
  if name_or_dtype is None:
    return None
  return jnp.dtype(name_or_dtype)


class MLP(nn.Module):
  """`num_layers` Linear layers with ReLU between them (Mask2Former's MLP, DETR's MLP).

  Layers are named `layers_0 .. layers_{num_layers-1}` like the PyTorch `self.layers` ModuleList.
  """
  hidden_dim: int
  output_dim: int
  num_layers: int
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for i in range(self.num_layers):
      features = self.output_dim if i == self.num_layers - 1 else self.hidden_dim
      x = nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=f"layers_{i}")(x)
      if i < self.num_layers - 1:
        x = nn.relu(x)
    return x


class MultiHeadAttention(nn.Module):
  """PyTorch-equivalent multi-head attention, batch-first.

  Args of __call__:
    query: [..., Lq, C]; key: [..., Lk, C]; value: [..., Lk, C].
    mask: optional boolean, broadcastable to [..., num_heads, Lq, Lk]; True = the key may be attended
      (the opposite of PyTorch's `attn_mask` convention, the same as flax's).
    keys_values: optional (k, v) [..., Lk, heads, C/heads] already projected by this layer (from an
      earlier call with `return_keys_values=True` on the same key and value): `key` and `value` are then
      not projected again (the trackers attend twice to the same frame).
    return_keys_values: also return the projected (k, v), -> (out, (k, v)).
  """
  num_heads: int
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, query, key, value, mask: Optional[jax.Array] = None, keys_values=None,
               return_keys_values: bool = False):
    channels = query.shape[-1]
    if channels % self.num_heads:
      raise ValueError(f"channels {channels} not divisible by num_heads {self.num_heads}")
    head_dim = channels // self.num_heads
    dense = lambda name: nn.Dense(channels, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    split = lambda x: x.reshape(x.shape[:-1] + (self.num_heads, head_dim))
    q = split(dense("q_proj")(query))
    if keys_values is None:
      keys_values = (split(dense("k_proj")(key)), split(dense("v_proj")(value)))
    k, v = keys_values
    q = q / jnp.sqrt(jnp.asarray(head_dim, q.dtype))
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    # Softmax in at least float32 for stability under bfloat16 compute.
    weights = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    weights = weights.astype(v.dtype)
    out = jnp.einsum("...hqk,...khd->...qhd", weights, v)
    out = dense("out_proj")(out.reshape(out.shape[:-2] + (channels,)))
    return (out, keys_values) if return_keys_values else out


def layer_norm(name: str, dtype=None, param_dtype=jnp.float32, epsilon: float = 1e-5) -> nn.LayerNorm:
  """LayerNorm with PyTorch's default eps (1e-5)."""
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)


class SelfAttentionLayer(nn.Module):
  """LN(q + MHA(q + pos, q + pos, q)); without `query_pos`, LN(x + MHA(x, x, x)) (the trackers)."""
  num_heads: int
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, queries, query_pos=None):
    with_pos = queries if query_pos is None else queries + query_pos
    attended = MultiHeadAttention(self.num_heads, self.dtype, self.param_dtype, name="self_attn")(
        with_pos, with_pos, queries)
    return layer_norm("norm", self.dtype, self.param_dtype)(queries + attended)


class FFNLayer(nn.Module):
  """LN(x + linear2(relu(linear1(x))))."""
  ffn_dim: int
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, queries):
    dense = lambda f, n: nn.Dense(f, dtype=self.dtype, param_dtype=self.param_dtype, name=n)
    y = dense(queries.shape[-1], "linear2")(nn.relu(dense(self.ffn_dim, "linear1")(queries)))
    return layer_norm("norm", self.dtype, self.param_dtype)(queries + y)
