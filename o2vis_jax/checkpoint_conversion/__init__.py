"""Weight import: checkpoint files -> (config, params) for o2vis-jax.

* `load_state_dict(path)`: .safetensors / .pkl (restricted unpickler) / .npz / .pth .bin -> {key: array}.
* `segmenter_from_hf(state_dict, hf_config)`, `segmenter_from_detectron2(state_dict)`: the segmenter.
* `tracker_from_reference(state_dict, num_heads)`: the LOMM tracker (`tracker.*` keys).
* `convert_file(path, ...)`: a whole checkpoint file -> (config, {'segmenter': ..., ['tracker': ...]}).
* `save_converted(dir, config, params)` / `load_converted(dir)`: what scripts/convert_checkpoint.py writes.
"""

import json
from typing import Optional

from o2vis_jax.checkpoint_conversion.io import (RestrictedUnpickler, UnsafePickleError, load_converted,
                                                load_pickle, load_state_dict, save_converted)
from o2vis_jax.checkpoint_conversion.segmenter import (ConversionError, detect_layout, segmenter_from_detectron2,
                                                       segmenter_from_hf)
from o2vis_jax.checkpoint_conversion.tracker import (TE_ONLY_PREFIX, te_only_from_reference,
                                                     tracker_from_reference)

TRACKER_PREFIX = "tracker."
# (checkpoint key prefix, converter): a LOMM_online checkpoint holds `tracker.*`, a LOMM_online_E
# checkpoint (the T_E-only model, Table 3(a) row 6) `tracker_E.*`.
_TRACKERS = ((TRACKER_PREFIX, tracker_from_reference), (TE_ONLY_PREFIX, te_only_from_reference))


def convert_file(path: str, layout: str = "auto", hf_config_path: Optional[str] = None, num_heads: int = 8):
  """(config, params) for a checkpoint file: config = configs/base.py with the converted `model`
  (and `tracker`) sections; params = {'segmenter': ..., 'tracker': ... (LOMM checkpoints only)}.

  The `tracker.*` keys of a whole LOMM checkpoint go to `tracker_from_reference` (`tracker_E.*`, the
  T_E-only model, to `te_only_from_reference`); the rest is the
  segmenter in the HF layout (needs `hf_config_path`, the model's config.json) or detectron2 layout.
  """
  from configs import base
  state_dict = load_state_dict(path)
  tracker_keys, convert_tracker = {}, None
  for prefix, converter in _TRACKERS:
    keys = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    if keys and tracker_keys:
      raise ConversionError(f"{path}: holds both `tracker.*` and `tracker_E.*` weights")
    if keys:
      tracker_keys, convert_tracker = keys, converter
  segmenter_keys = {k: v for k, v in state_dict.items() if k not in tracker_keys}
  layout = detect_layout(segmenter_keys) if layout == "auto" else layout
  config = base.get_base_config()
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
  if tracker_keys:
    tracker_config, tracker_params = convert_tracker(tracker_keys, num_heads)
    for field in ("hidden_dim", "num_classes"):
      if "model" in tracker_config and tracker_config.model[field] != model_config[field]:
        raise ConversionError(f"{path}: tracker.* weights have {field} {tracker_config.model[field]}, "
                              f"the segmenter has {model_config[field]}")
    config.tracker = tracker_config.tracker if "tracker" in tracker_config else tracker_config
    params["tracker"] = tracker_params
  return config, params


__all__ = [
    "ConversionError", "convert_file", "RestrictedUnpickler", "UnsafePickleError", "detect_layout", "load_converted",
    "load_pickle", "load_state_dict", "save_converted", "segmenter_from_detectron2", "segmenter_from_hf",
    "te_only_from_reference", "tracker_from_reference",
]
