"""A detectron2-layout segmenter whose backbone is a ViT-Adapter (`backbone.vit_module.*`: DVIS++ / LOMM /
CAVIS / DVIS-DAQ ViT-L, LOMM's SAM ViT-H): the backbone goes through `backbone_from_detectron2`
(`backbones.py`), the pixel decoder and the masked decoder through the segmenter's detectron2 rule table
(`segmenter.py`); both are checked against the shapes of the whole segmenter built from the config.
"""

from typing import Dict, Mapping, Tuple

import ml_collections
import numpy as np

from o2vis_jax.checkpoint_conversion import backbones as vit_conversion
from o2vis_jax.checkpoint_conversion.rules import apply_rules

PREFIX = "backbone."
SIGNATURE = PREFIX + "vit_module.patch_embed.proj.weight"


def has_vit_backbone(state_dict: Mapping) -> bool:
  return SIGNATURE in state_dict


def segmenter_from_detectron2(state_dict: Mapping[str, np.ndarray], num_heads: int = 8, pixel_decoder_heads: int = 8,
                              num_groups: int = 32, dtype=np.float32, vit_config=None
                              ) -> Tuple[ml_collections.ConfigDict, Dict]:
  """(config.model, params) of a detectron2 Mask2Former state dict with a ViT-Adapter backbone.
  `vit_config`: the `config` of `backbone_from_detectron2` (the authors' `MODEL.VIT_ADAPTER`,
  `get_models`, `get_adapter_args`, `norm_eps`); None: the preset of the name, sizes from the shapes."""
  from o2vis_jax.checkpoint_conversion import segmenter
  backbone_sd = {k: v for k, v in state_dict.items() if k.startswith(PREFIX)}
  head_sd = {k: v for k, v in state_dict.items() if not k.startswith(PREFIX)}
  backbone_config, backbone_params = vit_conversion.backbone_from_detectron2(backbone_sd, vit_config)
  model_config = segmenter.model_config_from_detectron2(head_sd, num_heads, pixel_decoder_heads, num_groups,
                                                        backbone_config=backbone_config)
  m = model_config
  levels = [l for l in range(3) if m.pixel_decoder.conv_dim != m.hidden_dim or
            m.transformer_decoder.enforce_input_projection]
  rules = segmenter._pixel_decoder_rules(m, "detectron2")
  rules.update(segmenter._predictor_rules(m, "detectron2", levels))
  shapes = segmenter.expected_shapes(model_config)
  head_shapes = {p: s for p, s in shapes.items() if not p.startswith("backbone/")}
  params = apply_rules(head_sd, rules, head_shapes, dtype,
                       "detectron2 state dict (ViT-Adapter backbone) does not fit the segmenter config")
  params["backbone"] = _cast(backbone_params, dtype)
  return model_config, params


def _cast(tree, dtype):
  if isinstance(tree, dict):
    return {k: _cast(v, dtype) for k, v in tree.items()}
  return np.asarray(tree, dtype)
