"""Mask2Former's masked-attention transformer decoder with class and mask heads (SPEC section 1).

N learned query features attend, layer by layer, to one level of the pixel decoder's multi-scale
features (stride 32, 16, 8, 32, ... in round robin). Each layer (post-norm):
  q = LN(q + MHA(q + q_pos, f + f_pos, f, mask))     masked cross-attention
  q = LN(q + MHA(q + q_pos, q + q_pos, q))           self-attention
  q = LN(q + W2 relu(W1 q))                          FFN
The mask lets a query see only the pixels where its previous mask prediction, resized bilinearly to
the layer's level, has sigmoid >= 0.5; a query whose mask would hide every pixel sees all of them.
Predictions (`decoder_norm`, then `class_embed` and mask logits = mask_embed(q) . mask_features)
are made after the query init and after every layer (deep supervision).
"""

from typing import Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from o2vis_jax.models.layers import MLP, FFNLayer, MultiHeadAttention, SelfAttentionLayer, layer_norm
from o2vis_jax.models.position_encoding import sine_position_encoding
from o2vis_jax.models.resize import resize_bilinear


class CrossAttentionLayer(nn.Module):
  num_heads: int
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, queries, query_pos, memory, memory_pos, mask):
    attended = MultiHeadAttention(self.num_heads, self.dtype, self.param_dtype, name="multihead_attn")(
        queries + query_pos, memory + memory_pos, memory, mask=mask)
    return layer_norm("norm", self.dtype, self.param_dtype)(queries + attended)


def attention_mask_from_masks(mask_logits: jnp.ndarray, height: int, width: int,
                              key_valid: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Boolean [B, 1, N, h*w] (True = may attend) from mask logits [B, N, H, W].

  Masked where sigmoid(resized logits) < 0.5, i.e. logits < 0; padded keys (key_valid False) are
  masked too; a query that would see no key sees every (valid) key instead.
  """
  resized = resize_bilinear(mask_logits, height, width, 2, 3)
  allowed = (jax.nn.sigmoid(resized.astype(jnp.float32)) >= 0.5).reshape(
      mask_logits.shape[:2] + (height * width,))
  everything = jnp.ones_like(allowed)
  if key_valid is not None:
    allowed = allowed & key_valid[:, None, :]
    everything = everything & key_valid[:, None, :]
  allowed = jnp.where(jnp.any(allowed, axis=-1, keepdims=True), allowed, everything)
  return allowed[:, None]


class MaskedTransformerDecoder(nn.Module):
  """`MultiScaleMaskedTransformerDecoder` (Mask2Former predictor); names follow the PyTorch module."""
  num_classes: int
  num_queries: int = 100
  hidden_dim: int = 256
  num_heads: int = 8
  num_layers: int = 9
  ffn_dim: int = 2048
  mask_dim: int = 256
  enforce_input_projection: bool = False
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, multi_scale: Sequence[jnp.ndarray], mask_features: jnp.ndarray,
               valid_levels: Optional[Sequence[Optional[jnp.ndarray]]] = None) -> Dict[str, jnp.ndarray]:
    """
    Args:
      multi_scale: 3 maps [B, h_l, w_l, C_in] (strides 32, 16, 8); mask_features [B, H/4, W/4, mask_dim].
      valid_levels: optional per-level bool [B, h_l, w_l]; padded pixels are never attended.
    Returns: dict with pred_logits, pred_masks, pred_embds, pred_embds_without_norm, aux_outputs.
    """
    num_levels = len(multi_scale)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    level_embed = self.param("level_embed", nn.initializers.normal(1.0), (num_levels, self.hidden_dim),
                             self.param_dtype)
    query_feat = self.param("query_feat", nn.initializers.normal(1.0), (self.num_queries, self.hidden_dim),
                            self.param_dtype)
    query_embed = self.param("query_embed", nn.initializers.normal(1.0), (self.num_queries, self.hidden_dim),
                             self.param_dtype)
    batch = mask_features.shape[0]
    memories, memory_pos, shapes, key_valid = [], [], [], []
    for level, feature in enumerate(multi_scale):
      height, width = feature.shape[1:3]
      valid = None if valid_levels is None else valid_levels[level]
      if feature.shape[-1] != self.hidden_dim or self.enforce_input_projection:
        feature = nn.Conv(self.hidden_dim, (1, 1), name=f"input_proj_{level}", **kw)(feature)
      dtype = feature.dtype
      pos = sine_position_encoding(batch, height, width, self.hidden_dim // 2, valid,
                                   dtype=jnp.promote_types(dtype, jnp.float32)).astype(dtype)
      memories.append(feature.reshape(batch, height * width, -1) + level_embed[level].astype(dtype))
      memory_pos.append(pos.reshape(batch, height * width, -1))
      shapes.append((height, width))
      key_valid.append(None if valid is None else valid.reshape(batch, -1))

    decoder_norm = layer_norm("decoder_norm", **kw)
    class_embed = nn.Dense(self.num_classes + 1, name="class_embed", **kw)
    mask_embed = MLP(self.hidden_dim, self.mask_dim, 3, name="mask_embed", **kw)

    def predict(queries):
      # Heads on the un-normed queries [B, N, C] -> (normed queries, class logits, mask logits).
      normed = decoder_norm(queries)
      masks = jnp.einsum("bnc,bhwc->bnhw", mask_embed(normed), mask_features.astype(normed.dtype))
      return normed, class_embed(normed), masks

    dtype = memories[0].dtype
    queries = jnp.broadcast_to(query_feat.astype(dtype), (batch,) + query_feat.shape)
    query_pos = jnp.broadcast_to(query_embed.astype(dtype), (batch,) + query_embed.shape)
    predictions = [predict(queries)]
    for i in range(self.num_layers):
      level = i % num_levels
      mask = attention_mask_from_masks(predictions[-1][2], *shapes[level], key_valid[level])
      queries = CrossAttentionLayer(self.num_heads, name=f"transformer_cross_attention_layers_{i}", **kw)(
          queries, query_pos, memories[level], memory_pos[level], mask)
      queries = SelfAttentionLayer(self.num_heads, name=f"transformer_self_attention_layers_{i}", **kw)(
          queries, query_pos)
      queries = FFNLayer(self.ffn_dim, name=f"transformer_ffn_layers_{i}", **kw)(queries)
      predictions.append(predict(queries))

    normed, logits, masks = predictions[-1]
    return dict(
        pred_logits=logits, pred_masks=masks, pred_embds=normed, pred_embds_without_norm=queries,
        aux_outputs=[dict(pred_logits=l, pred_masks=m) for _, l, m in predictions[:-1]])
