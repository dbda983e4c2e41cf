"""ResNet backbone (torchvision layout, as detectron2's Mask2Former R50), frozen BatchNorm.

Stem: 7x7/2 conv, BN, ReLU, 3x3/2 max-pool. Stages res2..res5 of basic (depth 18, 34) or bottleneck
(50, 101) blocks; the stride of a stage's first block is in its 3x3 conv (torchvision, "v1.5"),
and a block whose shape changes gets a 1x1 projection shortcut with BN. Returns res2..res5 at
strides 4, 8, 16, 32.

Frozen BatchNorm: y = (x - mean) / sqrt(var + eps) * scale + bias with the running statistics
stored as *parameters* (`mean`, `var` next to `scale`, `bias`) so one params tree holds a whole
checkpoint; a trainer that fine-tunes the backbone must mask them out of the optimizer.

`norm='group_norm'` replaces every frozen BatchNorm by a trainable GroupNorm (`norm_groups` groups) at
the same place and name: for training a backbone from scratch (the synthetic demo), where frozen
BatchNorm at its initial statistics is the identity and the residual stages would run un-normalised.
Reference checkpoints are always `frozen_bn`.
"""

from typing import Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("frozen_bn", "group_norm")
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def is_bottleneck(depth: int) -> bool:
  return depth >= 50


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
  """Basic (two 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 to 4x) residual block."""
  width: int                   # inner width; the output has width (basic) or 4 * width (bottleneck).
  stride: int
  bottleneck: bool
  norm_eps: float = 1e-5
  norm: str = "frozen_bn"
  norm_groups: int = 32
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, s, n: _conv(f, k, s, n, self.dtype, self.param_dtype)
    norm = lambda n: _norm(self.norm, self.norm_groups, self.norm_eps, self.dtype, self.param_dtype, n)
    out_features = self.width * 4 if self.bottleneck else self.width
    if self.bottleneck:
      y = nn.relu(norm("norm1")(conv(self.width, 1, 1, "conv1")(x)))
      y = nn.relu(norm("norm2")(conv(self.width, 3, self.stride, "conv2")(y)))
      y = norm("norm3")(conv(out_features, 1, 1, "conv3")(y))
    else:
      y = nn.relu(norm("norm1")(conv(self.width, 3, self.stride, "conv1")(x)))
      y = norm("norm2")(conv(out_features, 3, 1, "conv2")(y))
    if self.stride != 1 or x.shape[-1] != out_features:
      x = norm("shortcut_norm")(conv(out_features, 1, self.stride, "shortcut")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet-{18,34,50,101}; `width` is the stem width (64 = standard)."""
  depth: int = 50
  width: int = 64
  norm_eps: float = 1e-5
  norm: str = "frozen_bn"      # frozen_bn (reference checkpoints) | group_norm (training from scratch).
  norm_groups: int = 32
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x) -> Dict[str, jnp.ndarray]:
    """x: [B, H, W, 3] normalised image -> {'res2'..'res5': [B, H/s, W/s, C_s]}."""
    if self.depth not in STAGE_BLOCKS:
      raise ValueError(f"config.model.backbone.depth: {self.depth} is not one of {sorted(STAGE_BLOCKS)}")
    x = _conv(self.width, 7, 2, "stem_conv1", self.dtype, self.param_dtype)(x)
    x = nn.relu(_norm(self.norm, self.norm_groups, self.norm_eps, self.dtype, self.param_dtype,
                      "stem_norm1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = {}
    for stage, num_blocks in enumerate(STAGE_BLOCKS[self.depth]):
      for block in range(num_blocks):
        x = ResNetBlock(width=self.width * 2 ** stage, stride=2 if (block == 0 and stage > 0) else 1,
                        bottleneck=is_bottleneck(self.depth), norm_eps=self.norm_eps,
                        norm=self.norm, norm_groups=self.norm_groups,
                        dtype=self.dtype, param_dtype=self.param_dtype,
                        name=f"res{stage + 2}_{block}")(x)
      features[f"res{stage + 2}"] = x
    return features


def is_frozen_statistic(path: Sequence[str]) -> bool:
  """True for the running statistics of a FrozenBatchNorm (a params path as key names): never trained."""
  return len(path) >= 2 and path[-1] in ("mean", "var") and "norm" in path[-2]


def stage_channels(depth: int, width: int) -> Sequence[int]:
  """Channels of res2..res5."""
  factor = 4 if is_bottleneck(depth) else 1
  return tuple(width * 2 ** i * factor for i in range(4))
