"""scripts/demo.py's per-method checkpoints: a trainable method of --methods that --checkpoint does not hold
(CAVIS, DVIS-DAQ next to the shipped O2VIS) runs from its own checkpoint (--method_checkpoints NAME=DIR,
default assets/synthetic_tiny_NAME), checked before any data is generated. Tiny checkpoints of zeros (shapes
traced, nothing compiled): seconds."""

import functools
import importlib
import json
import os
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from o2vis_jax import association, cli
from o2vis_jax.checkpoint_conversion import load_converted, save_converted
from o2vis_jax.models import init_segmenter_params

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Imported as the module 'demo' from scripts/, as every other test does: one module defines the absl flags
# once per process (as 'scripts.demo' as well, its flags would be defined twice).
sys.path.insert(0, os.path.join(_REPO, "scripts"))
try:
  demo = importlib.import_module("demo")
finally:
  sys.path.pop(0)


def _zeros(shapes, value=0.0):
  return jax.tree.map(lambda s: np.full(s.shape, value, s.dtype), shapes)


@functools.lru_cache(maxsize=None)
def _segmenter_shapes():
  """The tiny segmenter's param shapes (every method's checkpoint here shares configs/tiny.py's model)."""
  config = tiny.get_config()
  return jax.eval_shape(lambda k: init_segmenter_params(config, k), jax.random.PRNGKey(0))


def _checkpoint(path, method, segmenter_value=0.0, tracker="full", **data):
  """A converted checkpoint of configs/tiny.py running `method`: segmenter params all `segmenter_value`;
  tracker 'full' (the method's params), 'segmenter_stage' (only its segmenter-stage subtrees) or None."""
  config = association.with_method(tiny.get_config(), method)
  config.data.update(data)
  model = config.model
  params = {"segmenter": _zeros(_segmenter_shapes(), segmenter_value)}
  method_ = association.get(method)
  if tracker and method_.trainable:
    shapes = method_.param_shapes(config, num_classes=model.num_classes, hidden_dim=model.hidden_dim)
    if tracker == "segmenter_stage":
      shapes = {name: shapes[name] for name in method_.segmenter_stage_params}
    params["tracker"] = _zeros(shapes)
  save_converted(str(path), config, params)
  return str(path)


def test_parse_method_checkpoints_names_a_bad_entry():
  assert demo.parse_method_checkpoints(["cavis=/a", "dvis_daq=b=c"]) == {"cavis": "/a", "dvis_daq": "b=c"}
  for entries, expected in ((["cavis"], "'cavis' is not NAME=DIR"), (["cavis="], "'cavis=' is not NAME=DIR"),
                            (["nope=/a"], "'nope' is not a trainable method"),
                            (["minvis=/a"], "'minvis' is not a trainable method"),
                            (["cavis=/a", "cavis=/b"], "'cavis' given twice")):
    with pytest.raises(cli.InputError, match=expected):
      demo.parse_method_checkpoints(entries)


def test_only_the_trainable_methods_the_checkpoint_lacks_need_their_own():
  o2vis = association.with_method(tiny.get_config(), "o2vis")
  names = ["o2vis", "training_free", "minvis", "cavis", "dvis_daq"]
  dirs = demo.method_checkpoint_dirs(o2vis, True, names, {"cavis": "/mine"})
  assert dirs == {"cavis": "/mine", "dvis_daq": os.path.join(_REPO, "assets", "synthetic_tiny_dvis_daq")}
  # A checkpoint without tracker weights runs no trainable method itself.
  assert sorted(demo.method_checkpoint_dirs(o2vis, False, names, {})) == ["cavis", "dvis_daq", "o2vis"]
  cavis = association.with_method(tiny.get_config(), "cavis")
  assert sorted(demo.method_checkpoint_dirs(cavis, True, names, {})) == ["dvis_daq", "o2vis"]
  # The default rows of the shipped (O2VIS) checkpoint need no other checkpoint.
  assert demo.method_checkpoint_dirs(o2vis, True, list(demo.DEFAULT_METHODS), {}) == {}


@pytest.fixture(scope="module")
def main_checkpoint(tmp_path_factory):
  """The --checkpoint of these tests: an O2VIS checkpoint with tracker weights (segmenter all zeros)."""
  path = _checkpoint(tmp_path_factory.mktemp("main") / "main", "o2vis")
  return (path,) + load_converted(path)


def test_method_checkpoints_are_loaded_and_checked(main_checkpoint, tmp_path, capsys):
  _, main_config, main_params = main_checkpoint
  cavis_dir = _checkpoint(tmp_path / "cavis", "cavis")
  daq_dir = _checkpoint(tmp_path / "daq", "dvis_daq", segmenter_value=1.0)
  loaded = demo.load_method_checkpoints("MAIN", main_config, main_params,
                                        {"cavis": cavis_dir, "dvis_daq": daq_dir})
  assert sorted(loaded) == ["cavis", "dvis_daq"]
  directory, config, params = loaded["cavis"]
  assert directory == cavis_dir and association.method_of(config).name == "cavis"
  assert "reid_embed" in params["tracker"]
  assert association.method_of(loaded["dvis_daq"][1]).name == "dvis_daq"
  # Only the DAQ checkpoint's segmenter (all ones) differs from MAIN's (all zeros): one note, naming it.
  notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
  assert notes == [f"note: row 'dvis_daq' runs the segmenter of {daq_dir}, not that of MAIN"]
  # With --train there are no params to compare yet: no note.
  demo.load_method_checkpoints("--train", main_config, None, {"dvis_daq": daq_dir})
  assert "note:" not in capsys.readouterr().out


def test_a_missing_or_wrong_method_checkpoint_is_one_line(main_checkpoint, tmp_path):
  main_dir, main_config, main_params = main_checkpoint

  def load(name, directory):
    return demo.load_method_checkpoints("MAIN", main_config, main_params, {name: directory})

  missing = str(tmp_path / "nowhere")
  with pytest.raises(cli.InputError, match=rf"--methods cavis: MAIN holds no trained 'cavis' weights, and "
                                           rf"{missing} .*--method_checkpoints cavis=DIR.*synthetic_tiny_cavis"):
    load("cavis", missing)
  # A checkpoint of another method, one without tracker weights, one of the segmenter stage only.
  with pytest.raises(cli.InputError, match="--methods cavis: .* gives the tracker weights of 'o2vis'"):
    load("cavis", main_dir)
  with pytest.raises(cli.InputError, match="--methods dvis_daq: .* gives no tracker weights"):
    load("dvis_daq", _checkpoint(tmp_path / "bare", "dvis_daq", tracker=None))
  with pytest.raises(cli.InputError, match="--methods cavis: "):
    load("cavis", _checkpoint(tmp_path / "reid_only", "cavis", tracker="segmenter_stage"))
  # Trained for other held-out videos than MAIN's (e.g. a method checkpoint of the previous segmenter).
  other_data = _checkpoint(tmp_path / "other_data", "cavis", synthetic_size=main_config.data.synthetic_size + 32)
  with pytest.raises(cli.InputError, match=r"--methods cavis: .* was trained for data.synthetic_size="):
    load("cavis", other_data)


def test_train_runs_the_shipped_recipe(tmp_path):
  """`--train` trains what the shipped checkpoint holds: configs/synthetic_tiny.py (segmenter, then trackers)
  in WORKDIR/train, then its 'refiner' variant on that export, on the same generated data, and evaluates the
  refiner's export (every row). The training itself is replaced by a recorder: the wiring, in milliseconds."""
  from configs import synthetic_tiny
  online = tmp_path / "train" / "export"
  online.mkdir(parents=True)
  with open(os.path.join(synthetic_tiny.SHIPPED_CHECKPOINT, "config.json")) as f:
    online_config = json.load(f)
  online_config["model"]["hidden_dim"] = 32   # the refiner takes the architecture of the model it refines
  (online / "config.json").write_text(json.dumps(online_config))
  calls = []

  class Train:
    @staticmethod
    def run_training(config, workdir, progress=True):
      calls.append((config, workdir))
      return str(online) if len(calls) == 1 else os.path.join(workdir, "export")

  class Tasks:
    @staticmethod
    def resolve_data_dir(config, workdir):
      assert workdir == str(tmp_path / "train") and config.train.task == "segmenter+tracker"
      return "/built/synthetic"

  result = demo.train_demo_model(synthetic_tiny, Train, Tasks, str(tmp_path / "train"), progress=False)
  (first, first_dir), (second, second_dir) = calls
  assert first.train.task == "segmenter+tracker" and first_dir == str(tmp_path / "train")
  assert first.to_dict() == synthetic_tiny.get_config().to_dict()
  assert second.train.task == "refiner" and second_dir == str(tmp_path / "train" / "refiner")
  assert second.init_checkpoint == str(online) and second.data.data_dir == "/built/synthetic"
  assert second.model.hidden_dim == 32 and second.num_train_steps == synthetic_tiny.get_config("refiner").num_train_steps
  assert result == str(tmp_path / "train" / "refiner" / "export")
