"""Sine positional encoding of a feature map (DETR / Mask2Former `PositionEmbeddingSine`, normalised).

For pixel (y, x) the running counts of valid pixels up to and including it along each axis,
normalised by the axis' valid total and scaled to [0, 2 pi], are encoded with `num_pos_feats`
sines/cosines per axis at wavelengths temperature^(2 floor(i/2) / num_pos_feats); the y features
come first. Without a validity mask every pixel counts (what the reference always does).
"""

import math
from typing import Optional

import jax.numpy as jnp


def sine_position_encoding(batch_size: int, height: int, width: int, num_pos_feats: int,
                           valid: Optional[jnp.ndarray] = None, temperature: float = 10000.0,
                           dtype=jnp.float32) -> jnp.ndarray:
  """Returns [B, H, W, 2 * num_pos_feats] (y features, then x features).

  Args:
    valid: optional bool [B, H, W]; padded pixels (False) do not count, so a padded image gets the
      same encoding on its valid region as the unpadded image.
  """
  if valid is None:
    valid = jnp.ones((batch_size, height, width), bool)
  valid = valid.astype(dtype)
  y_embed = jnp.cumsum(valid, axis=1)
  x_embed = jnp.cumsum(valid, axis=2)
  eps = 1e-6
  scale = 2 * math.pi
  y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
  x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
  exponent = 2 * (jnp.arange(num_pos_feats) // 2) / num_pos_feats
  dim_t = jnp.asarray(temperature, dtype) ** exponent.astype(dtype)

  def encode(embed):
    angles = embed[..., None] / dim_t
    # Interleave sin of even features and cos of odd features, as the reference's stack+flatten.
    return jnp.stack([jnp.sin(angles[..., 0::2]), jnp.cos(angles[..., 1::2])], axis=-1).reshape(
        angles.shape[:-1] + (num_pos_feats,))

  return jnp.concatenate([encode(y_embed), encode(x_embed)], axis=-1)
