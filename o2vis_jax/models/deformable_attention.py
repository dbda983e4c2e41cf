"""Multi-scale deformable attention (Deformable DETR, as used by Mask2Former's pixel decoder), pure JAX.

For query q with reference point p_q (normalised [0, 1] x/y in the valid region, scaled by the
level's valid ratio), head h, level l and point k:
  location = p_q,l + offset_{q,h,l,k} / (W_l, H_l)
  out_{q,h} = sum_{l,k} softmax_{l,k}(a_{q,h}) * bilinear(value_{h,l}, location)
Bilinear sampling equals PyTorch `grid_sample(mode='bilinear', padding_mode='zeros',
align_corners=False)` on grid 2 * location - 1: pixel coordinate = location * size - 0.5 and taps
outside the map read 0. Each level is padded with a one-pixel zero border and all levels are
flattened into one table, so the 4 taps of every point of every level are one gather (in the attention,
one per chunk of queries, so that the gathered taps stay in the cache).
"""

from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Shape = Tuple[int, int]


def _padded_offsets(spatial_shapes: Sequence[Shape]):
  sizes = [(h + 2) * (w + 2) for h, w in spatial_shapes]
  return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int32)


def _taps(value_levels: Sequence[jnp.ndarray], locations: jnp.ndarray):
  """The 4 bilinear taps of every sampling point, gathered at once.

  Args:
    value_levels: L arrays [B, H_l, W_l, M, D] (M heads of D channels).
    locations: [B, Q, M, L, P, 2] normalised (x, y); (0, 0) is the top-left corner of the map.
  Returns:
    values [B, M, Q, L*P*4, D] and bilinear weights [B, M, Q, L, P, 4] (taps in the last axis).
  """
  spatial_shapes = [v.shape[1:3] for v in value_levels]
  depth = value_levels[0].shape[4]
  table = _table(value_levels)
  index, weight = _tap_indices(spatial_shapes, locations)
  b, m, q = index.shape[:3]
  # One row gather from the [B*M*S, D] table; the indices are in bounds by construction.
  index = index + (jnp.arange(b * m, dtype=index.dtype) * table.shape[2]).reshape(b, m, 1, 1, 1, 1)
  gathered = table.reshape(-1, depth).at[index.reshape(b, m, q, -1)].get(mode="promise_in_bounds")
  return gathered, weight


def _table(value_levels: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """One table per (batch, head): [B, M, S, D], S = sum of the zero-bordered level sizes."""
  batch, heads, depth = value_levels[0].shape[0], value_levels[0].shape[3], value_levels[0].shape[4]
  return jnp.concatenate([
      jnp.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0))).reshape(batch, -1, heads, depth)
      for v in value_levels], axis=1).transpose(0, 2, 1, 3)


def _tap_indices(spatial_shapes: Sequence[Shape], locations: jnp.ndarray):
  """Row indices into the zero-bordered level table of one (batch, head) and bilinear weights of the
  4 taps of every sampling point: locations [B, Q, M, L, P, 2] -> ([B, M, Q, L, P, 4] int32, weights)."""
  locations = locations.transpose(0, 2, 1, 3, 4, 5)                       # [B, M, Q, L, P, 2]
  sizes = np.array([[w, h] for h, w in spatial_shapes], np.float32)      # [L, 2] as (x, y)
  pixel = locations * jnp.asarray(sizes, locations.dtype)[:, None, :] - 0.5
  corner0 = jnp.floor(pixel)
  frac = pixel - corner0
  corner0 = corner0.astype(jnp.int32) + 1                                 # into the bordered map
  widths = jnp.asarray([w + 2 for _, w in spatial_shapes], jnp.int32)[:, None]
  heights = jnp.asarray([h + 2 for h, _ in spatial_shapes], jnp.int32)[:, None]
  offsets = jnp.asarray(_padded_offsets(spatial_shapes))[:, None]
  index_list, weight_list = [], []
  for dy in (0, 1):
    for dx in (0, 1):
      # Taps beyond the border are clamped onto it, and the border is zero.
      x = jnp.clip(corner0[..., 0] + dx, 0, widths - 1)
      y = jnp.clip(corner0[..., 1] + dy, 0, heights - 1)
      index_list.append(offsets + y * widths + x)
      wx = frac[..., 0] if dx else 1 - frac[..., 0]
      wy = frac[..., 1] if dy else 1 - frac[..., 1]
      weight_list.append(wx * wy)
  return jnp.stack(index_list, axis=-1), jnp.stack(weight_list, axis=-1)   # [B, M, Q, L, P, 4]


def bilinear_sample(value_levels: Sequence[jnp.ndarray], locations: jnp.ndarray) -> jnp.ndarray:
  """Samples every level at normalised locations with grid_sample(zeros, align_corners=False).

  value_levels: L arrays [B, H_l, W_l, M, D]; locations: [B, Q, M, L, P, 2] -> [B, Q, M, L, P, D].
  """
  gathered, weight = _taps(value_levels, locations)
  b, m, q, l, p, _ = weight.shape
  gathered = gathered.reshape(b, m, q, l, p, 4, -1)
  sampled = jnp.einsum("bmqlpc,bmqlpcd->bmqlpd", weight.astype(gathered.dtype), gathered)
  return sampled.transpose(0, 2, 1, 3, 4, 5)


def multi_scale_deformable_attention(value_levels: Sequence[jnp.ndarray], locations: jnp.ndarray,
                                     attention_weights: jnp.ndarray) -> jnp.ndarray:
  """Weighted sum of sampled values.

  Args:
    value_levels: L arrays [B, H_l, W_l, M, D]; locations [B, Q, M, L, P, 2];
    attention_weights: [B, Q, M, L, P] (already normalised over L * P).
  Returns: [B, Q, M * D].
  """
  spatial_shapes = [v.shape[1:3] for v in value_levels]
  batch, heads, depth = value_levels[0].shape[0], value_levels[0].shape[3], value_levels[0].shape[4]
  table = _table(value_levels)
  rows = table.shape[2]
  table = table.reshape(-1, depth)
  num_query = locations.shape[1]
  taps = int(np.prod(locations.shape[3:5])) * 4
  # Queries in chunks under lax.map: the gathered taps of one chunk [B, M, chunk, L*P*4, D] stay in
  # the cache (all at once they are 310 MB per encoder layer at 480x640, written to memory and read
  # back; issue 18: that gather was a third of the R50 segmenter's CPU time, chunked it is 3-10x faster).
  # The same numbers: each output element is the same contraction over the taps.
  chunk = _query_chunk(batch * heads * taps * depth * jnp.dtype(table.dtype).itemsize)
  pad = (-num_query) % chunk
  pad_queries = lambda x: jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
  split = lambda x: x.reshape((batch, -1, chunk) + x.shape[2:]).swapaxes(0, 1)
  offsets = (jnp.arange(batch * heads, dtype=jnp.int32) * rows).reshape(batch, heads, 1, 1, 1, 1)

  def one_chunk(args):
    chunk_locations, chunk_weights = args
    index, weight = _tap_indices(spatial_shapes, chunk_locations)      # [B, M, chunk, L, P, 4]
    weight = weight * chunk_weights.transpose(0, 2, 1, 3, 4)[..., None].astype(weight.dtype)
    gathered = table.at[(index + offsets).reshape(batch, heads, chunk, -1)].get(mode="promise_in_bounds")
    return jnp.einsum("bmqt,bmqtd->bqmd", weight.reshape(batch, heads, chunk, -1).astype(gathered.dtype),
                      gathered)

  out = jax.lax.map(one_chunk, (split(pad_queries(locations)), split(pad_queries(attention_weights))))
  return out.swapaxes(0, 1).reshape(batch, num_query + pad, heads * depth)[:, :num_query]


def _query_chunk(bytes_per_query: int, target_bytes: int = 1 << 20) -> int:
  """Queries per chunk: a power of two whose gathered taps take about `target_bytes` (L2-sized)."""
  chunk = max(1, target_bytes // max(1, bytes_per_query))
  return int(min(1024, max(8, 2 ** int(np.log2(chunk)))))


def valid_ratios(valid_levels: Sequence[jnp.ndarray], dtype=jnp.float32) -> jnp.ndarray:
  """[B, L, 2] (x, y) fraction of valid columns / rows of each level's validity mask.

  Counted along the first row / column, as Deformable DETR does (padding is bottom / right).
  """
  ratios = []
  for valid in valid_levels:
    height, width = valid.shape[1:]
    valid_h = jnp.sum(valid[:, :, 0], axis=1).astype(dtype) / height
    valid_w = jnp.sum(valid[:, 0, :], axis=1).astype(dtype) / width
    ratios.append(jnp.stack([valid_w, valid_h], axis=-1))
  return jnp.stack(ratios, axis=1)


def reference_points(spatial_shapes: Sequence[Shape], ratios: jnp.ndarray) -> jnp.ndarray:
  """[B, sum H_l W_l, L, 2] pixel centres normalised by the valid extent, seen from every level."""
  points = []
  for level, (height, width) in enumerate(spatial_shapes):
    ys, xs = jnp.meshgrid(jnp.arange(height, dtype=ratios.dtype) + 0.5,
                          jnp.arange(width, dtype=ratios.dtype) + 0.5, indexing="ij")
    ref_y = ys.reshape(-1)[None] / (ratios[:, None, level, 1] * height)
    ref_x = xs.reshape(-1)[None] / (ratios[:, None, level, 0] * width)
    points.append(jnp.stack([ref_x, ref_y], axis=-1))
  points = jnp.concatenate(points, axis=1)
  return points[:, :, None] * ratios[:, None]


class MSDeformAttn(nn.Module):
  """Multi-scale deformable attention; submodule names follow the PyTorch `MSDeformAttn`."""
  num_heads: int
  num_levels: int
  num_points: int
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query, reference, value_input, spatial_shapes: Sequence[Shape],
               value_valid: Optional[jnp.ndarray] = None):
    """
    Args:
      query: [B, Q, C] (input + positional encoding); reference: [B, Q, L, 2] normalised (x, y).
      value_input: [B, S, C], S = sum_l H_l W_l, levels flattened row-major in order.
      value_valid: optional bool [B, S]; padded positions contribute zero.
    Returns: [B, Q, C].
    """
    channels = query.shape[-1]
    heads, levels, points = self.num_heads, self.num_levels, self.num_points
    dense = lambda features, name: nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype,
                                            name=name)
    value = dense(channels, "value_proj")(value_input)
    if value_valid is not None:
      value = jnp.where(value_valid[..., None], value, 0)
    batch, num_query = query.shape[:2]
    offsets = dense(heads * levels * points * 2, "sampling_offsets")(query).reshape(
        batch, num_query, heads, levels, points, 2)
    weights = dense(heads * levels * points, "attention_weights")(query).reshape(
        batch, num_query, heads, levels * points)
    weights = jax.nn.softmax(weights.astype(jnp.promote_types(weights.dtype, jnp.float32)), axis=-1)
    weights = weights.reshape(batch, num_query, heads, levels, points)
    # Locations in at least float32: bfloat16 cannot address pixels of a large map.
    location_dtype = jnp.promote_types(offsets.dtype, jnp.float32)
    normaliser = jnp.asarray([[w, h] for h, w in spatial_shapes], location_dtype)
    locations = reference[:, :, None, :, None, :].astype(location_dtype) + (
        offsets.astype(location_dtype) / normaliser[None, None, None, :, None, :])
    value_levels, start = [], 0
    for height, width in spatial_shapes:
      value_levels.append(value[:, start:start + height * width].reshape(
          batch, height, width, heads, channels // heads))
      start += height * width
    out = multi_scale_deformable_attention(value_levels, locations, weights.astype(value.dtype))
    return dense(channels, "output_proj")(out)
