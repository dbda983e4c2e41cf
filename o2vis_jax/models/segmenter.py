"""The Mask2Former segmenter S (SPEC section 1): backbone -> pixel decoder -> masked decoder.

`Segmenter.apply({'params': params}, images, pixel_valid=None)` takes RGB images in 0..255
[B, H, W, 3] (H, W multiples of 32) and returns per image:
  pred_logits [B, N, K+1], pred_masks [B, N, H/4, W/4] (logits), pred_embds [B, N, C]
  (decoder-normed last queries), pred_embds_without_norm [B, N, C], mask_features [B, H/4, W/4, C],
  aux_outputs: list of {pred_logits, pred_masks} after the query init and each earlier layer.

Padding: `pixel_valid` (bool [B, H, W], True = real pixel, padding at the bottom / right) makes
padded pixels 0 after normalisation (as detectron2 pads the normalised image), gives the
deformable attention the valid ratios and zero values there, counts only valid pixels in the
sine encodings, and hides padded pixels from the decoder's cross-attention. `pixel_valid=None`
treats every pixel as real, which is what the reference does (it pads to a multiple of 32 and
ignores the padding), so it is the setting that reproduces reference outputs.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from o2vis_jax import compile_cache
from o2vis_jax.models.backbones import build_backbone
from o2vis_jax.models.layers import resolve_dtype
from o2vis_jax.models.pixel_decoder import PixelDecoder, level_valid
from o2vis_jax.models.transformer_decoder import MaskedTransformerDecoder


class Segmenter(nn.Module):
  config: ml_collections.ConfigDict      # config.model

  @nn.compact
  def __call__(self, images: jnp.ndarray, pixel_valid: Optional[jnp.ndarray] = None):
    m = self.config
    dtype = resolve_dtype(m.dtype)
    param_dtype = resolve_dtype(m.param_dtype)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"segmenter: images must be [B, H, W, 3] RGB, got shape {images.shape}")
    if images.shape[1] % 32 or images.shape[2] % 32:
      raise ValueError(f"segmenter: image size {images.shape[1:3]} must be a multiple of 32 (pad it)")
    if dtype == jnp.float64 and images.dtype != jnp.float64:
      raise ValueError("segmenter: config.model.dtype is float64 but images are "
                       f"{images.dtype}; enable jax_enable_x64 and pass float64 images")
    compute_dtype = dtype
    x = images.astype(jnp.promote_types(images.dtype, jnp.float32))
    mean = jnp.asarray(m.pixel_mean, x.dtype)
    std = jnp.asarray(m.pixel_std, x.dtype)
    x = (x - mean) / std
    if pixel_valid is not None:
      x = jnp.where(pixel_valid[..., None], x, 0)
    x = x.astype(compute_dtype)
    features = build_backbone(m.backbone, dtype=compute_dtype, param_dtype=param_dtype, name="backbone")(x)
    p = m.pixel_decoder
    mask_features, multi_scale = PixelDecoder(
        conv_dim=p.conv_dim, mask_dim=p.mask_dim, num_encoder_layers=p.num_encoder_layers,
        encoder_ffn_dim=p.encoder_ffn_dim, num_heads=p.num_heads, num_points=p.num_points,
        num_groups=p.num_groups, dtype=compute_dtype, param_dtype=param_dtype,
        name="pixel_decoder")(features, pixel_valid)
    t = m.transformer_decoder
    valid_levels = None if pixel_valid is None else [level_valid(pixel_valid, f) for f in multi_scale]
    outputs = MaskedTransformerDecoder(
        num_classes=m.num_classes, num_queries=m.num_queries, hidden_dim=m.hidden_dim,
        num_heads=m.num_heads, num_layers=t.num_layers, ffn_dim=t.ffn_dim, mask_dim=p.mask_dim,
        enforce_input_projection=t.enforce_input_projection, dtype=compute_dtype,
        param_dtype=param_dtype, name="predictor")(multi_scale, mask_features, valid_levels)
    outputs["mask_features"] = mask_features
    return outputs


def build_segmenter(config: ml_collections.ConfigDict) -> Segmenter:
  """The segmenter for `config` (the whole config of configs/base.py, or its `model` section)."""
  model_config = config.model if "model" in config else config
  return Segmenter(model_config)


SEGMENTER_APPLY = "segmenter.apply"


def _segmenter_forward(config):
  segmenter = build_segmenter(config)

  def forward(params, images, pixel_valid=None):
    return segmenter.apply({"params": params}, images, pixel_valid)
  return forward


def segmenter_apply(config: ml_collections.ConfigDict):
  """The jitted forward `(params, images, pixel_valid=None) -> outputs` of `config`'s segmenter, one per
  config value (`o2vis_jax.compile_cache`): compiled once per image shape and dtype, however often it
  is asked for (inference, benchmarks)."""
  model_config = config.model if "model" in config else config
  return compile_cache.cached_jit(SEGMENTER_APPLY, model_config, _segmenter_forward)


def segmenter_trace_count() -> int:
  """Traces (= compilations) of `segmenter_apply`'s functions so far."""
  return compile_cache.trace_count(SEGMENTER_APPLY)


def init_segmenter_params(config: ml_collections.ConfigDict, rng: jax.Array):
  """Fresh segmenter params: the modules' own initialisers (flax `init`), the one initialisation used
  for training from scratch, smoke tests and benchmarks. No parameter depends on the image size; a
  64x64 image is the smallest cheap multiple of 32. Jitted: op-by-op init is slower on a CPU."""
  images = jnp.zeros((1, 64, 64, 3), jnp.float32)
  return jax.jit(build_segmenter(config).init)(rng, images)["params"]
