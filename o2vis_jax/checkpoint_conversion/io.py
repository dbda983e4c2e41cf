"""Reading checkpoint files into {key: numpy array} without executing anything they contain.

Formats (by extension):
  .safetensors          safetensors (numpy reader, no torch)
  .pkl                  detectron2 / Mask2Former model-zoo pickles, read by `RestrictedUnpickler`:
                        only numpy arrays, numbers, strings and containers may be built; any other
                        object (the way malicious pickles run code) is refused before it is created
  .npz                  numpy archives, allow_pickle=False
  .pth / .pt / .bin     PyTorch files through `torch.load(weights_only=True)` when torch is installed
Nested checkpoints ({'model': {...}}, {'state_dict': {...}}) are unwrapped.
"""

import os
import pickle
from typing import Any, Dict

import numpy as np

# The only globals a detectron2 weight pickle needs: numpy array / scalar reconstruction (protocol 5
# pickles build arrays with `_frombuffer`), and `_codecs.encode`, which Python-2-era pickles use to
# turn the array bytes (latin-1 text) back into bytes. None of them can run code from the file.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
}


class UnsafePickleError(pickle.UnpicklingError):
  pass


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that refuses every global outside `ALLOWED_GLOBALS`."""

  def __init__(self, file, source: str = "<pickle>"):
    super().__init__(file, encoding="latin1")
    self.source = source

  def find_class(self, module, name):
    if (module, name) in ALLOWED_GLOBALS:
      return super().find_class(module, name)
    raise UnsafePickleError(f"{self.source}: refusing to load {module}.{name}: a weight file may only "
                            "contain numpy arrays, numbers, strings and containers")

  def persistent_load(self, pid):
    raise UnsafePickleError(f"{self.source}: refusing persistent id {pid!r} (a torch zip pickle? use .pth)")


def load_pickle(path: str) -> Any:
  with open(path, "rb") as f:
    return RestrictedUnpickler(f, source=path).load()


def _to_numpy(value):
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, "detach"):            # torch.Tensor
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _unwrap(obj: Any, path: str) -> Dict[str, np.ndarray]:
  for wrapper in ("model", "state_dict", "model_state_dict"):
    if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
      obj = obj[wrapper]
      break
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a dict of arrays (or {{'model': dict}}), got {type(obj).__name__}")
  out = {}
  for key, value in obj.items():
    if isinstance(value, (dict, list, tuple, str)) or value is None:
      continue                              # metadata such as '__author__'
    out[str(key)] = _to_numpy(value)
  return out


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """{key: numpy array} from a checkpoint file (see module docstring for the formats)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".safetensors":
    from safetensors.numpy import load_file
    return dict(load_file(path))
  if ext == ".pkl":
    return _unwrap(load_pickle(path), path)
  if ext == ".npz":
    with np.load(path, allow_pickle=False) as archive:
      return _unwrap({k: archive[k] for k in archive.files}, path)
  if ext in (".pth", ".pt", ".bin"):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"{path}: reading {ext} files needs PyTorch (pip install torch); or convert the "
                        "file to .safetensors / .npz elsewhere") from e
    return _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
  raise ValueError(f"{path}: unknown checkpoint format {ext!r} (expected .safetensors, .pkl, .npz, "
                   ".pth, .pt or .bin)")


# ------------------------------------------------------------------------------ converted checkpoints
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save_converted(output_dir: str, config, params) -> str:
  """Writes `config.json` (the whole ml_collections config) and an orbax checkpoint of `params`
  ({'segmenter': ..., optionally 'tracker': ...}) under `output_dir`; returns the params path."""
  import orbax.checkpoint as ocp
  output_dir = os.path.abspath(output_dir)
  os.makedirs(output_dir, exist_ok=True)
  params_dir = os.path.join(output_dir, PARAMS_DIR)
  if os.path.exists(params_dir):
    raise FileExistsError(f"{params_dir} exists; choose an empty output directory")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(params_dir, params)
  with open(os.path.join(output_dir, CONFIG_FILE), "w") as f:
    f.write(config.to_json(indent=1, sort_keys=True))
  return params_dir


def load_converted(output_dir: str):
  """(config, params) written by `save_converted` / scripts/convert_checkpoint.py."""
  import json

  import ml_collections
  import orbax.checkpoint as ocp
  output_dir = os.path.abspath(output_dir)
  config_path = os.path.join(output_dir, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{config_path} missing: {output_dir} is not a converted checkpoint")
  try:
    with open(config_path) as f:
      config = upgrade_config(ml_collections.ConfigDict(json.load(f)))
  except ValueError as e:
    raise ValueError(f"{config_path}: not a readable config ({e})") from e
  params_dir = os.path.join(output_dir, PARAMS_DIR)
  if not os.path.isdir(params_dir):
    raise FileNotFoundError(f"{params_dir} missing: {output_dir} is not a converted checkpoint")
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(params_dir)
  return config, params


# `tracker.mode` of configs written before the association seam -> `association.method`.
_LEGACY_MODES = {"trackers": "o2vis", "te_only": "o2vis_te_only", "baseline": "training_free"}


def upgrade_config(config):
  """A config written before `config.association` existed (the method was `config.tracker.mode`, the
  baselines' options `config.tracker.baseline`) in today's layout; other configs unchanged."""
  if "association" in config or "tracker" not in config:
    return config
  import ml_collections
  tracker = config.tracker
  mode = tracker.get("mode", "trackers")
  if mode not in _LEGACY_MODES:
    raise ValueError(f"config.tracker.mode={mode!r} is not one of {sorted(_LEGACY_MODES)}")
  with config.unlocked():
    config.association = ml_collections.ConfigDict(dict(method=_LEGACY_MODES[mode]))
    baseline = tracker.get("baseline")
    if baseline is not None:
      config.training_free = ml_collections.ConfigDict(dict(
          memory=baseline.get("memory", "iom"), matching=baseline.get("matching", "ohm"),
          top_k=baseline.get("top_k", 10), matcher=tracker.get("matcher", "host")))
    with tracker.unlocked():
      for legacy in ("mode", "baseline"):
        if legacy in tracker:
          del tracker[legacy]
  return config
