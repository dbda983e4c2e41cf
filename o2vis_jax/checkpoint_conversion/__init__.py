"""Weight import: checkpoint files -> (config, params) for o2vis-jax.

* `load_state_dict(path)`: .safetensors / .pkl (restricted unpickler) / .npz / .pth .bin -> {key: array}.
* `segmenter_from_hf(state_dict, hf_config)`, `segmenter_from_detectron2(state_dict)`: the segmenter.
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

import json
from typing import Optional

from o2vis_jax.checkpoint_conversion.errors import ConversionError
from o2vis_jax.checkpoint_conversion.io import (CheckpointError, RestrictedUnpickler, UnsafePickleError,
                                                load_converted, load_pickle, load_state_dict,
                                                read_converted_config, save_converted, upgrade_config)
from o2vis_jax.checkpoint_conversion.refiner import refiner_from_reference
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
  found = {}
  for name in association.names():
    prefixes = association.get(name).checkpoint_prefixes
    keys = {k: v for k, v in state_dict.items() if any(k.startswith(p) for p in prefixes)}
    if keys:
      found[name] = keys
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
  the model's config.json) or detectron2 layout.
  """
  from o2vis_jax import association, defaults
  from o2vis_jax.checkpoint_conversion import refiner as refiner_conversion
  state_dict = load_state_dict(path)
  method, method_keys = _method_keys(path, state_dict)
  refiner_keys = {k: v for k, v in state_dict.items() if k.startswith(refiner_conversion.PREFIX)}
  segmenter_keys = {k: v for k, v in state_dict.items() if k not in method_keys and k not in refiner_keys}
  layout = detect_layout(segmenter_keys) if layout == "auto" else layout
  config = defaults.base_config()
  if layout == "hf":
    if not hf_config_path:
      raise ValueError(f"{path} is in the HF layout: its config.json is needed (--hf_config / hf_config_path)")
    with open(hf_config_path) as f:
      model_config, segmenter_params = segmenter_from_hf(segmenter_keys, json.load(f))
  elif layout == "detectron2":
    model_config, segmenter_params = segmenter_from_detectron2(segmenter_keys, num_heads=num_heads)
  else:
    raise ValueError(f"layout must be 'auto', 'hf' or 'detectron2', got {layout!r}")
  config.model = model_config
  params = {"segmenter": segmenter_params}
  if method is not None:
    method_config, method_params = association_from_reference(method, method_keys, num_heads)
    for field in ("hidden_dim", "num_classes"):
      if "model" in method_config and method_config.model[field] != model_config[field]:
        raise ConversionError(f"{path}: the {method} weights have {field} {method_config.model[field]}, "
                              f"the segmenter has {model_config[field]}")
    config.association.method = method
    section = association.get(method).section_name
    config[section] = method_config[section]
    params["tracker"] = method_params
  if refiner_keys:
    refiner_config, refiner_params = refiner_from_reference(refiner_keys, num_heads)
    for field in ("hidden_dim", "num_classes"):
      if refiner_config.model[field] != model_config[field]:
        raise ConversionError(f"{path}: the refiner weights have {field} {refiner_config.model[field]}, "
                              f"the segmenter has {model_config[field]}")
    config.refiner = refiner_config.refiner
    params["refiner"] = refiner_params
  return config, params


__all__ = [
    "CheckpointError", "ConversionError", "association_from_reference", "read_converted_config", "convert_file", "RestrictedUnpickler",
    "UnsafePickleError", "detect_layout", "load_converted", "load_pickle", "load_state_dict", "refiner_from_reference",
    "save_converted", "segmenter_from_detectron2", "segmenter_from_hf", "te_only_from_reference",
    "tracker_from_reference", "upgrade_config",
]
