"""Segmenter behaviour beyond parity: shapes of the tiny config, padding handling, input checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import segmenter_fixture
from o2vis_jax.checkpoint_conversion import segmenter_from_hf
from o2vis_jax.models import build_segmenter
from o2vis_jax.models.backbones.resnet import ResNet, stage_channels


@functools.lru_cache(maxsize=None)
def model_and_params():
  state_dict, hf_config, arrays = segmenter_fixture.load()
  model_config, params = segmenter_from_hf(state_dict, hf_config)
  model = build_segmenter(model_config)
  return jax.jit(model.apply), params, arrays["images"]


def test_resnet_feature_strides_and_channels():
  for depth in (18, 50):
    model = ResNet(depth=depth, width=4)
    shapes = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0],
                            jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32))
    assert [shapes[f"res{s}"].shape for s in range(2, 6)] == [
        (1, 64 // st, 96 // st, c) for st, c in zip((4, 8, 16, 32), stage_channels(depth, 4))]


def test_all_valid_mask_equals_no_mask():
  apply, params, images = model_and_params()
  images = jnp.asarray(images)
  plain = apply({"params": params}, images)
  masked = apply({"params": params}, images, jnp.ones(images.shape[:3], bool))
  for name in ("pred_logits", "pred_masks", "pred_embds", "mask_features"):
    np.testing.assert_allclose(masked[name], plain[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_padding_content_does_not_matter_and_changes_outputs_vs_reference():
  """With a validity mask, what lies in the padding cannot change any output (padding is zero
  after normalisation, as detectron2 pads), while the valid ratios make the result differ from
  treating the padding as image content (the reference, pixel_valid=None)."""
  apply, params, images = model_and_params()
  valid = np.zeros((2, 64, 96), bool)
  valid[:, :48, :64] = True
  first = np.where(valid[..., None], images, 0.0).astype(np.float32)
  second = np.where(valid[..., None], images, 255.0 - images).astype(np.float32)
  out_first = apply({"params": params}, jnp.asarray(first), jnp.asarray(valid))
  out_second = apply({"params": params}, jnp.asarray(second), jnp.asarray(valid))
  for name in ("pred_logits", "pred_masks", "pred_embds_without_norm", "mask_features"):
    np.testing.assert_array_equal(out_first[name], out_second[name], err_msg=name)
  # Zero-after-normalisation padding fed without a mask: the same input, but padding is content.
  mean = np.array([123.675, 116.28, 103.53], np.float32)
  as_reference = np.where(valid[..., None], images, mean).astype(np.float32)
  out_reference = apply({"params": params}, jnp.asarray(as_reference))
  assert np.max(np.abs(out_reference["mask_features"] - out_first["mask_features"])) > 1e-3


def test_tiny_config_output_shapes():
  from configs import tiny
  config = tiny.get_config()
  model = build_segmenter(config)
  images = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
  outputs = jax.eval_shape(lambda x: model.init_with_output(jax.random.PRNGKey(0), x)[0], images)
  n, k, c = config.model.num_queries, config.model.num_classes, config.model.hidden_dim
  assert outputs["pred_logits"].shape == (2, n, k + 1)
  assert outputs["pred_masks"].shape == (2, n, 16, 24)
  assert outputs["pred_embds"].shape == outputs["pred_embds_without_norm"].shape == (2, n, c)
  assert outputs["mask_features"].shape == (2, 16, 24, config.model.pixel_decoder.mask_dim)
  assert len(outputs["aux_outputs"]) == config.model.transformer_decoder.num_layers


def test_input_checks_name_the_problem():
  from configs import tiny
  model = build_segmenter(tiny.get_config())
  with pytest.raises(ValueError, match="multiple of 32"):
    jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), jax.ShapeDtypeStruct((1, 60, 64, 3), jnp.float32))
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), jax.ShapeDtypeStruct((1, 64, 64, 4), jnp.float32))


def test_frozen_batch_norm_statistics_are_identifiable():
  from o2vis_jax.models.backbones.resnet import is_frozen_statistic
  _, params, _ = model_and_params()
  paths = [tuple(p.key for p in path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  frozen = [p for p in paths if is_frozen_statistic(p)]
  # ResNet-50: stem + 16 blocks x 3 + 4 shortcuts = 53 BatchNorms, each with mean and var.
  assert len(frozen) == 2 * 53
  assert all(p[0] == "backbone" for p in frozen)


def test_group_norm_backbone_normalises_and_is_refused_by_conversion():
  """backbone.norm='group_norm' (training from scratch): same module names, trainable scale/bias only,
  activations independent of the input scale (frozen BatchNorm at its initial statistics is the
  identity, so they grow with it); the reference converters and unknown norms are refused by name."""
  from configs import tiny
  from o2vis_jax.checkpoint_conversion import segmenter as seg_conversion
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 64, 64, 3))
  model = ResNet(depth=18, width=8, norm="group_norm", norm_groups=4)
  params = model.init(jax.random.PRNGKey(1), x)["params"]
  assert set(params["stem_norm1"]) == {"scale", "bias"}
  assert set(params["res3_0"]) >= {"norm1", "norm2", "shortcut_norm"}
  frozen_model = ResNet(depth=18, width=8)
  frozen_params = frozen_model.init(jax.random.PRNGKey(1), x)["params"]
  assert set(frozen_params["stem_norm1"]) == {"scale", "bias", "mean", "var"}
  small = model.apply({"params": params}, x)["res5"]
  large = model.apply({"params": params}, 1000.0 * x)["res5"]
  np.testing.assert_allclose(np.asarray(large), np.asarray(small), rtol=1e-3, atol=1e-3)
  frozen_small = frozen_model.apply({"params": frozen_params}, x)["res5"]
  frozen_large = frozen_model.apply({"params": frozen_params}, 1000.0 * x)["res5"]
  np.testing.assert_allclose(np.asarray(frozen_large), 1000.0 * np.asarray(frozen_small), rtol=1e-3,
                             atol=1e-3)
  config = tiny.get_config().model
  config.backbone.norm = "group_norm"
  with pytest.raises(ValueError, match="backbone.norm"):
    seg_conversion.conversion_rules(config, "hf")
  with pytest.raises(ValueError, match="backbone.norm"):
    ResNet(depth=18, width=8, norm="batch_norm").init(jax.random.PRNGKey(1), x)
