"""The offline temporal refiner of LOMM / DVIS++ (`TemporalRefiner`; the contract is
shared/reference/refiner.md, the authors' module is `lomm/refiner.py`).

X [T, N, C] starts as the online tracker's aligned slot embeddings; each of the L layers, post-norm:
  1. long temporal self-attention: per slot, the T frames attend to each other (no mask, no position);
  2. short temporal conv per slot along T: Conv1d k5 -> ReLU -> Conv1d k3, full C->C, bias, 'same' length
     with REPLICATE padding (PyTorch `padding_mode='replicate'`), residual, LayerNorm;
  3. object self-attention per frame over the N slots;
  4. cross-attention per frame to that frame's segmenter queries (keys = values, un-normed, no position);
  5. FFN.
Heads on D = decoder_norm(X_l): video-level class logits class_embed(sum_t softmax_T(activation_proj(D)) D)
[N, K+1], and mask embeddings mask_embed(D) [T, N, mask_dim] (masks = their dot product with the frame's
mask features).

Step 1 has two exact implementations (`attention_block`): None = softmax attention over all T at once
(memory ~ N * heads * T^2), or an int B = blockwise attention (`blockwise_attention`): T is cut into blocks
of B frames, every query block scans the key blocks keeping a running max / sum / weighted value (the
online softmax), one query block at a time, so the attention's memory is N * heads * B * B. Both agree
to round-off. Steps 1-2 treat each slot on its own and steps 3-5 each frame on its own: `run_layers` runs
them `slot_chunk` slots / `frame_chunk` frames at a time, so with the three set the refiner's memory is
the per-frame queries (T x N x C) plus one chunk's intermediates.

Submodule names follow the PyTorch module paths (`transformer_time_self_attention_layers.i.self_attn` ->
`transformer_time_self_attention_layers_i/self_attn/{q,k,v,out}_proj`, `conv_short_aggregate_layers.i.0`
-> `conv_short_aggregate_layers_i_0`, ...), so weight import (`checkpoint_conversion/refiner.py`) is a table.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from o2vis_jax.models.layers import MLP, FFNLayer, SelfAttentionLayer, layer_norm
from o2vis_jax.models.tracker import ReferringCrossAttention

Dtype = Any


def _softmax_dtype(dtype):
  """Softmax statistics in at least float32 (as `layers.MultiHeadAttention`), float64 under x64."""
  return jnp.promote_types(dtype, jnp.float32)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, block: int) -> jax.Array:
  """softmax(q k^T) v over axis -3 (the sequence), computed in blocks of `block` positions.

  q, k, v: [..., T, H, D] (q already scaled). Returns [..., T, H, D], equal to the plain softmax attention
  up to round-off. Queries and keys are padded to a multiple of `block`; padded keys are masked out (the
  last key block always holds >= 1 real key, so every running max is finite), padded queries are dropped.
  The query blocks are taken one at a time (`lax.map`); for each, `lax.scan` runs over the key blocks with
  carry (running max m, running sum l, running sum of exp(logit - m) v): the online softmax. The live
  memory is one [..., H, block, block] logits tile instead of [..., H, T, T]. The scan body is
  rematerialised under autodiff (`jax.checkpoint`), so the backward pass stores only the carries, not
  every tile's logits.
  """
  length = q.shape[-3]
  num_blocks = -(-length // block)
  padded = num_blocks * block
  pad = [(0, 0)] * (q.ndim - 3) + [(0, padded - length), (0, 0), (0, 0)]
  q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
  lead = q.shape[:-3]
  heads, head_dim = q.shape[-2:]
  stats_dtype = _softmax_dtype(q.dtype)
  # Blocks first (the mapped / scanned axis): [num_blocks, ..., block, H, D].
  to_blocks = lambda x: jnp.moveaxis(x.reshape(lead + (num_blocks, block, heads, head_dim)), -4, 0)
  query_blocks, key_blocks, value_blocks = to_blocks(q), to_blocks(k), to_blocks(v)
  key_valid = (jnp.arange(padded) < length).reshape(num_blocks, block)

  def attend(query_block):
    @jax.checkpoint
    def step(carry, inputs):
      running_max, running_sum, weighted = carry  # [..., H, B], [..., H, B], [..., B, H, D]
      key_block, value_block, valid = inputs
      logits = jnp.einsum("...qhd,...khd->...hqk", query_block, key_block).astype(stats_dtype)
      logits = jnp.where(valid, logits, -jnp.inf)
      new_max = jnp.maximum(running_max, logits.max(-1))
      correction = jnp.exp(running_max - new_max)
      probs = jnp.exp(logits - new_max[..., None])
      running_sum = running_sum * correction + probs.sum(-1)
      block_values = jnp.einsum("...hqk,...khd->...qhd", probs.astype(v.dtype), value_block)
      weighted = weighted * jnp.swapaxes(correction, -1, -2)[..., None] + block_values.astype(stats_dtype)
      return (new_max, running_sum, weighted), None

    init = (jnp.full(lead + (heads, block), -jnp.inf, stats_dtype),
            jnp.zeros(lead + (heads, block), stats_dtype),
            jnp.zeros(lead + (block, heads, head_dim), stats_dtype))   # accumulated in >= float32
    (_, running_sum, weighted), _ = jax.lax.scan(step, init, (key_blocks, value_blocks, key_valid))
    return (weighted / jnp.swapaxes(running_sum, -1, -2)[..., None]).astype(v.dtype)

  out = jax.lax.map(attend, query_blocks)                              # [num_blocks, ..., B, H, D]
  out = jnp.moveaxis(out, 0, -4).reshape(lead + (padded, heads, head_dim))
  return out[..., :length, :, :]


class BlockwiseSelfAttention(nn.Module):
  """`layers.MultiHeadAttention` for self-attention (q = k = v = x [..., T, C]) with the softmax computed
  by `blockwise_attention`; the same parameters ({q,k,v,out}_proj)."""
  num_heads: int
  block: int
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    if channels % self.num_heads:
      raise ValueError(f"channels {channels} not divisible by num_heads {self.num_heads}")
    head_dim = channels // self.num_heads
    dense = lambda name: nn.Dense(channels, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    split = lambda y: y.reshape(y.shape[:-1] + (self.num_heads, head_dim))
    q, k, v = (split(dense(f"{p}_proj")(x)) for p in "qkv")
    q = q / jnp.sqrt(jnp.asarray(head_dim, q.dtype))
    out = blockwise_attention(q, k, v, self.block)
    return dense("out_proj")(out.reshape(out.shape[:-2] + (channels,)))


class BlockwiseSelfAttentionLayer(nn.Module):
  """`layers.SelfAttentionLayer` (LN(x + MHA(x, x, x))) with blockwise attention; the same parameters."""
  num_heads: int
  block: int
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    attended = BlockwiseSelfAttention(self.num_heads, self.block, self.dtype, self.param_dtype,
                                      name="self_attn")(x)
    return layer_norm("norm", self.dtype, self.param_dtype)(x + attended)


def replicate_pad(x: jax.Array, kernel_size: int) -> jax.Array:
  """'same' padding of an odd kernel along axis -2 by repeating the edge rows (PyTorch 'replicate')."""
  half = kernel_size // 2
  return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(half, half), (0, 0)], mode="edge")


class TemporalRefiner(nn.Module):
  """The refiner. Call `layer_outputs` and `heads` (or `__call__`, which touches every parameter)."""
  hidden_dim: int
  num_classes: int
  num_layers: int = 6
  num_heads: int = 8
  ffn_dim: int = 2048
  mask_dim: Optional[int] = None    # None = hidden_dim (the reference: mask_dim = HIDDEN_DIM).
  attention_block: Optional[int] = None
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = self.hidden_dim
    layers = lambda make: [make(i) for i in range(self.num_layers)]
    if self.attention_block is None:
      time_attention = lambda i: SelfAttentionLayer(self.num_heads, **kw)
    else:
      if int(self.attention_block) < 1:
        raise ValueError(f"attention_block must be None or a positive int, got {self.attention_block!r}")
      time_attention = lambda i: BlockwiseSelfAttentionLayer(self.num_heads, int(self.attention_block), **kw)
    # A dict per layer, keys = the PyTorch nn.Sequential indices (1 is the ReLU): Flax names its
    # members `conv_short_aggregate_layers_{i}_0` and `conv_short_aggregate_layers_{i}_2`.
    self.transformer_time_self_attention_layers = layers(time_attention)
    self.conv_short_aggregate_layers = layers(lambda i: {
        "0": nn.Conv(c, (5,), padding="VALID", **kw), "2": nn.Conv(c, (3,), padding="VALID", **kw)})
    self.conv_norms = layers(lambda i: nn.LayerNorm(epsilon=1e-5, **kw))
    self.transformer_obj_self_attention_layers = layers(lambda i: SelfAttentionLayer(self.num_heads, **kw))
    self.transformer_cross_attention_layers = layers(lambda i: ReferringCrossAttention(self.num_heads, **kw))
    self.transformer_ffn_layers = layers(lambda i: FFNLayer(self.ffn_dim, **kw))
    self.decoder_norm = nn.LayerNorm(epsilon=1e-5, **kw)  # PyTorch's eps.
    self.class_embed = nn.Dense(self.num_classes + 1, **kw)
    self.mask_embed = MLP(c, self.mask_dim or c, 3, **kw)
    self.activation_proj = nn.Dense(1, **kw)

  def temporal_block(self, x: jax.Array, layer: int) -> jax.Array:
    """Steps 1-2 of layer `layer` on x [T, N, C]: per slot, long temporal self-attention and the short
    temporal conv (both mix frames, so they see the whole video)."""
    per_slot = jnp.swapaxes(x, 0, 1)                                     # [N, T, C]
    per_slot = self.transformer_time_self_attention_layers[layer](per_slot)
    conv = self.conv_short_aggregate_layers[layer]
    short = conv["2"](replicate_pad(nn.relu(conv["0"](replicate_pad(per_slot, 5))), 3))
    per_slot = self.conv_norms[layer](per_slot + short)
    return jnp.swapaxes(per_slot, 0, 1)                                  # [T, N, C]

  def frame_block(self, x: jax.Array, frame_embeds: jax.Array, layer: int) -> jax.Array:
    """Steps 3-5 of layer `layer`: each frame on its own (object self-attention over the N slots,
    cross-attention to that frame's segmenter queries, FFN); x [t, N, C], frame_embeds [t, N_seg, C] for
    any number t of frames, so a long video can run them chunk by chunk (`run_layers`)."""
    x = self.transformer_obj_self_attention_layers[layer](x)
    x = self.transformer_cross_attention_layers[layer](x, x, frame_embeds)
    return self.transformer_ffn_layers[layer](x)

  def layer_outputs(self, instance_embeds: jax.Array, frame_embeds: jax.Array) -> jax.Array:
    """X_0 .. X_{L-1} [L, T, N, C] from instance_embeds [T, N, C] and frame_embeds [T, N_seg, C], every
    frame at once (`run_layers` is the same with the per-frame steps in chunks)."""
    x = instance_embeds
    outputs = []
    for i in range(self.num_layers):
      x = self.frame_block(self.temporal_block(x, i), frame_embeds, i)
      outputs.append(x)
    return jnp.stack(outputs)

  def heads(self, x: jax.Array):
    """(video-level class logits [..., N, K+1], mask embeddings [..., T, N, mask_dim]) of x [..., T, N, C]."""
    normed = self.decoder_norm(x)
    activation = self.activation_proj(normed)                             # [..., T, N, 1]
    weights = jax.nn.softmax(activation.astype(_softmax_dtype(activation.dtype)), axis=-3)
    pooled = (normed * weights.astype(normed.dtype)).sum(-3)              # [..., N, C]
    return self.class_embed(pooled), self.mask_embed(normed)

  def __call__(self, instance_embeds, frame_embeds, mask_features):
    """Every layer's (logits [L, N, K+1], masks [L, T, N, h, w]); touches every parameter (for `init`)."""
    logits, mask_embeddings = self.heads(self.layer_outputs(instance_embeds, frame_embeds))
    return logits, masks_from_embeddings(mask_embeddings, mask_features)


def masks_from_embeddings(mask_embeddings: jax.Array, mask_features: jax.Array) -> jax.Array:
  """Mask logits [..., t, N, h, w] = mask_embeddings [..., t, N, C] . mask_features [t, h, w, C]."""
  return jnp.einsum("...tnc,thwc->...tnhw", mask_embeddings, mask_features.astype(mask_embeddings.dtype))


def map_chunks(fn, chunk: int, *arrays: jax.Array) -> jax.Array:
  """fn(*arrays) for arrays [T, ...] whose rows (frames, or slots) are independent, computed `chunk` rows
  at a time (`lax.map`), so the intermediates of fn hold chunk rows, not T. T is padded to a multiple of
  chunk with zero rows, whose results are dropped."""
  length = arrays[0].shape[0]
  if chunk >= length:
    return fn(*arrays)
  num_chunks = -(-length // chunk)
  padded = [jnp.pad(a, [(0, num_chunks * chunk - length)] + [(0, 0)] * (a.ndim - 1)) for a in arrays]
  chunked = [a.reshape((num_chunks, chunk) + a.shape[1:]) for a in padded]
  out = jax.lax.map(lambda xs: fn(*xs), chunked)
  return out.reshape((num_chunks * chunk,) + out.shape[2:])[:length]


def run_layers(model: TemporalRefiner, params, instance_embeds: jax.Array, frame_embeds: jax.Array, *,
               frame_chunk: Optional[int] = None, slot_chunk: Optional[int] = None,
               last_only: bool = False) -> jax.Array:
  """`model.layer_outputs` as a function of params, with the per-frame steps (object self-attention,
  cross-attention, FFN: e.g. the FFN's T x N x ffn_dim activations) run `frame_chunk` frames at a time
  and the temporal steps (per slot, over all T frames) `slot_chunk` slots at a time (None = all at
  once); the same numbers. With `attention_block` set as well, what is live besides the T x N x C
  queries is one chunk's intermediates. Returns [L, T, N, C], or [1, T, N, C] (the last layer) with
  last_only."""
  variables = {"params": params}
  temporal = lambda x, i: model.apply(variables, x, i, method=TemporalRefiner.temporal_block)
  per_frame = lambda x, f, i: model.apply(variables, x, f, i, method=TemporalRefiner.frame_block)
  x = instance_embeds
  outputs = []
  for i in range(model.num_layers):
    if slot_chunk is None:
      x = temporal(x, i)
    else:   # slots first for the map, back to frames first
      per_slot = lambda xs, i=i: jnp.swapaxes(temporal(jnp.swapaxes(xs, 0, 1), i), 0, 1)
      x = jnp.swapaxes(map_chunks(per_slot, int(slot_chunk), jnp.swapaxes(x, 0, 1)), 0, 1)
    if frame_chunk is None:
      x = per_frame(x, frame_embeds, i)
    else:
      x = map_chunks(lambda xs, fs, i=i: per_frame(xs, fs, i), int(frame_chunk), x, frame_embeds)
    if not last_only or i == model.num_layers - 1:
      outputs.append(x)
  return jnp.stack(outputs)
