"""DVIS-DAQ's tracker, `VideoInstanceCutter` (reference/dvis_daq.md "Tracker weights"; DVIS_DAQ/dvis_daq/
track_module.py and slot_attention.py): the Flax layers only, without state. The sequence table (which
rows are live tracks, the position history, the kick-out counter) is the scan carry of the association
method `dvis_daq` (`association/dvis_daq/step.py`).

Two stacks of `num_layers` post-norm blocks:
  tracker 1 (the track / emergence rows): CA(x, e_t; qpos, kpos) -> SA -> FFN   (Mask2Former's blocks)
  tracker 2 (the slot branch):            SlotCA(s, e_t; spos, squery) -> FFN
Row masks stand in for the reference's variable number of rows: a masked row takes no part in any
attention over rows (self-attention keys, slot attention's slot and input axes), so the live rows get
exactly the values the reference computes on the live rows alone.

Submodule names are the PyTorch ones (`transformer_cross_attention_layers_0/multihead_attn/q_proj`,
`slot_cross_attention_layers_0/slot_attn/project_q_1`, ...), so weight import is a table.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from o2vis_jax.models.layers import MLP, FFNLayer, MultiHeadAttention, layer_norm
from o2vis_jax.models.transformer_decoder import CrossAttentionLayer

Dtype = Any


def masked_self_attention(layer_norm_module, attention, x, row_valid):
  """SA(x) = LN(x + MHA(x, x, x)) with the keys restricted to the valid rows."""
  mask = None if row_valid is None else row_valid[..., None, None, :]
  return layer_norm_module(x + attention(x, x, x, mask=mask))


class MaskedSelfAttentionLayer(nn.Module):
  """Mask2Former's post-norm self-attention block without positions, keys masked by `row_valid`."""
  num_heads: int
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, row_valid=None):
    attention = MultiHeadAttention(self.num_heads, self.dtype, self.param_dtype, name="self_attn")
    return masked_self_attention(layer_norm("norm", self.dtype, self.param_dtype), attention, x, row_valid)


class SlotAttention(nn.Module):
  """SA:7-62 with one iteration: W = softmax over the slots (cols) of k q^T / sqrt(C), + eps, then
  normalised over the inputs (rows); the update of slot m is sum_n W[n, m] v_n."""
  eps: float = 1e-6
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs, inputs_k, slots, row_valid=None):
    channels = inputs.shape[-1]
    dense = lambda name: nn.Dense(channels, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                                  name=name)
    k = dense("project_k")(layer_norm("norm_inputs", self.dtype, self.param_dtype)(inputs_k))
    q = dense("project_q_1")(layer_norm("project_q_0", self.dtype, self.param_dtype)(slots))
    logits = jnp.einsum("...nc,...mc->...nm", k, q) * channels ** -0.5
    if row_valid is not None:   # a masked slot (col) gets no weight, a masked input (row) gives none
      logits = jnp.where(row_valid[..., None, :], logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1) + self.eps
    if row_valid is not None:
      weights = jnp.where(row_valid[..., :, None], weights, 0)
    total = jnp.sum(weights, axis=-2, keepdims=True)
    # A frame without a valid row (every row masked) leaves every slot's column empty: its update is 0, not
    # 0 / 0 (which the loss masks out in the forward pass, but whose NaN would reach the gradients).
    weights = weights / jnp.where(total > 0, total, 1)
    return jnp.einsum("...nm,...nc->...mc", weights, inputs)


class SlotCrossAttentionLayer(nn.Module):
  """SA:117-136 (post-norm): a = MHA(s + spos, e, e) (no key position); s <- LN(s + SlotAttn(a, s + a,
  squery))."""
  num_heads: int
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, slots, memory, slot_pos, slot_query, row_valid=None, memory_mask=None):
    attended = MultiHeadAttention(self.num_heads, self.dtype, self.param_dtype, name="multihead_attn")(
        slots + slot_pos, memory, memory, mask=memory_mask)
    update = SlotAttention(dtype=self.dtype, param_dtype=self.param_dtype, name="slot_attn")(
        attended, slots + attended, slot_query, row_valid)
    return layer_norm("norm", self.dtype, self.param_dtype)(slots + update)


class VideoInstanceCutter(nn.Module):
  """The layers and heads of DVIS-DAQ's tracker. Use through `bind({'params': params})`."""
  hidden_dim: int
  num_classes: int
  num_layers: int = 6
  num_heads: int = 8
  ffn_dim: int = 2048
  num_bg_slots: int = 5
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    layers = lambda make: [make() for _ in range(self.num_layers)]
    self.transformer_cross_attention_layers = layers(lambda: CrossAttentionLayer(self.num_heads, **kw))
    self.transformer_self_attention_layers = layers(lambda: MaskedSelfAttentionLayer(self.num_heads, **kw))
    self.transformer_ffn_layers = layers(lambda: FFNLayer(self.ffn_dim, **kw))
    self.slot_cross_attention_layers = layers(lambda: SlotCrossAttentionLayer(self.num_heads, **kw))
    self.slot_ffn_layers = layers(lambda: FFNLayer(self.ffn_dim, **kw))
    self.decoder_norm = nn.LayerNorm(epsilon=1e-5, **kw)
    self.class_embed = nn.Dense(self.num_classes + 1, **kw)
    self.pos_embed = MLP(self.hidden_dim, self.hidden_dim, 3, **kw)
    self.mask_embed = MLP(self.hidden_dim, self.hidden_dim, 3, **kw)
    self.mask_feature_proj = nn.Dense(self.hidden_dim, **kw)     # the 1x1 Conv2d on channels-last
    self.new_ins_embeds = nn.Embed(1, self.hidden_dim, **kw)
    self.bg_slots = nn.Embed(self.num_bg_slots, self.hidden_dim, **kw)

  def emergence_query(self):
    """The one learned emergence query [C] (repeated for every emergence row)."""
    return self.new_ins_embeds.embedding[0]

  def background_slots(self):
    return self.bg_slots.embedding

  def run_tracker(self, queries, query_pos, memory, memory_pos, row_valid):
    """Tracker 1: the `num_layers` block outputs [L, R, C] of rows `queries` [R, C] on the frame's
    normed queries `memory` [N, C]."""
    outputs, x = [], queries
    for cross, self_attention, ffn in zip(self.transformer_cross_attention_layers,
                                         self.transformer_self_attention_layers, self.transformer_ffn_layers):
      x = ffn(self_attention(cross(x, query_pos, memory, memory_pos, None), row_valid))
      outputs.append(x)
    return jnp.stack(outputs)

  def run_slots(self, slots, memory, slot_pos, slot_query, row_valid, memory_mask=None):
    """Tracker 2: the block outputs [L, R, C] of the slot branch."""
    outputs = []
    for cross, ffn in zip(self.slot_cross_attention_layers, self.slot_ffn_layers):
      slots = ffn(cross(slots, memory, slot_pos, slot_query, row_valid, memory_mask))
      outputs.append(slots)
    return jnp.stack(outputs)

  def project_features(self, mask_features):
    """P_t = conv1x1(F_t): the features the mask head reads [h, w, C]."""
    return self.mask_feature_proj(mask_features)

  def predict(self, x, projected_features):
    """(logits [..., R, K+1], masks [..., R, h, w]) of rows x [..., R, C] (TM:761-769)."""
    normed = self.decoder_norm(x)
    masks = jnp.einsum("...rc,hwc->...rhw", self.mask_embed(normed), projected_features)
    return self.class_embed(normed), masks

  def position(self, mask_logits, mask_features):
    """pos_embed(pool(M, F)) [R, C] (TM:771-792): the mean of the ORIGINAL features F [h, w, C] over
    each row's mask sigmoid(M) > 0.5."""
    inside = (jax.nn.sigmoid(mask_logits) > 0.5).astype(mask_features.dtype)
    pooled = jnp.einsum("rhw,hwc->rc", inside, mask_features) / (
        jnp.sum(inside, axis=(-2, -1))[:, None] + 1e-8)
    return self.pos_embed(pooled)

  def __call__(self, embeds, mask_features):
    """Touches every parameter (for `init`)."""
    rows = embeds.shape[0]
    valid = jnp.ones((rows,), bool)
    x = self.run_tracker(embeds, embeds, embeds, embeds, valid)[-1]
    pos = self.position(jnp.zeros((rows,) + mask_features.shape[:2], embeds.dtype), mask_features)
    s = self.run_slots(x + self.emergence_query(), embeds, pos, pos + self.background_slots()[:1], valid)
    return self.predict(s[-1], self.project_features(mask_features))
