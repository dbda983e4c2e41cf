"""ResNet backbone (torchvision layout, as detectron2's Mask2Former R50), frozen BatchNorm.

Stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool. Stages res2..res5 of basic or bottleneck blocks; the
stride of a stage's first block (1 in res2, 2 after) is in its 3x3 conv (torchvision, "v1.5"; detectron2
`STRIDE_IN_1X1=False`, transformers `downsample_in_bottleneck=False`) or, with `stride_in_1x1`, in its
first 1x1 (MSRA weights), and a block whose shape changes (channels or stride) gets a 1x1 projection
shortcut with BN (transformers' rule; detectron2's `in != out` is the same for every valid network).
Returns res2..res5 at strides 4, 8, 16, 32.

Any ResNet: `depth` 18 / 34 / 50 / 101 names a preset (blocks per stage `STAGE_BLOCKS`, stem width
`width`, stage widths width * 2^i, x4 at the output of a bottleneck); `depth=0` takes the shape from
`stage_blocks`, `stage_widths` (output channels of res2..res5: transformers `hidden_sizes`, detectron2
`RES2_OUT_CHANNELS` doubled), `bottleneck_widths` (the 1x1 -> 3x3 width; default stage_widths / 4 as in
transformers' `reduction=4`; detectron2 `NUM_GROUPS * WIDTH_PER_GROUP` doubled) and `block`.
`resnet_layout` resolves either into one `ResNetLayout`, which the module and the weight import both read.

Frozen BatchNorm: y = (x - mean) / sqrt(var + eps) * scale + bias with the running statistics
stored as *parameters* (`mean`, `var` next to `scale`, `bias`) so one params tree holds a whole
checkpoint; a trainer that fine-tunes the backbone must mask them out of the optimizer.

`norm='group_norm'` replaces every frozen BatchNorm by a trainable GroupNorm (`norm_groups` groups) at
the same place and name: for training a backbone from scratch (the synthetic demo), where frozen
BatchNorm at its initial statistics is the identity and the residual stages would run un-normalised.
Reference checkpoints are always `frozen_bn`.
"""

import dataclasses
from typing import Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("frozen_bn", "group_norm")
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
DEPTHS = (0,) + tuple(sorted(STAGE_BLOCKS))   # 0 = custom (stage_blocks / stage_widths / block).
BLOCK_TYPES = ("auto", "basic", "bottleneck")  # auto = the preset's (bottleneck from depth 50).


def is_bottleneck(depth: int) -> bool:
  return depth >= 50


class BlockSpec(NamedTuple):
  """One residual block: params name res{stage + 2}_{index}."""
  stage: int
  index: int
  in_features: int
  inner_features: int      # the 1x1 -> 3x3 width of a bottleneck; = out_features for a basic block.
  out_features: int
  stride: int
  has_shortcut: bool       # a 1x1 projection + BN where the shape changes.


@dataclasses.dataclass(frozen=True)
class ResNetLayout:
  stage_blocks: Tuple[int, ...]
  stem_width: int
  stage_widths: Tuple[int, ...]
  inner_widths: Tuple[int, ...]
  bottleneck: bool
  stride_in_1x1: bool = False

  def blocks(self) -> Iterator[BlockSpec]:
    in_features = self.stem_width
    for stage, count in enumerate(self.stage_blocks):
      out = self.stage_widths[stage]
      for index in range(count):
        stride = 2 if (index == 0 and stage > 0) else 1
        yield BlockSpec(stage, index, in_features, self.inner_widths[stage], out, stride,
                        stride != 1 or in_features != out)
        in_features = out


def _given(values) -> Tuple[int, ...]:
  """A per-stage field: () or all zeros = not given."""
  values = tuple(int(v) for v in (values or ()))
  return () if not any(values) else values


def resnet_layout(depth: int = 50, width: int = 64, stage_blocks: Sequence[int] = (),
                  stage_widths: Sequence[int] = (), bottleneck_widths: Sequence[int] = (),
                  block: str = "auto", stride_in_1x1: bool = False,
                  where: str = "config.model.backbone") -> ResNetLayout:
  """The network's shape from a preset `depth` (with stem `width`) or, for depth=0, the per-stage fields.
  Raises ValueError naming the field."""
  blocks, widths, inner = _given(stage_blocks), _given(stage_widths), _given(bottleneck_widths)
  if block not in BLOCK_TYPES:
    raise ValueError(f"{where}.block must be one of {BLOCK_TYPES}, got {block!r}")
  if width < 1:
    raise ValueError(f"{where}.width={width} must be >= 1")
  if depth:
    if depth not in STAGE_BLOCKS:
      raise ValueError(f"{where}.depth must be one of {DEPTHS}, got {depth}")
    for name, value in (("stage_blocks", blocks), ("stage_widths", widths), ("bottleneck_widths", inner)):
      if value:
        raise ValueError(f"{where}.{name}={value} is only read with {where}.depth=0 (a custom ResNet); "
                         f"depth={depth} is the preset")
    bottleneck = is_bottleneck(depth)
    if block != "auto" and (block == "bottleneck") != bottleneck:
      raise ValueError(f"{where}.block={block!r} contradicts depth={depth}")
    return ResNetLayout(STAGE_BLOCKS[depth], width, stage_channels(depth, width),
                        tuple(width * 2 ** i for i in range(4)), bottleneck, bool(stride_in_1x1))
  if block == "auto":
    raise ValueError(f"{where}.block must be 'basic' or 'bottleneck' for a custom ResNet (depth=0)")
  for name, value in (("stage_blocks", blocks), ("stage_widths", widths)):
    if len(value) != 4 or min(value) < 1:
      raise ValueError(f"{where}.{name}={value or tuple(stage_blocks)} must be 4 positive numbers "
                       "(res2..res5) for a custom ResNet (depth=0)")
  bottleneck = block == "bottleneck"
  if not bottleneck and inner:
    raise ValueError(f"{where}.bottleneck_widths={inner}: basic blocks have no bottleneck")
  if bottleneck and not inner:
    if any(w % 4 for w in widths):
      raise ValueError(f"{where}.stage_widths={widths} must be multiples of 4 (the bottleneck width is "
                       "a quarter), or give bottleneck_widths")
    inner = tuple(w // 4 for w in widths)
  if len(inner or widths) != 4 or min(inner or widths) < 1:
    raise ValueError(f"{where}.bottleneck_widths={inner} must be 4 positive numbers")
  return ResNetLayout(blocks, width, widths, inner if bottleneck else widths, bottleneck, bool(stride_in_1x1))


def layout_from_config(backbone_config, where: str = "config.model.backbone") -> ResNetLayout:
  """`resnet_layout` of a `config.model.backbone` section (fields missing in older configs: defaults)."""
  b = backbone_config
  return resnet_layout(b.get("depth", 50), b.get("width", 64), b.get("stage_blocks", ()),
                       b.get("stage_widths", ()), b.get("bottleneck_widths", ()), b.get("block", "auto"),
                       b.get("stride_in_1x1", False), where)


class FrozenBatchNorm(nn.Module):
  """BatchNorm with fixed statistics (detectron2 `FrozenBatchNorm2d`)."""
  epsilon: float = 1e-5
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
    mean = self.param("mean", nn.initializers.zeros, (features,), self.param_dtype)
    var = self.param("var", nn.initializers.ones, (features,), self.param_dtype)
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    shift = bias - mean * multiplier
    dtype = self.dtype or x.dtype
    return x * multiplier.astype(dtype) + shift.astype(dtype)


def _norm(kind, groups, eps, dtype, param_dtype, name):
  if kind == "frozen_bn":
    return FrozenBatchNorm(eps, dtype, param_dtype, name=name)
  if kind == "group_norm":
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)
  raise ValueError(f"config.model.backbone.norm: {kind!r} is not one of {NORMS}")


def _conv(features, kernel, stride, name, dtype, param_dtype):
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 use_bias=False, dtype=dtype, param_dtype=param_dtype, name=name)


class ResNetBlock(nn.Module):
  """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 to `features`) residual block; the stride sits in the
  3x3 (or, with `stride_in_1x1`, in the first 1x1 of a bottleneck)."""
  width: int                   # inner width (bottleneck); a basic block's convs have `features`.
  stride: int
  bottleneck: bool
  features: int = 0            # output channels; 0 = the preset's (4 * width bottleneck, width basic).
  stride_in_1x1: bool = False
  norm_eps: float = 1e-5
  norm: str = "frozen_bn"
  norm_groups: int = 32
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, s, n: _conv(f, k, s, n, self.dtype, self.param_dtype)
    norm = lambda n: _norm(self.norm, self.norm_groups, self.norm_eps, self.dtype, self.param_dtype, n)
    out_features = self.features or (self.width * 4 if self.bottleneck else self.width)
    if self.bottleneck:
      stride_1x1, stride_3x3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
      y = nn.relu(norm("norm1")(conv(self.width, 1, stride_1x1, "conv1")(x)))
      y = nn.relu(norm("norm2")(conv(self.width, 3, stride_3x3, "conv2")(y)))
      y = norm("norm3")(conv(out_features, 1, 1, "conv3")(y))
    else:
      y = nn.relu(norm("norm1")(conv(out_features, 3, self.stride, "conv1")(x)))
      y = norm("norm2")(conv(out_features, 3, 1, "conv2")(y))
    if self.stride != 1 or x.shape[-1] != out_features:
      x = norm("shortcut_norm")(conv(out_features, 1, self.stride, "shortcut")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet-{18,34,50,101} (`depth`; `width` is the stem width, 64 = standard) or, with depth=0, any
  ResNet from the per-stage fields (module docstring, `resnet_layout`)."""
  depth: int = 50
  width: int = 64
  stage_blocks: Tuple[int, ...] = ()
  stage_widths: Tuple[int, ...] = ()
  bottleneck_widths: Tuple[int, ...] = ()
  block: str = "auto"
  stride_in_1x1: bool = False
  norm_eps: float = 1e-5
  norm: str = "frozen_bn"      # frozen_bn (reference checkpoints) | group_norm (training from scratch).
  norm_groups: int = 32
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  def layout(self) -> ResNetLayout:
    return resnet_layout(self.depth, self.width, self.stage_blocks, self.stage_widths,
                         self.bottleneck_widths, self.block, self.stride_in_1x1)

  @nn.compact
  def __call__(self, x) -> Dict[str, jnp.ndarray]:
    """x: [B, H, W, 3] normalised image -> {'res2'..'res5': [B, H/s, W/s, C_s]}."""
    layout = self.layout()
    x = _conv(layout.stem_width, 7, 2, "stem_conv1", self.dtype, self.param_dtype)(x)
    x = nn.relu(_norm(self.norm, self.norm_groups, self.norm_eps, self.dtype, self.param_dtype,
                      "stem_norm1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = {}
    for spec in layout.blocks():
      x = ResNetBlock(width=spec.inner_features, stride=spec.stride, bottleneck=layout.bottleneck,
                      features=spec.out_features, stride_in_1x1=layout.stride_in_1x1,
                      norm_eps=self.norm_eps, norm=self.norm, norm_groups=self.norm_groups,
                      dtype=self.dtype, param_dtype=self.param_dtype,
                      name=f"res{spec.stage + 2}_{spec.index}")(x)
      features[f"res{spec.stage + 2}"] = x
    return features


def check_config(backbone_config, where: str = "config.model.backbone") -> None:
  layout_from_config(backbone_config, where)


def backbone_config(**overrides):
  """`config.model.backbone` of a ResNet (the library default, R50) with `overrides`."""
  from o2vis_jax.defaults import segmenter as segmenter_defaults
  config = segmenter_defaults.get().backbone
  config.update(overrides)
  return config


def from_config(backbone_config, dtype=None, param_dtype=jnp.float32, name: Optional[str] = None) -> ResNet:
  """The ResNet of a `config.model.backbone` section (name='resnet')."""
  b = backbone_config
  layout_from_config(b)   # fails here, naming the field, rather than inside flax
  return ResNet(depth=b.get("depth", 50), width=b.get("width", 64),
                stage_blocks=tuple(b.get("stage_blocks", ())), stage_widths=tuple(b.get("stage_widths", ())),
                bottleneck_widths=tuple(b.get("bottleneck_widths", ())), block=b.get("block", "auto"),
                stride_in_1x1=b.get("stride_in_1x1", False), norm_eps=b.get("norm_eps", 1e-5),
                norm=b.get("norm", "frozen_bn"), norm_groups=b.get("norm_groups", 32),
                dtype=dtype, param_dtype=param_dtype, name=name)


def is_frozen_statistic(path: Sequence[str]) -> bool:
  """True for the running statistics of a FrozenBatchNorm (a params path as key names): never trained."""
  return len(path) >= 2 and path[-1] in ("mean", "var") and "norm" in path[-2]


def stage_channels(depth: int, width: int) -> Sequence[int]:
  """Channels of res2..res5."""
  factor = 4 if is_bottleneck(depth) else 1
  return tuple(width * 2 ** i * factor for i in range(4))
