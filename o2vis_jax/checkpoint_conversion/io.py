"""Reading checkpoint files into {key: numpy array} without executing anything they contain.

Formats (by extension):
  .safetensors          safetensors (numpy reader, no torch)
  .pkl                  detectron2 / Mask2Former model-zoo pickles, read by `RestrictedUnpickler`:
                        only numpy arrays, numbers, strings and containers may be built; any other
                        object (the way malicious pickles run code) is refused before it is created
  .npz                  numpy archives, allow_pickle=False
  .pth / .pt / .bin     PyTorch files through `torch.load(weights_only=True)` when torch is installed
Nested checkpoints ({'model': {...}}, {'state_dict': {...}}) are unwrapped.

Converted checkpoint directories (`config.json` + orbax `params/`, written by `save_converted`, i.e. by
scripts/convert_checkpoint.py and by every training export) have one reader, `load_converted`: it
validates the config (`config_validation.validate`), reads the params and compares their shapes with
the model the config describes. Every problem with a file is a `CheckpointError`, one line naming it.
"""

import os
import pickle
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from o2vis_jax.cli import InputError

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


class CheckpointError(InputError):
  """A checkpoint file or converted checkpoint directory that cannot be used: one line naming the file
  (and the field or parameter)."""


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
    raise CheckpointError(f"{path}: expected a dict of arrays (or {{'model': dict}}), got "
                          f"{type(obj).__name__}")
  out = {}
  for key, value in obj.items():
    if isinstance(value, (dict, list, tuple, str)) or value is None:
      continue                              # metadata such as '__author__'
    out[str(key)] = _to_numpy(value)
  return out


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """{key: numpy array} from a checkpoint file (see module docstring for the formats). A file its
  format's reader cannot parse (truncated, corrupt, another format) is a CheckpointError naming it."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist")
  if os.path.isdir(path):
    raise CheckpointError(f"checkpoint {path} is a directory; give the weight file (a converted "
                          "checkpoint directory is already converted)")
  ext = os.path.splitext(path)[1].lower()
  if ext not in (".safetensors", ".pkl", ".npz", ".pth", ".pt", ".bin"):
    raise CheckpointError(f"{path}: unknown checkpoint format {ext!r} (expected .safetensors, .pkl, "
                          ".npz, .pth, .pt or .bin)")
  if ext in (".pth", ".pt", ".bin"):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"{path}: reading {ext} files needs PyTorch (pip install torch); or convert the "
                        "file to .safetensors / .npz elsewhere") from e
  try:
    if ext == ".safetensors":
      from safetensors.numpy import load_file
      return dict(load_file(path))
    if ext == ".pkl":
      return _unwrap(load_pickle(path), path)
    if ext == ".npz":
      with np.load(path, allow_pickle=False) as archive:
        return _unwrap({k: archive[k] for k in archive.files}, path)
    return _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
  except (UnsafePickleError, CheckpointError):
    raise
  except Exception as e:  # pylint: disable=broad-except  (each format's reader has its own errors)
    reason = f"{type(e).__name__}: {e}".splitlines()[0]
    raise CheckpointError(f"{path}: not a readable {ext} checkpoint ({reason})") from e


# ------------------------------------------------------------------------------ converted checkpoints
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def save_converted(output_dir: str, config, params) -> str:
  """Writes `config.json` (the whole ml_collections config) and an orbax checkpoint of `params`
  ({'segmenter': ..., optionally 'tracker': ... and 'refiner': ...}) under `output_dir`; returns the
  params path."""
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


def read_converted_config(output_dir: str):
  """The validated config of a converted checkpoint directory (`config.json`, upgraded from older
  layouts, checked by `config_validation.validate`)."""
  import ml_collections
  from o2vis_jax import config_validation
  output_dir = os.path.abspath(output_dir)
  if not os.path.isdir(output_dir):
    what = "is not a directory" if os.path.exists(output_dir) else "does not exist"
    raise CheckpointError(f"checkpoint {output_dir} {what} (expected a directory with {CONFIG_FILE} and "
                          f"{PARAMS_DIR}/: the output of scripts/convert_checkpoint.py or a training export)")
  config_path = os.path.join(output_dir, CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise CheckpointError(f"{config_path} missing: {output_dir} is not a converted checkpoint")
  content = _read_json(config_path)
  if not isinstance(content, dict):
    raise CheckpointError(f"{config_path}: expected a JSON object of config sections, got "
                          f"{type(content).__name__}")
  try:
    config = upgrade_config(ml_collections.ConfigDict(content))
    return config_validation.validate(config)
  except (TypeError, ValueError) as e:   # ConfigError, or upgrade_config's legacy mode
    raise CheckpointError(f"{config_path}: {e}") from e


def _read_json(path: str):
  import json
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
  except UnicodeDecodeError as e:
    raise CheckpointError(f"{path}: not valid JSON (not UTF-8 text: byte {e.start})") from e
  except OSError as e:
    raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from e


def _quiet_event_loop_closed() -> None:
  """When one array of an orbax restore fails, orbax closes its asyncio loop while tensorstore still
  completes the other reads; each completion then reports 'Event loop is closed' through
  sys.unraisablehook, up to hundreds of tracebacks after our one-line error. Drop exactly those (once
  installed, the filter stays: the reads may complete after `load_converted` has raised)."""
  import sys
  previous = sys.unraisablehook
  if getattr(previous, "_o2vis_quiet", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      return
    previous(unraisable)
  hook._o2vis_quiet = True
  sys.unraisablehook = hook


def _restore_error(params_dir: str, error: Exception) -> CheckpointError:
  """orbax / tensorstore's error as one line naming the file that failed (and the array read)."""
  import re
  text = str(error).split(" [tensorstore_spec=")[0].strip()
  files = re.findall(r'local file "([^"]+)"', text)
  where = files[-1].rstrip("/") if files else params_dir
  array = re.search(r'(?:reading|at) "([^"/]+)/', text)
  status = re.match(r"([A-Z_]+): ", text)
  # The innermost cause follows the last quoted name ('... of local file "F": Error decoding ...').
  reason = text.rsplit('": ', 1)[-1] if '": ' in text else text.split(": ", 1)[-1]
  if status and status.group(1) == "NOT_FOUND" and files:
    reason = "the file is missing"
  detail = f"{status.group(1)}: {reason}" if status else f"{type(error).__name__}: {reason}"
  array_note = f" (while reading {array.group(1).replace('.', '/')})" if array else ""
  return CheckpointError(f"{where}: corrupt or incomplete params{array_note}: {detail}")


def read_params(params_dir: str):
  """The params tree of an orbax checkpoint directory; one-line errors naming the file."""
  import orbax.checkpoint as ocp
  if not os.path.isdir(params_dir):
    raise CheckpointError(f"{params_dir} missing: {os.path.dirname(params_dir)} is not a converted "
                          "checkpoint (or its export was interrupted)")
  metadata = os.path.join(params_dir, "_METADATA")
  if not os.path.isfile(metadata):
    raise CheckpointError(f"{metadata} missing: {params_dir} is not a complete orbax checkpoint")
  if not isinstance(_read_json(metadata), dict):
    raise CheckpointError(f"{metadata}: expected orbax's JSON object of tree metadata")
  _quiet_event_loop_closed()   # before the restore: the late reads may report while it fails
  checkpointer = ocp.StandardCheckpointer()
  try:
    params = checkpointer.restore(params_dir)
  except Exception as e:  # pylint: disable=broad-except  (tensorstore raises ValueError for every status)
    raise _restore_error(params_dir, e) from e
  finally:
    checkpointer.close()
  return params


def flat_shapes(tree, prefix: str = "") -> Dict[str, Tuple[int, ...]]:
  """{'a/b/c': shape} of a params tree (arrays or jax.ShapeDtypeStruct)."""
  import jax
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]
    flat["/".join([prefix] + names if prefix else names)] = tuple(getattr(leaf, "shape", ()))
  return flat


PARTS = ("segmenter", "tracker", "refiner")   # the params tree of a converted checkpoint or an export


def expected_param_shapes(config, parts: Sequence[str] = PARTS) -> Dict[str, Tuple[int, ...]]:
  """{'segmenter/...': shape, 'tracker/...': shape, 'refiner/...': shape} that `config` implies: the
  segmenter's init traced by `jax.eval_shape` (nothing computed), the association method's
  `param_shapes`, the offline refiner's (`refiner.param_shapes`)."""
  from o2vis_jax import association
  from o2vis_jax.checkpoint_conversion import segmenter as segmenter_conversion
  shapes = {}
  if "segmenter" in parts:
    shapes.update({f"segmenter/{k}": v for k, v in segmenter_conversion.expected_shapes(config).items()})
  if "tracker" in parts:
    model = config.model
    method = association.method_of(config)
    shapes.update(flat_shapes(method.param_shapes(config, num_classes=model.num_classes,
                                                  hidden_dim=model.hidden_dim), "tracker"))
  if "refiner" in parts:
    from o2vis_jax import refiner as refiner_lib
    model = config.model
    shapes.update(flat_shapes(refiner_lib.param_shapes(config, num_classes=model.num_classes,
                                                       hidden_dim=model.hidden_dim), "refiner"))
  return shapes


def segmenter_stage_only(config, params) -> bool:
  """Whether params['tracker'] is the tracker of a SEGMENTER stage: it holds only the association method's
  `segmenter_stage_params` subtrees (CAVIS's ReID head: a CAVIS_segmenter file, or the export of a
  segmenter-stage run), a non-empty proper subset of the method's params. Such a checkpoint starts the
  tracker stage (`tasks.with_segmenter_stage_params`); it cannot run inference with that method."""
  from o2vis_jax import association
  if not _holds_segmenter_stage_names(config, params):
    return False
  model = config.model   # (the method's whole tree is built only for a candidate)
  full = association.method_of(config).param_shapes(config, num_classes=model.num_classes,
                                                    hidden_dim=model.hidden_dim)
  return set(params["tracker"]) < set(full)


def _holds_segmenter_stage_names(config, params) -> bool:
  from o2vis_jax import association
  tracker = params.get("tracker") if isinstance(params, dict) else None
  names = association.method_of(config).segmenter_stage_params
  return bool(names) and isinstance(tracker, dict) and set(tracker) == set(names)


def segmenter_stage_message(config, source: Optional[str] = None) -> str:
  """The one line that refuses inference on a `segmenter_stage_only` checkpoint (directory `source`)."""
  from o2vis_jax import association
  method = association.method_of(config)
  return (f"association method {method.name!r} needs its trained tracker; {source or 'the checkpoint'} holds "
          f"only the segmenter stage's {sorted(method.segmenter_stage_params)}: train the tracker stage "
          f"(train.task='tracker', config.init_checkpoint={source or '<this checkpoint>'}) or run a "
          "training-free method")


def check_param_shapes(params, config, where: str, config_name: str,
                       parts: Sequence[str] = PARTS) -> None:
  """The params of `parts` have the shapes `config` implies; a CheckpointError names the first
  missing, unexpected or mis-shaped parameter and both shapes. `parts` absent from `params` are
  skipped (an export of the segmenter stage has no 'tracker'), and so is a method without params. A
  segmenter-stage tracker (`segmenter_stage_only`) is checked on its subtrees only."""
  present = [part for part in parts if part in params]
  expected = expected_param_shapes(config, present)
  if "tracker" in present and not any(k.startswith("tracker/") for k in expected):
    present.remove("tracker")   # a training-free method: the tracker weights are not its own
  elif "tracker" in present and _holds_segmenter_stage_names(config, params):
    names = set(params["tracker"])
    if names < {path.split("/")[1] for path in expected if path.startswith("tracker/")}:   # segmenter_stage_only
      expected = {path: shape for path, shape in expected.items()
                  if not path.startswith("tracker/") or path.split("/")[1] in names}
  got = flat_shapes({part: params[part] for part in present})
  for path, shape in expected.items():
    if path not in got:
      raise CheckpointError(f"{where}: parameter {path} {shape} that {config_name} implies is missing")
    if got[path] != shape:
      raise CheckpointError(f"{where}: parameter {path} has shape {got[path]}, {config_name} implies "
                            f"{shape}")
  extra = sorted(set(got) - set(expected))
  if extra:
    more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
    raise CheckpointError(f"{where}: parameter {extra[0]}{more} is not in the model {config_name} "
                          "describes")


def load_converted(output_dir: str, check_against=None,
                   check_parts: Sequence[str] = ("segmenter", "tracker")):
  """(config, params) written by `save_converted` / scripts/convert_checkpoint.py / a training export.

  The one reader of these directories: every problem is a `CheckpointError` in one line naming the
  file (a missing directory, config.json or params/; config.json that is not JSON or fails
  `config_validation.validate`; an unreadable or corrupt params file or _METADATA) or the parameter
  whose shape differs from what config.json implies. `check_against`: another config (a training
  run's) that the params of `check_parts` must also fit.
  """
  output_dir = os.path.abspath(output_dir)
  config_path = os.path.join(output_dir, CONFIG_FILE)
  config = read_converted_config(output_dir)
  params_dir = os.path.join(output_dir, PARAMS_DIR)
  params = read_params(params_dir)
  if not isinstance(params, dict) or "segmenter" not in params or set(params) - set(PARTS):
    keys = sorted(params) if isinstance(params, dict) else type(params).__name__
    raise CheckpointError(f"{params_dir}: holds {keys}; expected 'segmenter' and optionally 'tracker' "
                          "and 'refiner'")
  check_param_shapes(params, config, params_dir, f"its {config_path}")
  if check_against is not None:
    check_param_shapes(params, check_against, params_dir, "the run's config", check_parts)
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
