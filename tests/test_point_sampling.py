"""point_sample against a NumPy bilinear loop and PyTorch's grid_sample (numbers recorded by
scripts/make_torch_fixtures.py); PointRend uncertainty sampling against a NumPy top-k over the documented
random draws."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from o2vis_jax.losses import point_sampling

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "torch_references.npz")


def numpy_point_sample(values, coords):
  """grid_sample(bilinear, zeros, align_corners=False) on [0, 1] coords, one point at a time.
  values [M, h, w]; coords [M, P, 2] -> [M, P]."""
  m, h, w = values.shape
  out = np.zeros(coords.shape[:2])
  for i in range(m):
    for p, (cx, cy) in enumerate(coords[i]):
      x, y = cx * w - 0.5, cy * h - 0.5
      x0, y0 = int(np.floor(x)), int(np.floor(y))
      total = 0.0
      for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
        for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
          if 0 <= xi < w and 0 <= yi < h:
            total += wx * wy * values[i, yi, xi]
      out[i, p] = total
  return out


def test_point_sample_matches_numpy_and_torch_grid_sample():
  # Points inside, on the border half-pixel band and outside [0, 1] (zero padding); the PyTorch
  # grid_sample output was recorded by scripts/make_torch_fixtures.py.
  fixture = np.load(FIXTURE)
  values, coords = fixture["point_sample/values"], fixture["point_sample/coords"]
  got = np.asarray(point_sampling.point_sample(jnp.asarray(values), jnp.asarray(coords)))
  want = numpy_point_sample(values.astype(np.float64), coords.astype(np.float64))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[:, 2], values[:, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(got, fixture["point_sample/out"], rtol=1e-5, atol=1e-5)


def test_shared_points_and_resolution_independence():
  rng = np.random.default_rng(1)
  values = rng.normal(size=(2, 4, 6)).astype(np.float32)
  coords = rng.uniform(0, 1, size=(9, 2)).astype(np.float32)
  shared = point_sampling.point_sample(jnp.asarray(values), jnp.asarray(coords))
  per_map = point_sampling.point_sample(jnp.asarray(values), jnp.broadcast_to(coords, (2, 9, 2)))
  np.testing.assert_allclose(np.asarray(shared), np.asarray(per_map), rtol=1e-6)
  # A boolean mask and its 4x nearest upsampling agree at pixel centres of the coarse grid's interior
  # blocks (normalised coordinates address the same image region at any resolution).
  mask = rng.uniform(size=(1, 4, 4)) > 0.5
  fine = np.repeat(np.repeat(mask, 4, axis=1), 4, axis=2)
  centres = np.array([[(2 * i + 1) / 8, (2 * j + 1) / 8] for i in range(4) for j in range(4)], np.float32)
  coarse_vals = point_sampling.point_sample(jnp.asarray(mask), jnp.asarray(centres))
  fine_vals = point_sampling.point_sample(jnp.asarray(fine), jnp.asarray(centres))
  np.testing.assert_allclose(np.asarray(coarse_vals), np.asarray(fine_vals), atol=1e-6)
  np.testing.assert_allclose(np.asarray(coarse_vals)[0], mask[0].T.reshape(-1).astype(float), atol=1e-6)


def test_uncertain_points_keep_the_most_uncertain_then_uniform():
  rng = np.random.default_rng(2)
  logits = rng.normal(scale=3.0, size=(3, 6, 5)).astype(np.float32)
  key = jax.random.PRNGKey(7)
  num_points = 8   # oversample 3 -> 24 candidates, keep int(0.75 * 8) = 6, then 2 uniform.
  got = np.asarray(point_sampling.uncertain_point_coords(key, jnp.asarray(logits), num_points, 3.0, 0.75))
  assert got.shape == (3, 8, 2)
  oversample_key, random_key = jax.random.split(key)
  candidates = np.asarray(jax.random.uniform(oversample_key, (3, 24, 2)))
  uncertainty = -np.abs(numpy_point_sample(logits.astype(np.float64), candidates.astype(np.float64)))
  for i in range(3):
    top = np.argsort(-uncertainty[i], kind="stable")[:6]
    np.testing.assert_allclose(np.sort(got[i, :6], axis=0), np.sort(candidates[i, top], axis=0), rtol=1e-6)
  np.testing.assert_allclose(got[:, 6:], np.asarray(jax.random.uniform(random_key, (3, 2, 2))), rtol=1e-6)
  # The default 12544-point configuration keeps 9408 uncertain points out of 37632.
  big = point_sampling.uncertain_point_coords(key, jnp.asarray(logits[:1]), 12544)
  assert big.shape == (1, 12544, 2)
  assert float(jnp.min(big)) >= 0.0 and float(jnp.max(big)) <= 1.0


def test_point_sample_gradient_is_the_bilinear_weights():
  values = jnp.zeros((1, 3, 3))
  coords = jnp.asarray([[[0.5, 0.5], [0.25, 0.4]]])
  grad = jax.grad(lambda v: jnp.sum(point_sampling.point_sample(v, coords)))(values)
  want = np.zeros((3, 3))
  want[1, 1] += 1.0   # the centre pixel centre.
  x, y = 0.25 * 3 - 0.5, 0.4 * 3 - 0.5   # 0.25, 0.7 -> neighbours (0..1, 0..1).
  want[0, 0] += (1 - x) * (1 - y)
  want[0, 1] += x * (1 - y)
  want[1, 0] += (1 - x) * y
  want[1, 1] += x * y
  np.testing.assert_allclose(np.asarray(grad[0]), want, rtol=1e-5, atol=1e-6)
