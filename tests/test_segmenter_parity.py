"""The Flax segmenter against HuggingFace transformers' Mask2Former (fixture from
scripts/make_segmenter_fixtures.py: ResNet-50 layout of width 4, 4 decoder layers, float64 reference)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import segmenter_fixture
from o2vis_jax.checkpoint_conversion import segmenter_from_hf
from o2vis_jax.models import build_segmenter

OUTPUTS = ("pred_logits", "pred_masks", "pred_embds", "pred_embds_without_norm", "mask_features")


@functools.lru_cache(maxsize=None)
def converted():
  state_dict, hf_config, arrays = segmenter_fixture.load()
  model_config, params = segmenter_from_hf(state_dict, hf_config)
  return model_config, params, arrays


@functools.lru_cache(maxsize=None)
def float32_outputs():
  model_config, params, arrays = converted()
  model = build_segmenter(model_config)
  apply = jax.jit(model.apply)
  return apply, params, arrays, apply({"params": params}, jnp.asarray(arrays["images"]))


def relative_error(ours, reference):
  reference = np.asarray(reference, np.float64)
  return float(np.max(np.abs(np.asarray(ours, np.float64) - reference)) / np.max(np.abs(reference)))


def assert_matches(ours, reference, tolerance, name):
  assert ours.shape == reference.shape, f"{name}: shape {ours.shape}, reference {reference.shape}"
  error = relative_error(ours, reference)
  assert error <= tolerance, f"{name}: max |ours - HF| / max |HF| = {error:.3g} > {tolerance}"


def test_converted_config_matches_fixture():
  model_config, params, _ = converted()
  assert (model_config.num_classes, model_config.num_queries, model_config.hidden_dim) == (5, 8, 32)
  assert (model_config.backbone.depth, model_config.backbone.width) == (50, 4)
  assert model_config.transformer_decoder.num_layers == 4
  assert params["backbone"]["res4_5"]["conv3"]["kernel"].shape == (1, 1, 16, 64)


@pytest.mark.parametrize("name", OUTPUTS)
def test_float32_outputs_match_hf(name):
  _, _, arrays, outputs = float32_outputs()
  assert_matches(outputs[name], arrays[f"out/{name}"], 1e-4, name)


def test_float32_aux_outputs_match_hf():
  _, _, arrays, outputs = float32_outputs()
  aux = outputs["aux_outputs"]
  assert len(aux) == arrays["out/aux_pred_logits"].shape[0] == 4
  for i, prediction in enumerate(aux):
    assert_matches(prediction["pred_logits"], arrays["out/aux_pred_logits"][i], 1e-4, f"aux {i} logits")
    assert_matches(prediction["pred_masks"], arrays["out/aux_pred_masks"][i], 1e-4, f"aux {i} masks")


def test_float64_matches_hf_to_rounding():
  model_config, params, arrays = converted()
  config64 = model_config.copy_and_resolve_references()
  config64.dtype = config64.param_dtype = "float64"
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    outputs = jax.jit(build_segmenter(config64).apply)(
        {"params": params64}, jnp.asarray(arrays["images"], jnp.float64))
    assert outputs["pred_masks"].dtype == jnp.float64
    for name in OUTPUTS:
      assert_matches(outputs[name], arrays[f"out/{name}"], 1e-10, name)
    for i, prediction in enumerate(outputs["aux_outputs"]):
      assert_matches(prediction["pred_masks"], arrays["out/aux_pred_masks"][i], 1e-10, f"aux {i} masks")


def test_bfloat16_compute_keeps_float32_params():
  model_config, params, arrays = converted()
  config16 = model_config.copy_and_resolve_references()
  config16.dtype = "bfloat16"
  model = build_segmenter(config16)
  outputs = jax.jit(model.apply)({"params": params}, jnp.asarray(arrays["images"]))
  assert outputs["mask_features"].dtype == jnp.bfloat16
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
  # Before any masked attention (whose thresholds bfloat16 may flip), results stay close.
  assert_matches(outputs["mask_features"].astype(np.float32), arrays["out/mask_features"], 0.05,
                 "bfloat16 mask_features")
  assert_matches(outputs["aux_outputs"][0]["pred_masks"].astype(np.float32), arrays["out/aux_pred_masks"][0],
                 0.1, "bfloat16 first mask prediction")
