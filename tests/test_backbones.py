"""ResNet of any shape and Swin v1 against transformers' ResNetBackbone / SwinBackbone and Mask2Former's
D2SwinTransformer, and whole segmenters (Swin, custom ResNet) against transformers' Mask2Former.
Fixture: tests/fixtures/backbones_reference.npz from scripts/make_backbone_fixtures.py (float64 references
at sizes that are not multiples of the window, the patch or 32)."""

import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import segmenter_fixture
from o2vis_jax import config_validation, defaults
from o2vis_jax.checkpoint_conversion import ConversionError, resnet_swin, segmenter_from_detectron2, segmenter_from_hf
from o2vis_jax.models import build_segmenter
from o2vis_jax.models.backbones import build_backbone, resnet, swin

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "backbones_reference.npz")
SIZES = ("32x32", "38x54", "20x68")
BACKBONE_CASES = ("hf_resnet_bottleneck", "hf_resnet_basic", "hf_resnet_stride_1x1", "hf_swin", "d2_swin",
                  "d2_swin_ape")


@functools.lru_cache(maxsize=None)
def fixture():
  with np.load(FIXTURE) as archive:
    return {k: archive[k] for k in archive.files}


def state(case):
  prefix = f"{case}/state/"
  return {k[len(prefix):]: v for k, v in fixture().items() if k.startswith(prefix)}


def config_of(case):
  return json.loads(bytes(fixture()[f"{case}/config"]))


def relative_error(ours, reference):
  reference = np.asarray(reference, np.float64)
  return float(np.max(np.abs(np.asarray(ours, np.float64) - reference)) / np.max(np.abs(reference)))


def convert_backbone(case, dtype):
  if case.startswith("hf_"):
    return resnet_swin.backbone_from_hf(state(case), config_of(case), dtype=dtype)
  return resnet_swin.resnet_swin_from_detectron2(state(case), prefix="", dtype=dtype)


@pytest.mark.parametrize("case", BACKBONE_CASES)
def test_backbone_float64_matches_reference_per_stage(case):
  with jax.enable_x64(True):
    config, params = convert_backbone(case, np.float64)
    apply = jax.jit(build_backbone(config, dtype=jnp.float64, param_dtype=jnp.float64).apply)
    # 32x32 (whole windows at res2) for the two plain Swins; every case at the two ragged sizes.
    for size in SIZES if case in ("hf_swin", "d2_swin") else SIZES[1:]:
      outputs = apply({"params": params}, jnp.asarray(fixture()[f"{case}/{size}/input"]))
      for level in range(2, 6):
        reference = fixture()[f"{case}/{size}/res{level}"]
        ours = outputs[f"res{level}"]
        assert ours.shape == reference.shape, f"{case} {size} res{level}: {ours.shape} vs {reference.shape}"
        error = relative_error(ours, reference)
        assert error < 1e-10, f"{case} {size} res{level}: max |ours - ref| / max |ref| = {error:.3g}"


@pytest.mark.parametrize("case", ["hf_resnet_bottleneck", "d2_swin"])
def test_backbone_float32_within_1e_4(case):
  config, params = convert_backbone(case, np.float32)
  size = "38x54"
  outputs = jax.jit(build_backbone(config).apply)(
      {"params": params}, jnp.asarray(fixture()[f"{case}/{size}/input"], jnp.float32))
  for level in range(2, 6):
    error = relative_error(outputs[f"res{level}"], fixture()[f"{case}/{size}/res{level}"])
    assert error < 1e-4, f"{case} res{level}: float32 relative error {error:.3g}"


def test_converted_backbone_configs():
  config, _ = convert_backbone("hf_resnet_bottleneck", np.float32)
  assert (config.depth, config.width, config.block) == (0, 16, "bottleneck")
  assert tuple(config.stage_blocks) == (1, 2, 1, 1) and tuple(config.stage_widths) == (32, 64, 96, 128)
  config, _ = convert_backbone("hf_resnet_stride_1x1", np.float32)
  assert config.stride_in_1x1
  config, params = convert_backbone("hf_resnet_basic", np.float32)
  assert config.block == "basic" and "shortcut" not in params["res2_0"]   # stem 8 -> res2 8: identity
  config, params = convert_backbone("d2_swin", np.float32)
  assert (config.name, config.embed_dim, tuple(config.depths), tuple(config.num_heads), config.window_size,
          config.patch_size, config.mlp_ratio) == ("swin", 8, (2, 1, 3, 2), (1, 2, 2, 4), 4, 4, 4.0)
  assert params["layers_2"]["blocks_1"]["attn"]["relative_position_bias_table"].shape == (49, 2)
  assert "downsample" not in params["layers_3"]
  config, params = convert_backbone("d2_swin_ape", np.float32)
  assert config.ape and config.pretrain_image_size == 32 and params["absolute_pos_embed"].shape == (8, 8, 8)
  config, _ = convert_backbone("hf_swin", np.float32)
  assert (config.window_size, config.mlp_ratio, tuple(config.depths)) == (3, 2.0, (2, 1, 2, 1))


def test_detectron2_resnet_layout_gives_the_same_params():
  """The custom bottleneck ResNet renamed to detectron2 keys (independently of the tables)."""
  hf = state("hf_resnet_bottleneck")
  d2 = {}
  for key, value in hf.items():
    k = key.replace("embedder.embedder.convolution", "stem.conv1").replace("embedder.embedder.normalization",
                                                                          "stem.conv1.norm")
    match = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", k)
    if match:
      rest = match.group(3).replace("shortcut.convolution", "shortcut").replace("shortcut.normalization",
                                                                               "shortcut.norm")
      rest = re.sub(r"layer\.(\d)\.convolution", lambda m: f"conv{int(m.group(1)) + 1}", rest)
      rest = re.sub(r"layer\.(\d)\.normalization", lambda m: f"conv{int(m.group(1)) + 1}.norm", rest)
      k = f"res{int(match.group(1)) + 2}.{match.group(2)}.{rest}"
    d2["backbone." + k] = value
  config_hf, params_hf = convert_backbone("hf_resnet_bottleneck", np.float32)
  config_d2, params_d2 = resnet_swin.resnet_swin_from_detectron2(d2)
  assert config_d2 == config_hf
  jax.tree.map(np.testing.assert_array_equal, params_d2, params_hf)


def test_relative_position_index_buffers_are_checked():
  sd = dict(state("d2_swin"))
  key = "layers.1.blocks.0.attn.relative_position_index"
  sd[key] = sd[key][::-1].copy()
  with pytest.raises(ConversionError, match=re.escape(f"{key} is not the relative position index of a 4x4 window")):
    resnet_swin.resnet_swin_from_detectron2(sd, prefix="")
  del sd[key]                                   # absent buffers are fine: not weights
  resnet_swin.resnet_swin_from_detectron2(sd, prefix="")


def test_missing_and_unexpected_swin_keys_are_named():
  sd = dict(state("d2_swin"))
  del sd["layers.0.blocks.1.mlp.fc2.bias"]
  sd["layers.0.blocks.1.attn.extra"] = np.zeros(3, np.float32)
  with pytest.raises(ConversionError) as error:
    resnet_swin.resnet_swin_from_detectron2(sd, prefix="")
  assert "missing keys (1): ['layers.0.blocks.1.mlp.fc2.bias']" in str(error.value)
  assert "unexpected keys (1): ['layers.0.blocks.1.attn.extra']" in str(error.value)
  sd = dict(state("d2_swin"), absolute_pos_embed=np.zeros((1, 8, 56, 48), np.float32))
  with pytest.raises(ConversionError, match="absolute_pos_embed grid 56x48 is not square"):
    resnet_swin.resnet_swin_from_detectron2(sd, prefix="")


# ------------------------------------------------------------------------------- whole segmenters
@functools.lru_cache(maxsize=None)
def converted_segmenter(case):
  return segmenter_from_hf(state(case), config_of(case))


@pytest.mark.parametrize("case", ["segmenter_swin", "segmenter_resnet"])
def test_segmenter_from_hf_matches_transformers(case):
  model_config, params = converted_segmenter(case)
  assert model_config.backbone.name == ("swin" if case == "segmenter_swin" else "resnet")
  images = fixture()[f"{case}/images"]
  # float64 only: float32 is asserted per backbone (test_backbone_float32_within_1e_4) and for the
  # decoder (test_segmenter_parity.py); one whole-segmenter compile per case keeps this file fast.
  config64 = model_config.copy_and_resolve_references()
  config64.dtype = config64.param_dtype = "float64"
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    outputs = jax.jit(build_segmenter(config64).apply)({"params": params64}, jnp.asarray(images, jnp.float64))
    for name in ("pred_logits", "pred_masks"):
      error = relative_error(outputs[name], fixture()[f"{case}/out/{name}"])
      assert error < 1e-10, f"{case} {name}: float64 relative error {error:.3g}"


def _hf_swin_to_detectron2(key):
  """HF SwinBackbone key -> D2SwinTransformer key (None: fused into qkv)."""
  k = key.replace("embeddings.patch_embeddings.projection", "patch_embed.proj").replace("embeddings.norm",
                                                                                      "patch_embed.norm")
  k = re.sub(r"hidden_states_norms\.stage(\d)", lambda m: f"norm{int(m.group(1)) - 1}", k)
  k = k.replace("encoder.layers.", "layers.").replace("attention.self.", "attn.")
  k = k.replace("attention.output.dense", "attn.proj").replace("layernorm_before", "norm1")
  k = k.replace("layernorm_after", "norm2").replace("intermediate.dense", "mlp.fc1").replace("output.dense", "mlp.fc2")
  return k


def detectron2_swin_segmenter():
  """The HF Swin segmenter fixture under detectron2 key names (D2SwinTransformer: fused qkv)."""
  hf = state("segmenter_swin")
  backbone_prefix = "model.pixel_level_module.encoder."
  d2 = segmenter_fixture.hf_to_detectron2({k: v for k, v in hf.items() if not k.startswith(backbone_prefix)})
  for key, value in hf.items():
    if key.startswith(backbone_prefix):
      d2["backbone." + _hf_swin_to_detectron2(key[len(backbone_prefix):])] = value
  for name in list(d2):
    if name.endswith("attn.query.weight") or name.endswith("attn.query.bias"):
      leaf = name.rsplit(".", 1)[1]
      stem = name[:-len(f"query.{leaf}")]
      d2[f"{stem}qkv.{leaf}"] = np.concatenate([d2.pop(f"{stem}{p}.{leaf}") for p in ("query", "key", "value")])
  return d2


def test_segmenter_detectron2_swin_layout_gives_the_same_config_and_params():
  d2 = detectron2_swin_segmenter()
  config_hf, params_hf = converted_segmenter("segmenter_swin")
  config_d2, params_d2 = segmenter_from_detectron2(d2, num_heads=4, pixel_decoder_heads=4)
  config_hf = config_hf.copy_and_resolve_references()
  config_hf.backbone.pretrain_image_size = config_d2.backbone.pretrain_image_size   # not in D2 weights
  assert config_d2 == config_hf
  jax.tree.map(np.testing.assert_array_equal, params_d2, params_hf)


def test_hf_backbone_that_is_neither_resnet_nor_swin_is_named():
  hf_config = config_of("segmenter_swin")
  bad = dict(hf_config, backbone_config=dict(hf_config["backbone_config"], model_type="convnext"))
  with pytest.raises(ConversionError, match="backbone_config.model_type: 'convnext'"):
    segmenter_from_hf(state("segmenter_swin"), bad)
  bad = dict(hf_config, backbone_config=dict(hf_config["backbone_config"], use_absolute_embeddings=True))
  with pytest.raises(ConversionError, match="use_absolute_embeddings"):
    segmenter_from_hf(state("segmenter_swin"), bad)


# -------------------------------------------------------------------------------- configs, presets
def test_swin_large_preset_shapes():
  config = swin.backbone_config("large")
  shapes = resnet_swin.backbone_shapes(config)
  assert (config.window_size, config.pretrain_image_size) == (12, 384)
  assert shapes["layers_0/blocks_0/attn/relative_position_bias_table"] == (23 * 23, 6)
  assert shapes["layers_3/blocks_1/attn/relative_position_bias_table"] == (23 * 23, 48)
  assert shapes["layers_2/blocks_17/fc1/kernel"] == (768, 3072)
  assert shapes["norm3/scale"] == (1536,) and "layers_2/blocks_18/norm1/scale" not in shapes


@pytest.mark.parametrize("depth,blocks", [(18, (2, 2, 2, 2)), (34, (3, 4, 6, 3)), (50, (3, 4, 6, 3)),
                                          (101, (3, 4, 23, 3))])
def test_resnet_presets(depth, blocks):
  layout = resnet.resnet_layout(depth, 64)
  assert layout.stage_blocks == blocks
  assert layout.stage_widths == ((256, 512, 1024, 2048) if depth >= 50 else (64, 128, 256, 512))
  assert sum(b.has_shortcut for b in layout.blocks()) == (4 if depth >= 50 else 3)


@pytest.mark.parametrize("fields,message", [
    (dict(depth=0, stage_blocks=(1, 2, 1, 1), stage_widths=(32, 64, 96, 128)),
     "config.model.backbone.block must be 'basic' or 'bottleneck' for a custom ResNet"),
    (dict(depth=50, stage_blocks=(1, 2, 1, 1)), "config.model.backbone.stage_blocks=(1, 2, 1, 1) is only read with"),
    (dict(depth=0, block="bottleneck", stage_blocks=(1, 0, 1, 1), stage_widths=(32, 64, 96, 128)),
     "stage_blocks=(1, 0, 1, 1) must be 4 positive numbers"),
    (dict(depth=51), "config.model.backbone.depth must be one of (0, 18, 34, 50, 101), got 51"),
])
def test_bad_resnet_configs_are_named(fields, message):
  config = defaults.base_config()
  config.model.backbone.update(fields)
  with pytest.raises(config_validation.ConfigError, match=re.escape(message)):
    config_validation.validate(config)


def test_swin_config_validates_and_builds_the_segmenter():
  config = defaults.base_config()
  config.model.backbone = swin.backbone_config("tiny", embed_dim=8, depths=(2, 1, 2, 1), num_heads=(1, 2, 2, 4),
                                               window_size=3)
  config_validation.validate(config)
  config.model.backbone.num_heads = (3, 2, 2, 4)
  with pytest.raises(config_validation.ConfigError, match=re.escape("config.model.backbone.num_heads[0]=3 must "
                                                                    "divide the stage width")):
    config_validation.validate(config)
  config.model.backbone.num_heads = (1, 2, 2, 4)
  config.model.backbone.depth = 50
  with pytest.raises(config_validation.ConfigError, match="config.model.backbone.depth is not a config field"):
    config_validation.validate(config)


def test_swin_checkpoint_file_converts_saves_and_reloads(tmp_path):
  """A detectron2 Swin segmenter .pkl through convert_file, save_converted and load_converted (the
  config.json of a Swin backbone validates and round-trips)."""
  import pickle
  from o2vis_jax import checkpoint_conversion as cc
  path = tmp_path / "m2f_swin.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": detectron2_swin_segmenter()}, f)
  config, params = cc.convert_file(str(path), num_heads=4)
  assert config.model.backbone.name == "swin" and config.model.backbone.window_size == 3
  cc.save_converted(str(tmp_path / "out"), config, params)
  loaded_config, loaded = cc.load_converted(str(tmp_path / "out"))
  plain = lambda d: {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in d.items()}   # JSON lists
  assert plain(loaded_config.model.backbone.to_dict()) == plain(config.model.backbone.to_dict())
  np.testing.assert_array_equal(loaded["segmenter"]["backbone"]["layers_1"]["blocks_0"]["attn"]["query"]["kernel"],
                                params["segmenter"]["backbone"]["layers_1"]["blocks_0"]["attn"]["query"]["kernel"])


def test_swin_trains_its_norms_and_skips_weight_decay_on_position_bias():
  from o2vis_jax import optimizer
  _, params = convert_backbone("d2_swin", np.float32)
  params = {"backbone": params}
  decay = optimizer.weight_decay_mask(params)["backbone"]["layers_0"]["blocks_1"]
  frozen = optimizer.frozen_mask(params)["backbone"]["layers_0"]["blocks_1"]
  assert not decay["attn"]["relative_position_bias_table"] and decay["attn"]["query"]["kernel"]
  assert not decay["norm1"]["scale"] and not frozen["norm1"]["scale"] and not frozen["norm1"]["bias"]


def test_swin_remat_is_the_same_function_and_bfloat16_runs():
  config, params = convert_backbone("d2_swin", np.float32)
  images = jnp.asarray(fixture()["d2_swin/38x54/input"], jnp.float32)
  plain = jax.jit(build_backbone(config).apply)({"params": params}, images)
  config = config.copy_and_resolve_references()
  config.remat = True
  rematted = jax.jit(build_backbone(config).apply)({"params": params}, images)
  half = jax.jit(build_backbone(config, dtype=jnp.bfloat16).apply)({"params": params}, images)
  for level in range(2, 6):
    np.testing.assert_allclose(rematted[f"res{level}"], plain[f"res{level}"], rtol=1e-5, atol=1e-5)
    assert half[f"res{level}"].dtype == jnp.bfloat16
    assert relative_error(half[f"res{level}"], plain[f"res{level}"]) < 5e-2
