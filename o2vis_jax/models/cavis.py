"""CAVIS's context-aware ReID head and its referring tracker CAIT (shared/reference/cavis.md sections 1-2;
the authors' `video_mask2former_transformer_decoder.py` D:54-76, D:229-242 and `video_cavis_modules.py`
M:98-335).

The head runs on one frame's segmenter outputs, so CAVIS association works on any Mask2Former segmenter of
this project:
  m = 1[M > 0]; b = the INNER boundary of m (Laplacian > 0: a mask pixel with a 0 or outside neighbour);
  S(p) = w * sum_c sum_{k x k window} F[c, p + d]   (the code's groups=1 box filter sums every channel:
         one map, not the paper's per-channel Avg(F); w = float32(1 / k^2), zero padding, divisor k^2);
  ctx_n = sum_p b_n(p) S(p) / (sum_p b_n(p) + 1e-6), repeated over C channels;
  reid_n = reid_embed([e_n | ctx_n])   (MLP_3: 2C -> reid_hidden -> reid_hidden -> C).
The tracker's blocks are FFN(SA(RCA(identity, query, key, value))) (post-norm, no positions); its shared
heads are `decoder_norm`, `class_embed`, `mask_embed`; `ctx_query_embed` (Linear 2C -> C) makes the
context-aware queries and keys. Submodule names follow the PyTorch names so that weight import
(`association/cavis/convert.py`) is a table. State (the previous frame) is the scan carry of the
association method `cavis` (`association/cavis/step.py`), never an attribute.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from o2vis_jax.models.layers import (MLP, FFNLayer, MultiHeadAttention, SelfAttentionLayer, layer_norm,
                                     resolve_dtype)
from o2vis_jax.models.tracker import predict_heads

Dtype = Any
COUNT_EPS = 1e-6   # added to the boundary pixel count (D:239), not a max.


def inner_boundary(masks: jax.Array) -> jax.Array:
  """b = 1[conv2d(1[M > 0], Laplacian, zero padding) > 0]: bool [..., h, w] of mask logits [..., h, w].

  8 m(p) - sum of the 8 neighbours is > 0 exactly when m(p) = 1 and some neighbour is 0 or outside."""
  inside = (masks > 0).astype(jnp.int32)
  padded = jnp.pad(inside, [(0, 0)] * (inside.ndim - 2) + [(1, 1), (1, 1)])
  height, width = inside.shape[-2:]
  neighbours = sum(padded[..., 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
  return (inside == 1) & (neighbours < 8)


def context_map(mask_features: jax.Array, filter_size: int) -> jax.Array:
  """S [h, w] of mask features [h, w, C]: the k x k box sum of the channel sum, times float32(1/k^2)."""
  if filter_size < 1 or filter_size % 2 == 0:
    raise ValueError(f"config.association.cavis.context_filter_size must be odd and >= 1, got {filter_size}")
  channel_sum = jnp.sum(mask_features, axis=-1)
  half = (filter_size - 1) // 2
  # A concrete (NumPy) zero init makes this the differentiable `reduce_window_sum` (the segmenter stage
  # trains through it); a traced init would give the generic reduce_window, which has no VJP.
  box = jax.lax.reduce_window(channel_sum, np.zeros((), channel_sum.dtype), jax.lax.add,
                              (filter_size, filter_size), (1, 1), [(half, half), (half, half)])
  # The authors build the filter in float32 whatever the model's dtype (a plain attribute, D:74-75).
  weight = jnp.asarray(np.float32(1.0 / filter_size ** 2), box.dtype)
  return weight * box


def context_features(masks: jax.Array, mask_features: jax.Array, filter_size: int) -> jax.Array:
  """ctx [N] (one value per query; the code repeats it over C) of mask logits [N, h, w] and mask
  features [h, w, C]; no gradient reaches the masks (D:233, clone().detach())."""
  boundary = inner_boundary(jax.lax.stop_gradient(masks)).astype(mask_features.dtype)
  surrounding = context_map(mask_features, filter_size)
  count = jnp.sum(boundary, axis=(-2, -1)) + COUNT_EPS
  return jnp.einsum("nhw,hw->n", boundary, surrounding) / count


class ContextReferringCrossAttention(nn.Module):
  """RCA(I, Q, K, V) = LN(I + MHA(query=Q, key=K, value=V)) (M:37-56: the identity I replaces the residual;
  CAVIS's keys are context-aware, its values the un-normed queries)."""
  num_heads: int
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, identity, query, key, value):
    attended = MultiHeadAttention(self.num_heads, self.dtype, self.param_dtype, name="multihead_attn")(
        query, key, value)
    return layer_norm("norm", self.dtype, self.param_dtype)(identity + attended)


class CAVIS(nn.Module):
  """The ReID head (`reid_embed`) and CAIT. Use through `bind`: `reid`, `block`, `context_query`,
  `predict`, `normed`."""
  hidden_dim: int
  num_classes: int
  num_layers: int = 6
  num_heads: int = 8
  ffn_dim: int = 2048
  reid_hidden_dim: int = 256
  num_reid_head_layers: int = 3
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = self.hidden_dim
    self.reid_embed = MLP(self.reid_hidden_dim, c, self.num_reid_head_layers, **kw)
    self.transformer_cross_attention_layers = [ContextReferringCrossAttention(self.num_heads, **kw)
                                               for _ in range(self.num_layers)]
    self.transformer_self_attention_layers = [SelfAttentionLayer(self.num_heads, **kw)
                                              for _ in range(self.num_layers)]
    self.transformer_ffn_layers = [FFNLayer(self.ffn_dim, **kw) for _ in range(self.num_layers)]
    self.ctx_query_embed = nn.Dense(c, **kw)
    self.decoder_norm = nn.LayerNorm(epsilon=1e-5, **kw)
    self.class_embed = nn.Dense(self.num_classes + 1, **kw)
    self.mask_embed = MLP(c, c, 3, **kw)

  def reid(self, embeds, context):
    """reid [N, C] = reid_embed([e | ctx repeated over C]) (D:192, Eq. 7)."""
    repeated = jnp.broadcast_to(context[..., None].astype(embeds.dtype), embeds.shape)
    return self.reid_embed(jnp.concatenate([embeds, repeated], axis=-1))

  def context_query(self, features):
    """E(z) = ctx_query_embed(z), z [..., 2C]."""
    return self.ctx_query_embed(features)

  def block(self, j: int, identity, query, key, value):
    """Block_j(I, Q, K, V) = FFN_j(SA_j(RCA_j(I, Q, K, V)))."""
    x = self.transformer_cross_attention_layers[j](identity, query, key, value)
    return self.transformer_ffn_layers[j](self.transformer_self_attention_layers[j](x))

  def normed(self, x):
    return self.decoder_norm(x)

  def predict(self, x, mask_features):
    """(logits [..., N, K+1], masks [..., N, h, w]) on LN_dec(x) (M:327-335)."""
    return predict_heads(self.decoder_norm, self.class_embed, self.mask_embed, x, mask_features)

  def __call__(self, kv, mask_features):
    """Touches every parameter (for `init`; the referring trackers' signature, `tracker.xavier_params`)."""
    reid = self.reid(kv, jnp.zeros(kv.shape[:-1], kv.dtype))
    query = self.context_query(jnp.concatenate([kv, reid], axis=-1))
    x = kv
    for j in range(self.num_layers):
      x = self.block(j, x, query, query, kv)
    return self.predict(x, mask_features)

  @classmethod
  def from_section(cls, section, *, hidden_dim: int, num_classes: int):
    return cls(hidden_dim=hidden_dim, num_classes=num_classes, num_layers=section.num_layers,
               num_heads=section.num_heads, ffn_dim=section.ffn_dim,
               reid_hidden_dim=section.reid_hidden_dim,
               num_reid_head_layers=section.num_reid_head_layers,
               dtype=resolve_dtype(section.get("dtype")),
               param_dtype=resolve_dtype(section.get("param_dtype", "float32")))
