"""The ViT-Adapter backbones (models/backbones/vit_adapter.py, checkpoint_conversion/backbones.py) against
the AUTHORS' modules: tests/fixtures/vit_adapter_reference.npz, written by scripts/make_vit_adapter_fixtures.py
from LOMM's D2VitAdapterDinoV2 (DINOv2 + memory-efficient adapter) and SAMAdapter (SAM ViT + adapter with
injectors), and segment-anything's ImageEncoderViT, in float64 (D = 16, 2 heads, 2 deformable heads of 3
points, conv_inplane 8; DINOv2: 6 blocks in groups [0,1], [2], [3,4], [5], pos grid 7x7; SAM: 4 blocks,
window 4, global blocks 1 and 3, pos grid 64x64)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2vis_jax import checkpoint_conversion as cc
from o2vis_jax import config_validation, defaults, models
from o2vis_jax.checkpoint_conversion import backbones as conversion
from o2vis_jax.models import backbones
from o2vis_jax.models.backbones import vit_adapter

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "vit_adapter_reference.npz")
DINO_SIZES = ((64, 96), (96, 128))
SAM_SIZES = ((64, 96),)
POS_SIZES = ((592, 592), (480, 640), (352, 640), (736, 1024), (320, 320))


@pytest.fixture(scope="module")
def reference():
  with np.load(FIXTURE) as archive:
    return {k: archive[k] for k in archive.files}


@pytest.fixture(scope="module")
def converted(reference):
  """(backbone_config, float64 params) of each fixture backbone, converted once."""
  with jax.enable_x64(True):
    return {prefix: cc.backbone_from_detectron2(state_dict(reference, prefix), config_of(reference, prefix))
            for prefix in ("dinov2", "sam")}


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def state_dict(reference, prefix, key_prefix="backbone."):
  """The checkpoint's `backbone.*` entries as the authors store them (float64 weights; the fixture keeps
  them as float32, whose values they are)."""
  out = {}
  for k, v in reference.items():
    if k.startswith(f"{prefix}/state/"):
      out[key_prefix + k[len(f"{prefix}/state/"):]] = v.astype(np.float64) if v.dtype == np.float32 else v
  return out


def config_of(reference, prefix):
  return json.loads(reference[f"{prefix}/config"].tobytes().decode())


def nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def assert_close(actual, want, rtol, what):
  """max |actual - want| <= rtol * max |want| (relative to the array's scale)."""
  actual = np.asarray(actual, np.float64)
  assert actual.shape == want.shape, f"{what}: shape {actual.shape}, expected {want.shape}"
  error = np.max(np.abs(actual - want)) / np.max(np.abs(want))
  assert error <= rtol, f"{what}: relative error {error:.3g}, expected <= {rtol:g}"


def run_with_intermediates(config, params, images):
  """Outputs and every submodule method's outputs (flax capture_intermediates), jitted: one compilation
  (kept by the test-wide persistent cache) instead of one per primitive."""
  module = models.build_backbone(config)      # the public entry point

  def forward(params, images):
    out, state = module.apply({"params": params}, images, capture_intermediates=lambda m, name: True,
                              mutable=["intermediates"])
    return out, state["intermediates"]
  return jax.jit(forward)(params, images)


def check_backbone(reference, converted, prefix, size, rtol, cls_token):
  config, params = converted[prefix]
  key = f"{prefix}/{size[0]}x{size[1]}"
  images = jnp.asarray(nhwc(reference[f"{key}/images"]), jnp.float64)
  out, inter = run_with_intermediates(config, params, images)
  for name in ("res2", "res3", "res4", "res5"):
    assert_close(out[name], nhwc(reference[f"{key}/{name}"]), rtol, f"{key} {name}")
  if f"{key}/spm_c1" in reference:
    c1, c2, c3, c4 = inter["spm"]["__call__"][0]
    assert_close(c1, nhwc(reference[f"{key}/spm_c1"]), rtol, f"{key} spm c1")
    for name, ours in (("spm_c2", c2), ("spm_c3", c3), ("spm_c4", c4)):
      assert_close(ours.reshape(ours.shape[0], -1, ours.shape[-1]), reference[f"{key}/{name}"], rtol,
                   f"{key} {name}")
  cls, tokens = inter["vit_module"]["embed"][0]
  batch, dim = tokens.shape[0], tokens.shape[-1]
  tokens = tokens.reshape(batch, -1, dim)
  if cls_token:
    tokens = jnp.concatenate([cls, tokens], axis=1)
  assert_close(tokens, reference[f"{key}/tokens"], rtol, f"{key} patch tokens + pos-embed")
  for i, (cls, x) in enumerate(inter["vit_module"]["run_blocks"]):
    x = x.reshape(batch, -1, dim)
    if cls_token:
      x = jnp.concatenate([cls, x], axis=1)
    assert_close(x, reference[f"{key}/interaction{i}/x"], rtol, f"{key} interaction {i} ViT tokens")
    c = inter[f"interactions_{i}"]["extract"][0]
    assert_close(c, reference[f"{key}/interaction{i}/c"], rtol, f"{key} interaction {i} adapter queries")


@pytest.mark.parametrize("size", DINO_SIZES)
def test_dinov2_adapter_matches_authors_module(x64, reference, converted, size):
  check_backbone(reference, converted, "dinov2", size, 1e-6, cls_token=True)


@pytest.mark.parametrize("size", SAM_SIZES)
def test_sam_adapter_matches_authors_module(x64, reference, converted, size):
  check_backbone(reference, converted, "sam", size, 1e-6, cls_token=False)


@pytest.mark.parametrize("prefix", ["dinov2"])
def test_float32_within_1e4_of_the_float64_reference(reference, converted, prefix):
  """The issue's criterion: float32 weights and images within 1e-4 (relative) of the authors' float64."""
  config, params = converted[prefix]
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
  key = f"{prefix}/96x128"
  out = jax.jit(models.build_backbone(config).apply)({"params": params},
                                                     jnp.asarray(nhwc(reference[f"{key}/images"])))
  for name in ("res2", "res3", "res4", "res5"):
    assert out[name].dtype == jnp.float32
    assert_close(out[name], nhwc(reference[f"{key}/{name}"]), 1e-4, f"float32 {name}")


@pytest.mark.parametrize("size", POS_SIZES)
def test_pos_embed_resize_uses_pytorch_scale_factor_rule(reference, size):
  """The released 37x37 grid at full-size inputs, against DinoVisionTransformer.interpolate_pos_encoding
  (float32 both sides); the size rule would be off by O(1)."""
  grid = reference["posembed/grid"]
  want = reference[f"posembed/{size[0]}x{size[1]}"]
  h, w = size[0] // 16, size[1] // 16
  ours = vit_adapter.resize_pos_embed(jnp.asarray(grid[0, 1:].reshape(37, 37, -1)), h, w)
  assert_close(ours.reshape(1, h * w, -1), want[:, 1:], 1e-5, f"pos-embed at {size}")
  np.testing.assert_array_equal(want[:, 0], grid[:, 0])  # the class row is kept


def test_dinov2_patch14_kernel_resized_to_16(reference):
  resized = conversion.resize_patch_kernel(reference["patch14/weight"], 16)
  assert_close(resized, reference["patch14/resized"], 1e-6, "14 -> 16 patch kernel")


def test_raw_dinov2_weights_load_into_the_adapter(reference):
  """vit_from_dinov2: bare DINOv2 keys with a 14x14 kernel (dead norm / mask token included) -> vit_module."""
  config, params = cc.backbone_from_detectron2(state_dict(reference, "dinov2"), config_of(reference, "dinov2"))
  raw = {k[len("backbone.vit_module."):]: v for k, v in state_dict(reference, "dinov2").items()
         if k.startswith("backbone.vit_module.")}
  raw["patch_embed.proj.weight"] = np.tile(reference["patch14/weight"][:1], (16, 1, 1, 1)).astype(np.float64)
  vit = conversion.vit_from_dinov2(raw, config)
  kernel = vit["patch_embed"]["proj"]["kernel"]
  assert kernel.shape == (16, 16, 3, 16)
  assert_close(kernel[..., 0], reference["patch14/resized"][0].transpose(1, 2, 0), 1e-6, "resized kernel")
  assert jax.tree_util.tree_structure(vit) == jax.tree_util.tree_structure(params["vit_module"])


def test_sam_image_encoder_with_neck_matches_segment_anything(x64, reference):
  sd = state_dict(reference, "sam_encoder", key_prefix="image_encoder.")
  sd["mask_decoder.iou_token.weight"] = np.zeros((1, 8))       # other SAM parts are ignored
  config, params = conversion.sam_encoder_from_sam(sd)
  assert (config.window_size, tuple(config.global_attn_indexes), config.num_heads) == (3, (1,), 2)
  out = jax.jit(vit_adapter.SamImageEncoder(config, config.out_chans).apply)(
      {"params": params}, jnp.asarray(nhwc(reference["sam_encoder/images"]), jnp.float64))
  assert_close(out, nhwc(reference["sam_encoder/out"]), 1e-9, "SAM image encoder")


def test_conversion_ignores_dead_and_counter_entries_and_reads_sizes(reference):
  sd = state_dict(reference, "dinov2")
  assert "backbone.vit_module.mask_token" in sd and "backbone.norm1.num_batches_tracked" in sd
  sd["sem_seg_head.predictor.query_feat.weight"] = np.zeros((4, 16))    # a whole checkpoint: other parts skipped
  config, params = cc.backbone_from_detectron2(sd, config_of(reference, "dinov2"))
  assert (config.name, config.vit, config.embed_dim, config.depth, config.n_points, config.pretrain_size) == (
      "vit_adapter", "dinov2", 16, 6, 3, 112)
  assert config.interaction_indexes == ((0, 1), (2, 2), (3, 4), (5, 5))
  assert "norm" not in params["vit_module"] and "mask_token" not in params["vit_module"]
  # SAM: heads and windows from the rel-pos tables; the dead neck dropped.
  config, params = cc.backbone_from_detectron2(state_dict(reference, "sam"), config_of(reference, "sam"))
  assert (config.vit, config.window_size, config.global_attn_indexes) == ("sam", 4, (1, 3))
  assert "neck_0" not in params["vit_module"] and "injector" in params["interactions_0"]
  config_validation.validate(_with_backbone(config))


def _with_backbone(backbone_config):
  config = defaults.base_config()
  config.model.backbone = backbone_config
  return config


def test_conversion_errors_name_the_keys_and_fields(reference):
  sd = state_dict(reference, "dinov2")
  config = config_of(reference, "dinov2")
  broken = dict(sd)
  del broken["backbone.up.bias"]
  broken["backbone.interactions.0.extractor.ffn_norm.weight"] = np.zeros(5)
  broken["backbone.something.new"] = np.zeros(2)
  with pytest.raises(cc.ConversionError) as error:
    cc.backbone_from_detectron2(broken, config)
  message = str(error.value)
  assert "up/bias" in message and "interactions.0.extractor.ffn_norm.weight" in message
  assert "something.new" in message
  # Tiny sizes match no preset: the head counts must come from the config.
  del config["get_adapter_args"]["deform_num_heads"]
  with pytest.raises(cc.ConversionError, match="get_adapter_args.deform_num_heads"):
    cc.backbone_from_detectron2(sd, config)
  with pytest.raises(cc.ConversionError, match="no ViT-Adapter"):
    cc.backbone_from_detectron2({"backbone.res2.0.conv1.weight": np.zeros((1, 1, 1, 1))}, None)


def test_released_vitl_preset_and_input_checks():
  config = vit_adapter.backbone_config("dinov2", "vitl")
  assert (config.embed_dim, config.depth, config.num_heads, config.pretrain_size, config.conv_inplane) == (
      1024, 24, 16, 592, 64)
  assert config.interaction_indexes == ((0, 5), (6, 11), (12, 17), (18, 23))
  sam = vit_adapter.backbone_config("sam", "vith")
  assert (sam.embed_dim, sam.depth, sam.global_attn_indexes, sam.window_size) == (1280, 32, (7, 15, 23, 31), 14)
  config_validation.validate(_with_backbone(config))
  bad = vit_adapter.backbone_config("dinov2", "vitl", interaction_indexes=((0, 30),))
  with pytest.raises(config_validation.ConfigError, match="interaction_indexes"):
    config_validation.validate(_with_backbone(bad))
  tiny = vit_adapter.backbone_config("dinov2", "vitl", embed_dim=16, depth=1, num_heads=2, deform_num_heads=2,
                                     conv_inplane=4, interaction_indexes=((0, 0),), pretrain_size=64)
  with pytest.raises(ValueError, match="multiple of 32"):
    backbones.build_backbone(tiny).init(jax.random.PRNGKey(0), jnp.zeros((1, 48, 64, 3)))


@pytest.mark.parametrize("vit,preset", [("dinov2", "vitl")])
def test_segmenter_with_a_vit_adapter_backbone_traces_with_remat_and_bf16(vit, preset):
  """The segmenter wiring (shapes only: jax.eval_shape), with jax.checkpoint per ViT block and bf16 compute."""
  from o2vis_jax.models import build_segmenter
  config = defaults.make_tiny(defaults.base_config())
  config.model.backbone = vit_adapter.backbone_config(
      vit, preset, embed_dim=16, depth=4, num_heads=2, deform_num_heads=2, conv_inplane=4, window_size=2,
      global_attn_indexes=(1, 3) if vit == "sam" else (), interaction_indexes=((0, 0), (1, 1), (2, 2), (3, 3)),
      remat=True)
  config.model.dtype = "bfloat16"
  config_validation.validate(config)
  segmenter = build_segmenter(config)
  images = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
  params = jax.eval_shape(lambda x: segmenter.init(jax.random.PRNGKey(0), x), images)["params"]
  assert params["backbone"]["vit_module"]["blocks_0"]["attn"]["qkv"]["kernel"].dtype == jnp.float32
  out = jax.eval_shape(lambda p, x: segmenter.apply({"params": p}, x), params, images)
  assert out["pred_masks"].shape == (1, config.model.num_queries, 16, 24)
  assert out["mask_features"].dtype == jnp.bfloat16
