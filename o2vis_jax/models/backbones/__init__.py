"""Image backbones, chosen by `config.model.backbone.name`. Each maps a normalised image [B, H, W, 3]
(NHWC; (rgb - pixel_mean) / pixel_std) to {'res2'..'res5'} NHWC at strides 4, 8, 16, 32.

A backbone is a module with
  `from_config(backbone_config, dtype=None, param_dtype=float32, name=None) -> nn.Module` and
  `backbone_config(...) -> ConfigDict`: its whole `config.model.backbone` section at the defaults
  (`name` and its own fields; config validation checks a section against the one of its `name`);
registering it is one line in `BACKBONES`.
"""

from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from o2vis_jax.models.backbones import resnet, swin, vit_adapter

BACKBONES = {
    "resnet": resnet,
    "swin": swin,
    "vit_adapter": vit_adapter,    # DINOv2 ViT-L / SAM ViT-H + ViT-Adapter (D2VitAdapterDinoV2, SAMAdapter).
}


def names() -> Tuple[str, ...]:
  return tuple(BACKBONES)


def _module(kind):
  if kind not in BACKBONES:
    raise ValueError(f"config.model.backbone.name must be one of {names()}, got {kind!r}")
  return BACKBONES[kind]


def default_config(kind: str):
  """The default `config.model.backbone` section of backbone `kind`."""
  return _module(kind).backbone_config()


def describe(backbone_config) -> str:
  """A short name for messages: 'ResNet-50', 'ResNet (1, 2, 1, 1) blocks, (32, 64, 96, 128) channels',
  'Swin (embed 192, depths (2, 2, 18, 2), window 12)'."""
  b = backbone_config
  kind = b.get("name", "resnet")
  if kind == "resnet":
    if b.get("depth", 50):
      return f"ResNet-{b.get('depth', 50)}"
    return (f"ResNet ({b.get('block')}) {tuple(b.stage_blocks)} blocks, {tuple(b.stage_widths)} channels")
  if kind == "swin":
    return f"Swin (embed {b.embed_dim}, depths {tuple(b.depths)}, window {b.window_size})"
  return kind


def check_config(backbone_config, where: str = "config.model.backbone") -> None:
  """ValueError naming the field when the section of its `name` cannot be built (the module's own
  `check_config`)."""
  _module(backbone_config.get("name", "resnet")).check_config(backbone_config, where)


def build_backbone(backbone_config, dtype=None, param_dtype=jnp.float32, name: Optional[str] = None) -> nn.Module:
  """The backbone module of a `config.model.backbone` section:
  `build_backbone(b).apply({'params': params}, images)` -> {'res2'..'res5'}."""
  return _module(backbone_config.get("name", "resnet")).from_config(
      backbone_config, dtype=dtype, param_dtype=param_dtype, name=name)
