"""ResNet (any shape) and Swin (v1) backbone weights: the HF and detectron2 layouts -> our params.

* `backbone_config_from_hf(hf_backbone_config)`: `config.model.backbone` of a transformers `ResNetConfig`
  / `SwinConfig` dict (a Mask2Former config's `backbone_config`).
* `backbone_config_from_detectron2(state_dict)`: read off the shapes of detectron2's `backbone.*` keys
  (ResNet: `stem.conv1`, `res2..res5`; Swin: `patch_embed`, `layers.{l}.blocks.{i}`, `norm{0..3}`).
  Swin's head counts and window come from the relative position bias tables [(2w-1)^2, heads].
* `backbone_rules(backbone_config, layout, prefix)`: the rule table {our path under 'backbone/': (key, ...)}.
* `check_buffers`: Swin's `relative_position_index` buffers must equal ours (they are not weights).
* `backbone_from_hf(state_dict, hf_backbone_config)`, `resnet_swin_from_detectron2(state_dict)`: the
  backbone alone -> (backbone_config, params).
"""

from typing import Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from o2vis_jax.checkpoint_conversion import rules as R
from o2vis_jax.checkpoint_conversion.errors import ConversionError
from o2vis_jax.models.backbones import build_backbone, resnet, swin

HF_PREFIX = "model.pixel_level_module.encoder."    # the backbone inside a HF Mask2Former
D2_PREFIX = "backbone."
KINDS = ("resnet", "swin")


# ------------------------------------------------------------------------------------------ configs
def _resnet_config(stem_width: int, blocks, widths, inner, bottleneck: bool, stride_in_1x1: bool):
  """A preset (depth 18/34/50/101) when the shape is one, else depth=0 with the per-stage fields."""
  for depth in resnet.STAGE_BLOCKS:
    preset = resnet.resnet_layout(depth, stem_width)
    if (preset.stage_blocks, preset.stage_widths, preset.bottleneck) == (tuple(blocks), tuple(widths), bottleneck) \
        and (not bottleneck or preset.inner_widths == tuple(inner)):
      return resnet.backbone_config(depth=depth, width=stem_width, stride_in_1x1=stride_in_1x1)
  inner = tuple(inner) if bottleneck and tuple(inner) != tuple(w // 4 for w in widths) else (0, 0, 0, 0)
  return resnet.backbone_config(depth=0, width=stem_width, stage_blocks=tuple(blocks), stage_widths=tuple(widths),
                                bottleneck_widths=inner, block="bottleneck" if bottleneck else "basic",
                                stride_in_1x1=stride_in_1x1)


def _check_out_features(b: Mapping, where: str):
  stages = ["stage1", "stage2", "stage3", "stage4"]
  out = b.get("out_features")
  if out is not None and list(out) != stages:
    raise ConversionError(f"{where}.out_features={out}: the segmenter reads all four stages {stages}")


def backbone_config_from_hf(b: Mapping, where: str = "hf_config.backbone_config") -> ml_collections.ConfigDict:
  """`config.model.backbone` of a transformers ResNetConfig / SwinConfig dict."""
  kind = b.get("model_type")
  if kind == "resnet":
    _check_out_features(b, where)
    if b.get("downsample_in_first_stage", False):
      raise ConversionError(f"{where}.downsample_in_first_stage=True (res2 at stride 8) is not supported")
    if b.get("hidden_act", "relu") != "relu":
      raise ConversionError(f"{where}.hidden_act={b['hidden_act']!r}: only 'relu'")
    bottleneck = b.get("layer_type", "bottleneck") == "bottleneck"
    widths = [int(w) for w in b["hidden_sizes"]]
    depths = [int(d) for d in b["depths"]]
    if len(widths) != 4 or len(depths) != 4:
      raise ConversionError(f"{where}: depths {depths} / hidden_sizes {widths} must have 4 stages")
    if bottleneck and any(w % 4 for w in widths):
      raise ConversionError(f"{where}.hidden_sizes={widths}: a bottleneck needs multiples of 4 (reduction 4)")
    return _resnet_config(int(b["embedding_size"]), depths, widths, [w // 4 for w in widths], bottleneck,
                          bool(b.get("downsample_in_bottleneck", False)))
  if kind == "swin":
    _check_out_features(b, where)
    if b.get("use_absolute_embeddings", False):
      raise ConversionError(f"{where}.use_absolute_embeddings=True is not supported (no Mask2Former Swin uses it)")
    if float(b.get("layer_norm_eps", 1e-5)) != 1e-5:
      raise ConversionError(f"{where}.layer_norm_eps={b['layer_norm_eps']}: only 1e-5 (the D2 Swin's)")
    if b.get("hidden_act", "gelu") != "gelu":
      raise ConversionError(f"{where}.hidden_act={b['hidden_act']!r}: only 'gelu'")
    if b.get("num_channels", 3) != 3:
      raise ConversionError(f"{where}.num_channels={b['num_channels']}: RGB images only")
    image_size = b.get("image_size", 224)
    config = swin.backbone_config(
        "tiny", embed_dim=int(b["embed_dim"]), depths=tuple(b["depths"]), num_heads=tuple(b["num_heads"]),
        window_size=int(b["window_size"]), patch_size=int(b.get("patch_size", 4)),
        mlp_ratio=float(b.get("mlp_ratio", 4.0)), qkv_bias=bool(b.get("qkv_bias", True)),
        pretrain_image_size=int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size))
    _checked_swin(config, where)
    return config
  raise ConversionError(f"{where}.model_type: {kind!r}; supported backbones: 'resnet', 'swin'")


def _checked_swin(config, where):
  try:
    swin.check_config(config, where)
  except ValueError as error:
    raise ConversionError(str(error)) from None


def _shape(state_dict, key, where):
  if key not in state_dict:
    raise ConversionError(f"{where}: key {key!r} is missing (needed to read the backbone's shape)")
  return tuple(np.shape(state_dict[key]))


def _count(state_dict, prefix: str) -> int:
  """How many consecutive indices {prefix}{i}. the keys hold."""
  found = {int(k[len(prefix):].split(".")[0]) for k in state_dict
           if k.startswith(prefix) and k[len(prefix):].split(".")[0].isdigit()}
  return max(found) + 1 if found else 0


def detect_kind(state_dict: Mapping, prefix: str = D2_PREFIX) -> Optional[str]:
  """'resnet' / 'swin' from detectron2 key names, None for neither."""
  if f"{prefix}patch_embed.proj.weight" in state_dict:
    return "swin"
  if f"{prefix}stem.conv1.weight" in state_dict:
    return "resnet"
  return None


def backbone_config_from_detectron2(state_dict: Mapping, prefix: str = D2_PREFIX, stride_in_1x1: bool = False,
                                    where: str = "detectron2 state dict") -> ml_collections.ConfigDict:
  """`config.model.backbone` from the shapes of detectron2's backbone keys. A ResNet's stride position is
  not in the weights: `stride_in_1x1` (detectron2 RESNETS.STRIDE_IN_1X1; False in every Mask2Former config)."""
  kind = detect_kind(state_dict, prefix)
  if kind == "resnet":
    blocks = [_count(state_dict, f"{prefix}res{s}.") for s in range(2, 6)]
    if min(blocks) < 1:
      raise ConversionError(f"{where}: ResNet stages {prefix}res2..res5 hold {blocks} blocks")
    bottleneck = f"{prefix}res2.0.conv3.weight" in state_dict
    last = "conv3" if bottleneck else "conv2"
    widths = [_shape(state_dict, f"{prefix}res{s}.0.{last}.weight", where)[0] for s in range(2, 6)]
    inner = [_shape(state_dict, f"{prefix}res{s}.0.conv1.weight", where)[0] for s in range(2, 6)]
    return _resnet_config(_shape(state_dict, f"{prefix}stem.conv1.weight", where)[0], blocks, widths, inner,
                          bottleneck, stride_in_1x1)
  if kind == "swin":
    embed_dim, _, patch, _ = _shape(state_dict, f"{prefix}patch_embed.proj.weight", where)
    ape = f"{prefix}absolute_pos_embed" in state_dict
    if ape:
      _, _, grid, grid_w = _shape(state_dict, f"{prefix}absolute_pos_embed", where)
      if grid != grid_w:
        raise ConversionError(f"{where}: {prefix}absolute_pos_embed grid {grid}x{grid_w} is not square")
    depths = [_count(state_dict, f"{prefix}layers.{l}.blocks.") for l in range(4)]
    if _count(state_dict, f"{prefix}layers.") != 4 or min(depths) < 1:
      raise ConversionError(f"{where}: Swin stages {prefix}layers.0..3 hold {depths} blocks (4 stages needed)")
    tables = [_shape(state_dict, f"{prefix}layers.{l}.blocks.0.attn.relative_position_bias_table", where)
              for l in range(4)]
    windows = {int(round((np.sqrt(rows) + 1) / 2)) for rows, _ in tables}
    window = windows.pop()
    if windows or any((2 * window - 1) ** 2 != rows for rows, _ in tables):
      raise ConversionError(f"{where}: relative_position_bias_table rows {[t[0] for t in tables]} are not "
                            "(2 * window - 1)^2 for one window")
    hidden = _shape(state_dict, f"{prefix}layers.0.blocks.0.mlp.fc1.weight", where)[0]
    config = swin.backbone_config(
        "tiny", embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(t[1] for t in tables),
        window_size=window, patch_size=patch, mlp_ratio=hidden / embed_dim,
        qkv_bias=f"{prefix}layers.0.blocks.0.attn.qkv.bias" in state_dict,
        patch_norm=f"{prefix}patch_embed.norm.weight" in state_dict,
        ape=ape,
        # The APE grid's size when there is one; else not in the weights (and unused): Mask2Former's
        # configs pair window 12 with the 384 models and window 7 with 224.
        pretrain_image_size=grid * patch if ape else (384 if window == 12 else 224))
    _checked_swin(config, where)
    return config
  raise ConversionError(f"{where}: no ResNet ({prefix}stem.conv1.weight) or Swin ({prefix}patch_embed.proj.weight) "
                        f"backbone keys; first keys: {sorted(state_dict)[:5]}")


# ------------------------------------------------------------------------------------------- tables
def _resnet_rules(b, layout: str, prefix: str, ours: str) -> Dict[str, R.Rule]:
  rules = {}
  spec = resnet.layout_from_config(b)
  hf = layout == "hf"
  stem = f"{prefix}embedder.embedder." if hf else f"{prefix}stem."
  R.conv(rules, f"{ours}stem_conv1", f"{stem}convolution" if hf else f"{stem}conv1")
  R.norm(rules, f"{ours}stem_norm1", f"{stem}normalization" if hf else f"{stem}conv1.norm", frozen_bn=True)
  convs = 3 if spec.bottleneck else 2
  for block in spec.blocks():
    target = f"{ours}res{block.stage + 2}_{block.index}"
    if hf:
      theirs = f"{prefix}encoder.stages.{block.stage}.layers.{block.index}"
      names = [(f"{theirs}.layer.{i}.convolution", f"{theirs}.layer.{i}.normalization") for i in range(convs)]
      shortcut = (f"{theirs}.shortcut.convolution", f"{theirs}.shortcut.normalization")
    else:
      theirs = f"{prefix}res{block.stage + 2}.{block.index}"
      names = [(f"{theirs}.conv{i + 1}", f"{theirs}.conv{i + 1}.norm") for i in range(convs)]
      shortcut = (f"{theirs}.shortcut", f"{theirs}.shortcut.norm")
    for i, (conv_key, norm_key) in enumerate(names):
      R.conv(rules, f"{target}/conv{i + 1}", conv_key)
      R.norm(rules, f"{target}/norm{i + 1}", norm_key, frozen_bn=True)
    if block.has_shortcut:
      R.conv(rules, f"{target}/shortcut", shortcut[0])
      R.norm(rules, f"{target}/shortcut_norm", shortcut[1], frozen_bn=True)
  return rules


def _swin_rules(b, layout: str, prefix: str, ours: str) -> Dict[str, R.Rule]:
  rules = {}
  hf = layout == "hf"
  R.conv(rules, f"{ours}patch_embed/proj",
         f"{prefix}embeddings.patch_embeddings.projection" if hf else f"{prefix}patch_embed.proj", bias=True)
  if b.patch_norm:
    R.norm(rules, f"{ours}patch_embed/norm", f"{prefix}embeddings.norm" if hf else f"{prefix}patch_embed.norm")
  if b.get("ape", False):
    if hf:
      raise ConversionError("HF Swin with use_absolute_embeddings is not supported")
    rules[f"{ours}absolute_pos_embed"] = (f"{prefix}absolute_pos_embed", "channels_last", None)
  for level, depth in enumerate(b.depths):
    stage = f"{prefix}encoder.layers.{level}" if hf else f"{prefix}layers.{level}"
    for i in range(depth):
      target, theirs = f"{ours}layers_{level}/blocks_{i}", f"{stage}.blocks.{i}"
      attn = f"{theirs}.attention.self" if hf else f"{theirs}.attn"
      rules[f"{target}/attn/relative_position_bias_table"] = (f"{attn}.relative_position_bias_table", "copy", None)
      qkv = [f"{target}/attn/{name}" for name in ("query", "key", "value")]
      if hf:
        for path, name in zip(qkv, ("query", "key", "value")):
          R.dense(rules, path, f"{attn}.{name}", bias=b.qkv_bias)
      else:
        R.fused_qkv(rules, qkv, f"{attn}.qkv.weight", f"{attn}.qkv.bias" if b.qkv_bias else None)
      R.dense(rules, f"{target}/attn/proj", f"{theirs}.attention.output.dense" if hf else f"{attn}.proj")
      R.norm(rules, f"{target}/norm1", f"{theirs}.layernorm_before" if hf else f"{theirs}.norm1")
      R.norm(rules, f"{target}/norm2", f"{theirs}.layernorm_after" if hf else f"{theirs}.norm2")
      R.dense(rules, f"{target}/fc1", f"{theirs}.intermediate.dense" if hf else f"{theirs}.mlp.fc1")
      R.dense(rules, f"{target}/fc2", f"{theirs}.output.dense" if hf else f"{theirs}.mlp.fc2")
    if level < len(b.depths) - 1:
      R.norm(rules, f"{ours}layers_{level}/downsample/norm", f"{stage}.downsample.norm")
      R.dense(rules, f"{ours}layers_{level}/downsample/reduction", f"{stage}.downsample.reduction", bias=False)
    R.norm(rules, f"{ours}norm{level}",
           f"{prefix}hidden_states_norms.stage{level + 1}" if hf else f"{prefix}norm{level}")
  return rules


_RULES = {"resnet": _resnet_rules, "swin": _swin_rules}


def backbone_rules(backbone_config, layout: str, prefix: str, ours: str = "backbone/") -> Dict[str, R.Rule]:
  """{our params path: (source key, transform, block)} of the backbone, source keys under `prefix`."""
  kind = backbone_config.get("name", "resnet")
  if kind not in _RULES:
    raise ConversionError(f"config.model.backbone.name={kind!r}: no {layout} weight table "
                          f"(tables for {tuple(_RULES)})")
  if kind == "resnet" and backbone_config.get("norm", "frozen_bn") != "frozen_bn":
    raise ValueError(f"config.model.backbone.norm={backbone_config.norm!r}: reference checkpoints have a frozen "
                     "BatchNorm backbone; convert with norm='frozen_bn'")
  return _RULES[kind](backbone_config, layout, prefix, ours)


def check_buffers(state_dict: Mapping, backbone_config, layout: str, prefix: str) -> List[str]:
  """Problems with Swin's `relative_position_index` buffers (absent is fine: they are not weights;
  present, they must be ours, else the checkpoint's attention is not the one we compute)."""
  if backbone_config.get("name") != "swin":
    return []
  expected = swin.relative_position_index(backbone_config.window_size)
  problems = []
  for level, depth in enumerate(backbone_config.depths):
    for i in range(depth):
      key = (f"{prefix}encoder.layers.{level}.blocks.{i}.attention.self.relative_position_index" if layout == "hf"
             else f"{prefix}layers.{level}.blocks.{i}.attn.relative_position_index")
      if key in state_dict and not np.array_equal(np.asarray(state_dict[key]), expected):
        problems.append(f"{key} is not the relative position index of a {backbone_config.window_size}x"
                        f"{backbone_config.window_size} window")
  return problems


# --------------------------------------------------------------------------------------- conversion
def backbone_shapes(backbone_config) -> Dict[str, Tuple[int, ...]]:
  """{params path: shape} of the backbone alone, without computing anything."""
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  model = build_backbone(backbone_config)
  return R.flat_shapes(jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)["params"])


def _convert(state_dict, backbone_config, layout, prefix, dtype, what):
  rules = backbone_rules(backbone_config, layout, prefix, ours="")
  problems = check_buffers(state_dict, backbone_config, layout, prefix)
  return backbone_config, R.apply_rules(state_dict, rules, backbone_shapes(backbone_config), dtype,
                                        f"{what} ({layout} layout) does not fit the backbone", problems)


def backbone_from_hf(state_dict: Mapping, hf_backbone_config: Mapping, prefix: str = "",
                     dtype=np.float32) -> Tuple[ml_collections.ConfigDict, Dict]:
  """(config.model.backbone, params) from a transformers ResNetBackbone / SwinBackbone state dict (keys
  `embedder.*` / `embeddings.*`, ...; `prefix` = HF_PREFIX for the backbone keys of a Mask2Former)."""
  config = backbone_config_from_hf(hf_backbone_config)
  return _convert({k: v for k, v in state_dict.items() if k.startswith(prefix)}, config, "hf", prefix, dtype,
                  "HF backbone state dict")


def resnet_swin_from_detectron2(state_dict: Mapping, prefix: str = D2_PREFIX, stride_in_1x1: bool = False,
                                dtype=np.float32) -> Tuple[ml_collections.ConfigDict, Dict]:
  """(config.model.backbone, params) from detectron2 ResNet / D2SwinTransformer keys under `prefix`
  (keys outside it are not read)."""
  state_dict = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
  config = backbone_config_from_detectron2(state_dict, prefix, stride_in_1x1)
  return _convert(state_dict, config, "detectron2", prefix, dtype, "detectron2 backbone state dict")
