"""Point sampling for the mask losses and the matching costs (Mask2Former / PointRend).

Coordinates are (x, y) in [0, 1] over the whole (padded) map, so a prediction at stride 4 and a
ground-truth mask at full resolution are sampled at the same places without resizing either.

`point_sample` equals detectron2's `point_sample`, i.e. PyTorch
`grid_sample(values, 2 * coords - 1, mode='bilinear', padding_mode='zeros', align_corners=False)`:
the sample point in pixel units is (x * w - 0.5, y * h - 0.5); each of its 4 neighbours outside the
map contributes 0.
"""

import jax
import jax.numpy as jnp


def point_sample(values: jax.Array, coords: jax.Array) -> jax.Array:
  """Bilinear samples of `values` [..., h, w] at `coords` [..., P, 2] (x, y in [0, 1]) -> [..., P].

  The leading dims of `coords` broadcast against those of `values`; `coords` [P, 2] samples every
  map at the same points. Boolean maps are sampled as 0/1 floats.
  """
  if values.dtype == jnp.bool_:
    values = values.astype(jnp.float32)
  h, w = values.shape[-2:]
  coords = coords.astype(values.dtype)
  x = coords[..., 0] * w - 0.5
  y = coords[..., 1] * h - 0.5
  x0 = jnp.floor(x)
  y0 = jnp.floor(y)
  fx = x - x0
  fy = y - y0
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)
  flat = values.reshape(values.shape[:-2] + (h * w,))

  def corner(xi, yi):
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    index = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
    if index.ndim == 1:       # shared points: one plain gather for every map.
      sampled = flat[..., index]
    else:
      batch_shape = jnp.broadcast_shapes(flat.shape[:-1], index.shape[:-1])
      sampled = jnp.take_along_axis(
          jnp.broadcast_to(flat, batch_shape + flat.shape[-1:]),
          jnp.broadcast_to(index, batch_shape + index.shape[-1:]), axis=-1)
    return jnp.where(inside, sampled, 0)

  return (corner(x0, y0) * (1 - fx) * (1 - fy) + corner(x0 + 1, y0) * fx * (1 - fy)
          + corner(x0, y0 + 1) * (1 - fx) * fy + corner(x0 + 1, y0 + 1) * fx * fy)


def uniform_point_coords(key: jax.Array, shape) -> jax.Array:
  """Uniform random points [*shape, 2] in [0, 1]^2 (the matcher's points, shared by all masks)."""
  return jax.random.uniform(key, tuple(shape) + (2,), dtype=jnp.float32)


def uncertain_point_coords(key: jax.Array, mask_logits: jax.Array, num_points: int,
                           oversample_ratio: float = 3.0,
                           importance_sample_ratio: float = 0.75) -> jax.Array:
  """PointRend training points for each map of `mask_logits` [M, h, w] -> [M, num_points, 2].

  Equal to detectron2's `get_uncertain_point_coords_with_randomness` with uncertainty -|logit|
  (Mask2Former's `calculate_uncertainty`): draw int(num_points * oversample_ratio) uniform points per
  map, keep the int(importance_sample_ratio * num_points) most uncertain ones, then append uniform
  points up to num_points. Not differentiable (the reference samples under no_grad).

  Randomness: `oversample_key, random_key = jax.random.split(key)`; the oversampled points are
  `uniform(oversample_key, (M, S, 2))`, the appended ones `uniform(random_key, (M, R, 2))`.
  """
  num_maps = mask_logits.shape[0]
  num_sampled = int(num_points * oversample_ratio)
  num_uncertain = int(importance_sample_ratio * num_points)
  num_random = num_points - num_uncertain
  if num_sampled < num_uncertain:
    raise ValueError(f"point sampling: oversample_ratio {oversample_ratio} gives {num_sampled} points, "
                     f"fewer than the {num_uncertain} uncertain points to keep")
  oversample_key, random_key = jax.random.split(key)
  candidates = uniform_point_coords(oversample_key, (num_maps, num_sampled))
  logits = jax.lax.stop_gradient(mask_logits).astype(jnp.float32)
  uncertainty = -jnp.abs(point_sample(logits, candidates))
  _, top = jax.lax.top_k(uncertainty, num_uncertain)
  chosen = jnp.take_along_axis(candidates, top[..., None], axis=1)
  if num_random == 0:
    return chosen
  extra = uniform_point_coords(random_key, (num_maps, num_random))
  return jnp.concatenate([chosen, extra], axis=1)
