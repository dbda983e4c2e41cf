"""Weight import: checkpoint files -> (config, params) for o2vis-jax.

* `load_state_dict(path)`: .safetensors / .pkl (restricted unpickler) / .npz / .pth .bin -> {key: array}.
* `segmenter_from_hf(state_dict, hf_config)`, `segmenter_from_detectron2(state_dict)`: the segmenter.
* `backbone_from_detectron2(state_dict, config)`: a backbone alone (`backbone.*` keys) -> (backbone_config,
  params) for `models.build_backbone`: the ViT-Adapters (DINOv2 ViT-L, LOMM's SAM ViT-H), ResNet, Swin.
* `backbone_from_hf(state_dict, hf_backbone_config)`: a transformers ResNetBackbone / SwinBackbone (any
  ResNet shape, Swin v1) -> (backbone_config, params) (`resnet_swin.py`).
* `association_from_reference(method, state_dict, num_heads)`: an association method's weights (each
  method converts its own, `association/<method>/convert.py`); `tracker_from_reference` (the LOMM
  tracker, `tracker.*` keys) and `te_only_from_reference` (`tracker_E.*`) are its O2VIS cases.
* `refiner_from_reference(state_dict, num_heads)`: the offline temporal refiner (`refiner.*` keys of a
  LOMM / DVIS++ / CAVIS offline checkpoint, or bare keys).
* `convert_file(path, ...)`: a whole checkpoint file -> (config, {'segmenter': ..., ['tracker': ...],
  ['refiner': ...]}).
* `save_converted(dir, config, params)` / `load_converted(dir)`: what scripts/convert_checkpoint.py writes.

The association method's params sit under the key 'tracker' of the params tree (whatever the method).
"""

from typing import Optional

from o2vis_jax.checkpoint_conversion.backbones import backbone_from_detectron2
from o2vis_jax.checkpoint_conversion.errors import ConversionError
from o2vis_jax.checkpoint_conversion.io import (CheckpointError, RestrictedUnpickler, UnsafePickleError,
                                                load_converted, load_pickle, load_state_dict,
                                                read_converted_config, save_converted, upgrade_config)
from o2vis_jax.checkpoint_conversion.refiner import refiner_from_reference
from o2vis_jax.checkpoint_conversion.resnet_swin import backbone_from_hf
from o2vis_jax.checkpoint_conversion.segmenter import (detect_layout, segmenter_from_detectron2,
                                                       segmenter_from_hf)


def association_from_reference(method: str, state_dict, num_heads: int):
  """(config, params) of association method `method` from the authors' checkpoint entries (the keys
  under the method's `checkpoint_prefixes`, or the bare keys). config holds `association.method`, the
  method's section and the `model` sizes read from the shapes."""
  from o2vis_jax import association
  return association.get(method).from_reference(state_dict, num_heads)


def tracker_from_reference(state_dict, num_heads: int):
  """The LOMM tracker (`tracker.*` keys, or bare keys) -> (config, params) of method 'o2vis'."""
  return association_from_reference("o2vis", state_dict, num_heads)


def te_only_from_reference(state_dict, num_heads: int):
  """The T_E-only tracker (`tracker_E.*` keys, or bare keys) -> (config, params) of 'o2vis_te_only'."""
  return association_from_reference("o2vis_te_only", state_dict, num_heads)


def _method_keys(path: str, state_dict):
  """(method name, its keys) of the one association method whose prefixes the checkpoint holds."""
  from o2vis_jax import association
  found, specific = {}, set()
  for name in association.names():
    method = association.get(name)
    if not method.claims(state_dict):
      continue
    found[name] = {k: v for k, v in state_dict.items()
                   if any(k.startswith(p) for p in method.checkpoint_prefixes) or k in method.shared_checkpoint_keys}
    if type(method).claims is not association.Method.claims:
      specific.add(name)
  if specific:   # a method that tells its files by their keys wins over prefix-only claims ('tracker.')
    found = {name: keys for name, keys in found.items() if name in specific}
  if len(found) > 1:
    raise ConversionError(f"{path}: holds the weights of several association methods: "
                          f"{ {n: association.get(n).checkpoint_prefixes for n in found} }")
  return next(iter(found.items())) if found else (None, {})


def convert_file(path: str, layout: str = "auto", hf_config_path: Optional[str] = None, num_heads: int = 8):
  """(config, params) for a checkpoint file: config = the library's default config with the converted
  `model` section (and the association method's, and `refiner`); params = {'segmenter': ..., 'tracker': ...
  (when the file holds an association method's weights, e.g. LOMM's `tracker.*`), 'refiner': ... (when it
  holds an offline refiner's `refiner.*`)}.

  The keys under a registered method's `checkpoint_prefixes` go to that method's converter, the `refiner.*`
  keys to `refiner_from_reference`; the rest is the segmenter in the HF layout (needs `hf_config_path`,
  the model's config.json) or detectron2 layout (ResNet, Swin or ViT-Adapter backbone). Parts of methods not
  built here (DVIS++ tracker / refiner, DVIS-DAQ refiner, segmenter-stage ReID heads) are left out of the
  params: `released.convert_released(path, ...)` returns them too, with what the file is
  (scripts/convert_checkpoint.py writes them to unconverted.npz).
  """
  from o2vis_jax.checkpoint_conversion import released
  converted = released.convert_released(path, layout, hf_config_path, num_heads)
  return converted.config, converted.params


__all__ = [
    "backbone_from_detectron2", "backbone_from_hf",
    "CheckpointError", "ConversionError", "association_from_reference", "read_converted_config", "convert_file", "RestrictedUnpickler",
    "UnsafePickleError", "detect_layout", "load_converted", "load_pickle", "load_state_dict", "refiner_from_reference",
    "save_converted", "segmenter_from_detectron2", "segmenter_from_hf", "te_only_from_reference",
    "tracker_from_reference", "upgrade_config",
]
