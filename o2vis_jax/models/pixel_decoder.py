"""Mask2Former's multi-scale deformable-attention pixel decoder (SPEC section 1).

res3..res5 are projected to C channels (1x1 conv + GroupNorm), flattened from the lowest resolution
(stride 32) to the highest (stride 8) and refined by post-norm encoder layers
  x = LN(x + MSDeformAttn(x + pos, reference, x));  x = LN(x + W2 relu(W1 x))
where pos = sine encoding + learned level embedding. An FPN step then adds the bilinearly upsampled
stride-8 map to a lateral projection of res2 (3x3 conv + GN + ReLU after the sum), and
`mask_features` is a 1x1 conv of that stride-4 map.
"""

from typing import Dict, Optional

import flax.linen as nn
import jax.numpy as jnp

from o2vis_jax.models import deformable_attention
from o2vis_jax.models.layers import layer_norm
from o2vis_jax.models.position_encoding import sine_position_encoding
from o2vis_jax.models.resize import resize_bilinear

# Reference behaviour: 3 levels for the encoder (res3..res5) and one FPN level (res2).
ENCODER_FEATURES = ("res5", "res4", "res3")


def level_valid(pixel_valid: Optional[jnp.ndarray], feature: jnp.ndarray) -> Optional[jnp.ndarray]:
  """Validity of a feature map's pixels: nearest-neighbour subsampling of the pixel mask."""
  if pixel_valid is None:
    return None
  stride_h = pixel_valid.shape[1] // feature.shape[1]
  stride_w = pixel_valid.shape[2] // feature.shape[2]
  return pixel_valid[:, ::stride_h, ::stride_w][:, :feature.shape[1], :feature.shape[2]]


class EncoderLayer(nn.Module):
  """One post-norm deformable self-attention layer (names as the PyTorch layer)."""
  num_heads: int
  num_levels: int
  num_points: int
  ffn_dim: int
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pos, reference, spatial_shapes, valid_flat):
    dense = lambda f, n: nn.Dense(f, dtype=self.dtype, param_dtype=self.param_dtype, name=n)
    attended = deformable_attention.MSDeformAttn(
        self.num_heads, self.num_levels, self.num_points, dtype=self.dtype,
        param_dtype=self.param_dtype, name="self_attn")(x + pos, reference, x, spatial_shapes, valid_flat)
    x = layer_norm("norm1", self.dtype, self.param_dtype)(x + attended)
    y = dense(x.shape[-1], "linear2")(nn.relu(dense(self.ffn_dim, "linear1")(x)))
    return layer_norm("norm2", self.dtype, self.param_dtype)(x + y)


class PixelDecoder(nn.Module):
  """`MSDeformAttnPixelDecoder`. Returns (mask_features [B, H/4, W/4, mask_dim],
  multi-scale features [strides 32, 16, 8], each [B, h, w, conv_dim])."""
  conv_dim: int = 256
  mask_dim: int = 256
  num_encoder_layers: int = 6
  encoder_ffn_dim: int = 1024
  num_heads: int = 8
  num_points: int = 4
  num_groups: int = 32
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  def _group_norm(self, name):
    return nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, use_fast_variance=False, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=name)

  def _conv(self, features, kernel, name, use_bias=True):
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                   dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, features: Dict[str, jnp.ndarray], pixel_valid: Optional[jnp.ndarray] = None):
    levels = len(ENCODER_FEATURES)
    level_embed = self.param("level_embed", nn.initializers.normal(1.0), (levels, self.conv_dim),
                             self.param_dtype)
    batch = features["res2"].shape[0]
    sources, positions, valid_levels, spatial_shapes = [], [], [], []
    for level, name in enumerate(ENCODER_FEATURES):
      feature = features[name]
      height, width = feature.shape[1:3]
      valid = level_valid(pixel_valid, feature)
      source = self._group_norm(f"input_proj_{level}_norm")(
          self._conv(self.conv_dim, 1, f"input_proj_{level}")(feature))
      dtype = source.dtype
      # Encodings in at least float32 (bfloat16 cannot count pixels), then cast.
      pos = sine_position_encoding(batch, height, width, self.conv_dim // 2, valid,
                                   dtype=jnp.promote_types(dtype, jnp.float32)).astype(dtype)
      sources.append(source.reshape(batch, height * width, self.conv_dim))
      positions.append(pos.reshape(batch, height * width, self.conv_dim) + level_embed[level].astype(dtype))
      valid_levels.append(jnp.ones((batch, height, width), bool) if valid is None else valid)
      spatial_shapes.append((height, width))
    x = jnp.concatenate(sources, axis=1)
    pos = jnp.concatenate(positions, axis=1)
    ratio_dtype = jnp.promote_types(x.dtype, jnp.float32)
    ratios = deformable_attention.valid_ratios(valid_levels, ratio_dtype)
    reference = deformable_attention.reference_points(spatial_shapes, ratios)
    valid_flat = None if pixel_valid is None else jnp.concatenate(
        [v.reshape(batch, -1) for v in valid_levels], axis=1)
    for i in range(self.num_encoder_layers):
      x = EncoderLayer(self.num_heads, levels, self.num_points, self.encoder_ffn_dim, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"encoder_layers_{i}")(
                           x, pos, reference, spatial_shapes, valid_flat)
    multi_scale, start = [], 0
    for height, width in spatial_shapes:
      multi_scale.append(x[:, start:start + height * width].reshape(batch, height, width, -1))
      start += height * width
    # FPN step on res2 (stride 4).
    lateral = self._group_norm("adapter_1_norm")(
        self._conv(self.conv_dim, 1, "adapter_1", use_bias=False)(features["res2"]))
    upsampled = resize_bilinear(multi_scale[-1], lateral.shape[1], lateral.shape[2], 1, 2)
    fpn = nn.relu(self._group_norm("layer_1_norm")(
        self._conv(self.conv_dim, 3, "layer_1", use_bias=False)(lateral + upsampled.astype(lateral.dtype))))
    mask_features = self._conv(self.mask_dim, 1, "mask_features")(fpn)
    return mask_features, multi_scale
