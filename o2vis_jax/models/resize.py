"""Bilinear resizing with PyTorch's `interpolate(mode='bilinear', align_corners=False)` semantics.

Separable: each spatial axis is resized by a fixed [out, in] interpolation matrix built from the
static shapes, so the resize is two small matmuls (no gathers) and gives exactly PyTorch's weights,
including its clamping of negative source coordinates and no anti-aliasing when downsampling
(`jax.image.resize` anti-aliases by default, which the reference does not).
"""

import functools

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float64 weights of 1-D linear interpolation, half-pixel centres."""
  scale = in_size / out_size
  source = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  source = np.maximum(source, 0.0)              # PyTorch clamps negative coordinates to 0.
  lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  upper = np.minimum(lower + 1, in_size - 1)
  frac = source - lower
  matrix = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lower), 1.0 - frac)
  np.add.at(matrix, (rows, upper), frac)
  return matrix


def resize_bilinear(x, out_height: int, out_width: int, height_axis: int = -2, width_axis: int = -1):
  """Resizes axes (height_axis, width_axis) of `x` to (out_height, out_width)."""
  height_axis %= x.ndim
  width_axis %= x.ndim
  rows = jnp.asarray(interpolation_matrix(x.shape[height_axis], out_height), x.dtype)
  cols = jnp.asarray(interpolation_matrix(x.shape[width_axis], out_width), x.dtype)
  x = jnp.moveaxis(jnp.tensordot(x, rows, axes=[[height_axis], [1]]), -1, height_axis)
  x = jnp.moveaxis(jnp.tensordot(x, cols, axes=[[width_axis], [1]]), -1, width_axis)
  return x
