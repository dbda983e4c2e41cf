"""Mask2Former segmenter weights: HuggingFace transformers and detectron2 layouts -> our params.

Both layouts are read through one rule table per layout (`rules.py`): for every leaf of our params tree,
the source key and how its array is laid out. Every source key must be used (a few bookkeeping keys
excepted) and every target leaf found with the shape the model expects; otherwise the error lists the
missing, unexpected and mis-shaped keys by name. The backbone's part of the table and of the config
comes from its kind (`resnet_swin.py`: any ResNet, Swin v1).
"""

import re
from typing import Dict, Iterable, Mapping, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from o2vis_jax.checkpoint_conversion import resnet_swin
from o2vis_jax.checkpoint_conversion.errors import ConversionError  # noqa: F401  (re-exported)
from o2vis_jax.checkpoint_conversion.rules import (IGNORED, TRANSFORMS, Rule, apply_rules,  # noqa: F401
                                                   flat_shapes)
from o2vis_jax.checkpoint_conversion.rules import conv as _conv_rule
from o2vis_jax.checkpoint_conversion.rules import dense as _dense
from o2vis_jax.checkpoint_conversion.rules import fused_attention as _fused_attention
from o2vis_jax.checkpoint_conversion.rules import norm as _norm
from o2vis_jax.defaults import segmenter as segmenter_config
from o2vis_jax.models import build_segmenter

Array = np.ndarray


# ------------------------------------------------------------------------------------------- tables
def _backbone_rules(m, layout) -> Dict[str, Rule]:
  prefix = resnet_swin.HF_PREFIX if layout == "hf" else resnet_swin.D2_PREFIX
  return resnet_swin.backbone_rules(m.backbone, layout, prefix)


def _pixel_decoder_rules(m, layout) -> Dict[str, Rule]:
  rules = {}
  p = m.pixel_decoder
  hf = layout == "hf"
  root = "model.pixel_level_module.decoder" if hf else "sem_seg_head.pixel_decoder"
  ours = "pixel_decoder"
  rules[f"{ours}/level_embed"] = (f"{root}.level_embed" if hf else f"{root}.transformer.level_embed", "copy", None)
  proj = "input_projections" if hf else "input_proj"
  for level in range(3):
    _conv_rule(rules, f"{ours}/input_proj_{level}", f"{root}.{proj}.{level}.0", bias=True)
    _norm(rules, f"{ours}/input_proj_{level}_norm", f"{root}.{proj}.{level}.1")
  names = (("self_attn_layer_norm", "fc1", "fc2", "final_layer_norm") if hf else
           ("norm1", "linear1", "linear2", "norm2"))
  for i in range(p.num_encoder_layers):
    theirs = f"{root}.encoder.layers.{i}" if hf else f"{root}.transformer.encoder.layers.{i}"
    layer = f"{ours}/encoder_layers_{i}"
    for sub in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
      _dense(rules, f"{layer}/self_attn/{sub}", f"{theirs}.self_attn.{sub}")
    _norm(rules, f"{layer}/norm1", f"{theirs}.{names[0]}")
    _dense(rules, f"{layer}/linear1", f"{theirs}.{names[1]}")
    _dense(rules, f"{layer}/linear2", f"{theirs}.{names[2]}")
    _norm(rules, f"{layer}/norm2", f"{theirs}.{names[3]}")
  suffix = (".0", ".1") if hf else ("", ".norm")
  _conv_rule(rules, f"{ours}/adapter_1", f"{root}.adapter_1{suffix[0]}")
  _norm(rules, f"{ours}/adapter_1_norm", f"{root}.adapter_1{suffix[1]}")
  _conv_rule(rules, f"{ours}/layer_1", f"{root}.layer_1{suffix[0]}")
  _norm(rules, f"{ours}/layer_1_norm", f"{root}.layer_1{suffix[1]}")
  _conv_rule(rules, f"{ours}/mask_features", f"{root}.mask_projection" if hf else f"{root}.mask_features",
             bias=True)
  return rules


def _predictor_rules(m, layout, input_projection_levels: Iterable[int]) -> Dict[str, Rule]:
  rules = {}
  t = m.transformer_decoder
  ours = "predictor"
  if layout == "hf":
    root = "model.transformer_module"
    rules[f"{ours}/level_embed"] = (f"{root}.level_embed.weight", "copy", None)
    rules[f"{ours}/query_feat"] = (f"{root}.queries_features.weight", "copy", None)
    rules[f"{ours}/query_embed"] = (f"{root}.queries_embedder.weight", "copy", None)
    for level in input_projection_levels:
      _conv_rule(rules, f"{ours}/input_proj_{level}", f"{root}.input_projections.{level}", bias=True)
    for i in range(t.num_layers):
      theirs = f"{root}.decoder.layers.{i}"
      cross = f"{ours}/transformer_cross_attention_layers_{i}"
      _fused_attention(rules, f"{cross}/multihead_attn", f"{theirs}.cross_attn")
      _norm(rules, f"{cross}/norm", f"{theirs}.cross_attn_layer_norm")
      self_ = f"{ours}/transformer_self_attention_layers_{i}"
      for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        _dense(rules, f"{self_}/self_attn/{name}", f"{theirs}.self_attn.{name}")
      _norm(rules, f"{self_}/norm", f"{theirs}.self_attn_layer_norm")
      ffn = f"{ours}/transformer_ffn_layers_{i}"
      _dense(rules, f"{ffn}/linear1", f"{theirs}.fc1")
      _dense(rules, f"{ffn}/linear2", f"{theirs}.fc2")
      _norm(rules, f"{ffn}/norm", f"{theirs}.final_layer_norm")
    _norm(rules, f"{ours}/decoder_norm", f"{root}.decoder.layernorm")
    _dense(rules, f"{ours}/class_embed", "class_predictor")
    for j in range(3):
      _dense(rules, f"{ours}/mask_embed/layers_{j}", f"{root}.decoder.mask_predictor.mask_embedder.{j}.0")
  else:
    root = "sem_seg_head.predictor"
    for name in ("level_embed", "query_feat", "query_embed"):
      rules[f"{ours}/{name}"] = (f"{root}.{name}.weight", "copy", None)
    for level in input_projection_levels:
      _conv_rule(rules, f"{ours}/input_proj_{level}", f"{root}.input_proj.{level}", bias=True)
    for i in range(t.num_layers):
      cross = f"transformer_cross_attention_layers_{i}"
      _fused_attention(rules, f"{ours}/{cross}/multihead_attn", f"{root}.transformer_cross_attention_layers.{i}.multihead_attn")
      _norm(rules, f"{ours}/{cross}/norm", f"{root}.transformer_cross_attention_layers.{i}.norm")
      self_ = f"transformer_self_attention_layers_{i}"
      _fused_attention(rules, f"{ours}/{self_}/self_attn", f"{root}.transformer_self_attention_layers.{i}.self_attn")
      _norm(rules, f"{ours}/{self_}/norm", f"{root}.transformer_self_attention_layers.{i}.norm")
      ffn = f"transformer_ffn_layers_{i}"
      for name in ("linear1", "linear2"):
        _dense(rules, f"{ours}/{ffn}/{name}", f"{root}.transformer_ffn_layers.{i}.{name}")
      _norm(rules, f"{ours}/{ffn}/norm", f"{root}.transformer_ffn_layers.{i}.norm")
    _norm(rules, f"{ours}/decoder_norm", f"{root}.decoder_norm")
    _dense(rules, f"{ours}/class_embed", f"{root}.class_embed")
    for j in range(3):
      _dense(rules, f"{ours}/mask_embed/layers_{j}", f"{root}.mask_embed.layers.{j}")
  return rules


def conversion_rules(model_config: ml_collections.ConfigDict, layout: str) -> Dict[str, Rule]:
  """The full table {our params path: (source key, transform, block)} for `layout` 'hf' | 'detectron2'."""
  if layout not in ("hf", "detectron2"):
    raise ValueError(f"layout must be 'hf' or 'detectron2', got {layout!r}")
  m = model_config
  levels = [l for l in range(3) if m.pixel_decoder.conv_dim != m.hidden_dim or
            m.transformer_decoder.enforce_input_projection]
  rules = {}
  rules.update(_backbone_rules(m, layout))
  rules.update(_pixel_decoder_rules(m, layout))
  rules.update(_predictor_rules(m, layout, levels))
  return rules


# ------------------------------------------------------------------------------------------ configs
def model_config_from_hf(hf_config: Mapping) -> ml_collections.ConfigDict:
  """config.model for a transformers `Mask2FormerConfig` dict (a ResNet or Swin `backbone_config`)."""
  c = dict(hf_config)
  backbone = resnet_swin.backbone_config_from_hf(c.get("backbone_config") or {})
  if c.get("pre_norm", False):
    raise ConversionError("hf_config.pre_norm=True is not supported (Mask2Former uses post-norm)")
  m = segmenter_config.get()
  m.num_classes = len(c["id2label"]) if c.get("id2label") else int(c["num_labels"])
  m.num_queries = int(c["num_queries"])
  m.hidden_dim = int(c["hidden_dim"])
  m.num_heads = int(c["num_attention_heads"])
  m.backbone = backbone
  m.pixel_decoder.conv_dim = int(c["feature_size"])
  m.pixel_decoder.mask_dim = int(c["mask_feature_size"])
  m.pixel_decoder.num_encoder_layers = int(c["encoder_layers"])
  m.pixel_decoder.encoder_ffn_dim = int(c["encoder_feedforward_dim"])
  m.pixel_decoder.num_heads = int(c["num_attention_heads"])
  m.pixel_decoder.num_points = 4          # fixed in transformers
  m.pixel_decoder.num_groups = 32         # fixed in transformers
  m.transformer_decoder.num_layers = int(c["decoder_layers"]) - 1
  m.transformer_decoder.ffn_dim = int(c["dim_feedforward"])
  m.transformer_decoder.enforce_input_projection = bool(c.get("enforce_input_projection", False))
  return m


def _count(state_dict, pattern):
  found = {int(m.group(1)) for k in state_dict for m in [re.match(pattern, k)] if m}
  return max(found) + 1 if found else 0


def model_config_from_detectron2(state_dict: Mapping[str, Array], num_heads: int = 8,
                                 pixel_decoder_heads: int = 8, num_groups: int = 32,
                                 stride_in_1x1: bool = False, backbone_config=None) -> ml_collections.ConfigDict:
  """config.model read off the shapes of a detectron2 Mask2Former state dict (ResNet or Swin backbone).

  Head counts and GroupNorm groups are not in the weights: Mask2Former uses 8 / 8 / 32; nor is a
  ResNet's stride position (`stride_in_1x1`, detectron2 RESNETS.STRIDE_IN_1X1: False in Mask2Former).
  """
  def get(key):
    if key not in state_dict:
      raise ConversionError(f"detectron2 state dict: key {key!r} is missing (needed to read the config)")
    return np.asarray(state_dict[key])
  predictor, decoder = "sem_seg_head.predictor", "sem_seg_head.pixel_decoder"
  m = segmenter_config.get()
  m.num_classes = get(f"{predictor}.class_embed.weight").shape[0] - 1
  m.num_queries, m.hidden_dim = get(f"{predictor}.query_feat.weight").shape
  m.num_heads = num_heads
  m.backbone = (backbone_config if backbone_config is not None else   # given: a ViT-Adapter (vit_segmenter.py)
                resnet_swin.backbone_config_from_detectron2(state_dict, resnet_swin.D2_PREFIX, stride_in_1x1))
  m.pixel_decoder.conv_dim = get(f"{decoder}.transformer.level_embed").shape[1]
  m.pixel_decoder.mask_dim = get(f"{decoder}.mask_features.weight").shape[0]
  m.pixel_decoder.num_encoder_layers = _count(state_dict, rf"^{decoder}\.transformer\.encoder\.layers\.(\d+)\.")
  m.pixel_decoder.encoder_ffn_dim = get(f"{decoder}.transformer.encoder.layers.0.linear1.weight").shape[0]
  m.pixel_decoder.num_heads = pixel_decoder_heads
  m.pixel_decoder.num_points = get(f"{decoder}.transformer.encoder.layers.0.self_attn.attention_weights.weight"
                                   ).shape[0] // (pixel_decoder_heads * 3)
  m.pixel_decoder.num_groups = num_groups
  m.transformer_decoder.num_layers = _count(state_dict, rf"^{predictor}\.transformer_ffn_layers\.(\d+)\.")
  m.transformer_decoder.ffn_dim = get(f"{predictor}.transformer_ffn_layers.0.linear1.weight").shape[0]
  m.transformer_decoder.enforce_input_projection = (
      f"{predictor}.input_proj.0.weight" in state_dict and m.pixel_decoder.conv_dim == m.hidden_dim)
  return m


# ---------------------------------------------------------------------------------------- conversion
def expected_shapes(model_config: ml_collections.ConfigDict) -> Dict[str, Tuple[int, ...]]:
  """{params path: shape} of the segmenter for this config, without computing anything."""
  model = build_segmenter(model_config)
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return flat_shapes(jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)["params"])


def convert(state_dict: Mapping[str, Array], model_config: ml_collections.ConfigDict, layout: str,
            dtype=np.float32, what: str = "checkpoint") -> Dict:
  """Applies the layout's table; raises ConversionError naming every missing / unexpected /
  mis-shaped key."""
  rules = conversion_rules(model_config, layout)
  prefix = resnet_swin.HF_PREFIX if layout == "hf" else resnet_swin.D2_PREFIX
  problems = resnet_swin.check_buffers(state_dict, model_config.backbone, layout, prefix)
  return apply_rules(state_dict, rules, expected_shapes(model_config), dtype,
                     f"{what} ({layout} layout) does not fit the segmenter config", problems)


def segmenter_from_hf(state_dict: Mapping[str, Array], hf_config: Mapping,
                      dtype=np.float32) -> Tuple[ml_collections.ConfigDict, Dict]:
  """(config.model, params) from a transformers `Mask2FormerForUniversalSegmentation` state dict
  (numpy arrays by key) and its config dict."""
  model_config = model_config_from_hf(hf_config)
  return model_config, convert(state_dict, model_config, "hf", dtype, "HF Mask2Former state dict")


def segmenter_from_detectron2(state_dict: Mapping[str, Array], num_heads: int = 8,
                              pixel_decoder_heads: int = 8, num_groups: int = 32,
                              dtype=np.float32, stride_in_1x1: bool = False
                              ) -> Tuple[ml_collections.ConfigDict, Dict]:
  """(config.model, params) from a detectron2 Mask2Former / MinVIS / DVIS / LOMM state dict
  (segmenter keys only: backbone.*, sem_seg_head.*; a ResNet or D2SwinTransformer backbone). The released
  models use 8 decoder heads, 8 pixel-decoder heads and 32 GroupNorm groups, which the weights do not
  record (nor a ResNet's `stride_in_1x1`: False in Mask2Former)."""
  from o2vis_jax.checkpoint_conversion import vit_segmenter
  if vit_segmenter.has_vit_backbone(state_dict):   # backbone.vit_module.*: DVIS++ / LOMM / CAVIS / DAQ ViT-L
    return vit_segmenter.segmenter_from_detectron2(state_dict, num_heads, pixel_decoder_heads, num_groups, dtype)
  model_config = model_config_from_detectron2(state_dict, num_heads, pixel_decoder_heads, num_groups,
                                              stride_in_1x1)
  return model_config, convert(state_dict, model_config, "detectron2", dtype, "detectron2 state dict")


def detect_layout(state_dict: Mapping[str, Array]) -> str:
  """'hf' or 'detectron2' from the key names."""
  if any(k.startswith("model.pixel_level_module.") for k in state_dict):
    return "hf"
  if any(k.startswith("sem_seg_head.") for k in state_dict):
    return "detectron2"
  raise ConversionError("state dict is neither the HF layout (model.pixel_level_module.*) nor the "
                        f"detectron2 layout (sem_seg_head.*); first keys: {sorted(state_dict)[:5]}")
