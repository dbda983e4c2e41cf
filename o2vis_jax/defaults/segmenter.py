"""`config.model`: the Mask2Former segmenter (SPEC section 1)."""

import ml_collections

# Allowed values (config_validation checks them; the modules that read the fields would fail later).
DTYPES = ("float32", "bfloat16", "float64")   # float64 needs jax_enable_x64.
# The backbones: `o2vis_jax.models.backbones.names()`; `config.model.backbone` below is the ResNet's
# section; another backbone replaces it by its own (`models/backbones/<name>.py: backbone_config()`).


def get() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      num_classes=40,             # K; logits have K + 1 entries, the last is "no object".
      num_queries=100,            # N.
      hidden_dim=256,             # C.
      num_heads=8,
      dtype="float32",            # computation dtype: float32 | bfloat16 | float64 (needs jax_enable_x64).
      param_dtype="float32",
      pixel_mean=(123.675, 116.28, 103.53),
      pixel_std=(58.395, 57.12, 57.375),
      backbone=ml_collections.ConfigDict(dict(
          name="resnet",
          depth=50,               # 18 | 34 | 50 | 101, or 0: any ResNet from the four fields below.
          width=64,               # stem / first-stage width (64 = torchvision).
          stage_blocks=(0, 0, 0, 0),       # depth=0: blocks in res2..res5 (HF depths).
          stage_widths=(0, 0, 0, 0),       # depth=0: output channels of res2..res5 (HF hidden_sizes).
          bottleneck_widths=(0, 0, 0, 0),  # depth=0: inner widths of bottlenecks (0 = stage_widths / 4).
          block="auto",           # auto (the depth's) | basic | bottleneck (needed with depth=0).
          stride_in_1x1=False,    # the stride in a bottleneck's first 1x1 (MSRA; detectron2 STRIDE_IN_1X1).
          norm_eps=1e-5,          # frozen BatchNorm (or GroupNorm) eps.
          norm="frozen_bn",       # frozen_bn (reference checkpoints) | group_norm (trainable; from scratch).
          norm_groups=32,         # GroupNorm groups when norm='group_norm'.
      )),
      pixel_decoder=ml_collections.ConfigDict(dict(
          conv_dim=256,
          mask_dim=256,
          num_encoder_layers=6,
          encoder_ffn_dim=1024,
          num_heads=8,
          num_points=4,
          num_groups=32,          # GroupNorm groups.
      )),
      transformer_decoder=ml_collections.ConfigDict(dict(
          num_layers=9,
          ffn_dim=2048,
          # A 1x1 conv on each level before the decoder even when conv_dim == hidden_dim.
          enforce_input_projection=False,
      )),
  ))


def tiny(config: ml_collections.ConfigDict) -> None:
  m = config.model
  m.num_classes = 5
  m.num_queries = 8
  m.hidden_dim = 32
  m.num_heads = 4
  m.backbone.depth = 50
  m.backbone.width = 8
  m.pixel_decoder.conv_dim = 32
  m.pixel_decoder.mask_dim = 32
  m.pixel_decoder.num_encoder_layers = 2
  m.pixel_decoder.encoder_ffn_dim = 64
  m.pixel_decoder.num_heads = 4
  m.pixel_decoder.num_points = 2
  m.pixel_decoder.num_groups = 4
  m.transformer_decoder.num_layers = 3
  m.transformer_decoder.ffn_dim = 64
