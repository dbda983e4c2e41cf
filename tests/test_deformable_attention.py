"""Bilinear sampling, multi-scale deformable attention, positional encoding and resizing."""

import jax
import jax.numpy as jnp
import numpy as np

import segmenter_fixture
from o2vis_jax.models import deformable_attention as da
from o2vis_jax.models.position_encoding import sine_position_encoding
from o2vis_jax.models.resize import interpolation_matrix, resize_bilinear


def sample_one_map(value_hw, locations_xy):
  """value_hw [H, W], locations [Q, 2] normalised -> [Q] through the multi-level sampler."""
  value = jnp.asarray(value_hw, jnp.float32)[None, :, :, None, None]
  locations = jnp.asarray(locations_xy, jnp.float32)[None, :, None, None, None, :]
  return np.asarray(da.bilinear_sample([value], locations))[0, :, 0, 0, 0, 0]


def test_bilinear_sample_hand_computed():
  value = np.array([[1.0, 2.0, 3.0],
                    [4.0, 5.0, 6.0]])                      # H=2, W=3
  # (x, y) normalised; pixel centre of (row r, col c) is ((c + .5) / 3, (r + .5) / 2).
  locations = [
      ((0.5) / 3, 0.5 / 2),         # centre of pixel (0, 0) -> 1
      ((1.5) / 3, 1.5 / 2),         # centre of (1, 1) -> 5
      (1.0 / 3, 0.5 / 2),           # between (0, 0) and (0, 1) -> 1.5
      (1.0 / 3, 1.0 / 2),           # middle of 1, 2, 4, 5 -> 3
      (0.0, 0.5 / 2),               # left edge of pixel (0, 0): half of it, half a zero tap -> 0.5
      (1.0, 1.0),                   # bottom-right corner: a quarter of 6 -> 1.5
      (1.5, 0.5),                   # far outside -> 0
      (-0.2, -0.3),                 # far outside -> 0
  ]
  np.testing.assert_allclose(sample_one_map(value, locations), [1, 5, 1.5, 3, 0.5, 1.5, 0, 0], atol=1e-6)


def test_bilinear_sample_matches_torch_grid_sample():
  _, _, arrays = segmenter_fixture.load()
  value = arrays["sampler/value"]                           # [N, C, H, W]
  grid = arrays["sampler/grid"]                             # [N, Ho, Wo, 2] in [-1, 1]
  n, c, h, w = value.shape
  _, ho, wo, _ = grid.shape
  levels = [jnp.asarray(value.transpose(0, 2, 3, 1)[:, :, :, None, :], jnp.float32)]   # M=1, D=C
  locations = jnp.asarray((grid.reshape(n, ho * wo, 1, 1, 1, 2) + 1) / 2, jnp.float32)
  sampled = np.asarray(da.bilinear_sample(levels, locations))[:, :, 0, 0, 0, :]          # [N, Q, C]
  expected = arrays["sampler/out"].reshape(n, c, ho * wo).transpose(0, 2, 1)
  np.testing.assert_allclose(sampled, expected, rtol=1e-5, atol=1e-6)


def test_multi_scale_deformable_attention_matches_torch():
  _, _, arrays = segmenter_fixture.load()
  value, shapes = arrays["msda/value"], [tuple(s) for s in arrays["msda/shapes"]]
  batch, _, heads, depth = value.shape
  levels, start = [], 0
  for h, w in shapes:
    levels.append(jnp.asarray(value[:, start:start + h * w].reshape(batch, h, w, heads, depth), jnp.float32))
    start += h * w
  out = da.multi_scale_deformable_attention(levels, jnp.asarray(arrays["msda/locations"], jnp.float32),
                                            jnp.asarray(arrays["msda/weights"], jnp.float32))
  np.testing.assert_allclose(out, arrays["msda/out"], rtol=1e-5, atol=1e-6)


def test_valid_ratios_and_reference_points():
  valid = np.zeros((1, 4, 8), bool)
  valid[:, :3, :6] = True
  ratios = np.asarray(da.valid_ratios([jnp.asarray(valid)]))
  np.testing.assert_allclose(ratios, [[[6 / 8, 3 / 4]]])
  points = np.asarray(da.reference_points([(4, 8)], jnp.asarray(ratios, jnp.float32)))
  # Pixel (row 1, col 2): centre (2.5, 1.5) over the valid extent (6, 3), times the ratio -> over (8, 4).
  np.testing.assert_allclose(points[0, 1 * 8 + 2, 0], [2.5 / 8, 1.5 / 4], rtol=1e-6)


def test_padded_maps_with_validity_equal_the_unpadded_maps():
  """Deformable attention on zero-masked padded maps with valid ratios = the same on the crops."""
  module = da.MSDeformAttn(num_heads=2, num_levels=2, num_points=3)
  channels = 8
  crop_shapes, pad_shapes = [(4, 6), (2, 3)], [(6, 8), (3, 4)]
  rng = np.random.default_rng(0)
  padded_maps = [rng.normal(size=(1, h, w, channels)).astype(np.float32) for h, w in pad_shapes]
  valid_maps = [np.zeros((1, h, w), bool) for h, w in pad_shapes]
  for valid, (h, w) in zip(valid_maps, crop_shapes):
    valid[:, :h, :w] = True
  cropped_maps = [m[:, :h, :w] for m, (h, w) in zip(padded_maps, crop_shapes)]
  flatten = lambda maps: jnp.concatenate([jnp.asarray(m.reshape(1, -1, channels)) for m in maps], axis=1)
  padded, cropped = flatten(padded_maps), flatten(cropped_maps)
  valid_flat = jnp.concatenate([jnp.asarray(v.reshape(1, -1)) for v in valid_maps], axis=1)
  ref_padded = da.reference_points(pad_shapes, da.valid_ratios([jnp.asarray(v) for v in valid_maps]))
  ref_cropped = da.reference_points(crop_shapes, jnp.ones((1, 2, 2)))
  params = jax.jit(lambda q, r: module.init(jax.random.PRNGKey(0), q, r, q, crop_shapes))(cropped, ref_cropped)
  # Make the offsets large so that many taps land in the padding / outside.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x * 20 if "sampling_offsets" in jax.tree_util.keystr(p) else x, params)
  out_cropped = jax.jit(lambda p, q, r: module.apply(p, q, r, q, crop_shapes))(params, cropped, ref_cropped)
  out_padded = jax.jit(lambda p, q, r, v: module.apply(p, q, r, q, pad_shapes, v))(
      params, padded, ref_padded, valid_flat)
  valid_index = np.flatnonzero(np.asarray(valid_flat[0]))
  np.testing.assert_allclose(out_padded[0, valid_index], out_cropped[0], rtol=1e-4, atol=1e-5)


def test_sine_encoding_hand_computed_and_padding_aware():
  pos = np.asarray(sine_position_encoding(1, 2, 4, num_pos_feats=4))
  scale = 2 * np.pi
  y, x = 2 / (2 + 1e-6) * scale, 3 / (4 + 1e-6) * scale       # pixel (1, 2)
  dims = 10000.0 ** (2 * (np.arange(4) // 2) / 4)
  expected_y = [np.sin(y / dims[0]), np.cos(y / dims[1]), np.sin(y / dims[2]), np.cos(y / dims[3])]
  expected_x = [np.sin(x / dims[0]), np.cos(x / dims[1]), np.sin(x / dims[2]), np.cos(x / dims[3])]
  np.testing.assert_allclose(pos[0, 1, 2], expected_y + expected_x, rtol=1e-5, atol=1e-5)
  valid = np.zeros((1, 5, 7), bool)
  valid[:, :2, :4] = True
  padded = np.asarray(sine_position_encoding(1, 5, 7, 4, jnp.asarray(valid)))
  np.testing.assert_allclose(padded[0, :2, :4], pos[0], rtol=1e-6)


def test_resize_matches_pytorch_weights():
  # Upsampling 2 -> 4: PyTorch weights (align_corners=False) with the clamp at the left edge.
  np.testing.assert_allclose(interpolation_matrix(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
  # Downsampling 4 -> 2 samples between pixel pairs, no anti-aliasing.
  np.testing.assert_allclose(interpolation_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
  x = jnp.arange(12.0).reshape(1, 3, 4)
  np.testing.assert_allclose(resize_bilinear(x, 3, 4, 1, 2), x)
