"""Weight import: file formats, the restricted unpickler, error messages, layouts, the CLI output."""

import os
import pickle
import sys

import jax
import numpy as np
import pytest

import segmenter_fixture
from o2vis_jax import checkpoint_conversion as cc
from o2vis_jax.checkpoint_conversion import segmenter as conversion


class _RunsShell:
  """A pickle payload that would run a shell command when loaded by an ordinary unpickler."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "model_final.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": {"backbone.stem.conv1.weight": _RunsShell(str(marker))}}, f)
  with pytest.raises(cc.UnsafePickleError, match=r"refusing to load (posix|os|nt)\.system"):
    cc.load_state_dict(str(path))
  assert not marker.exists()


def test_pickle_refuses_builtins_eval(tmp_path):
  path = tmp_path / "evil.pkl"
  # GLOBAL builtins.eval, then REDUCE with ("1+1",): the classic code-execution opcode sequence.
  path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
  with pytest.raises(cc.UnsafePickleError, match="builtins.eval"):
    cc.load_state_dict(str(path))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_detectron2_pickle_round_trip(tmp_path, protocol):
  weights = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b.bias": np.float64(0.5) * np.ones(2)}
  path = tmp_path / "model_final.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": weights, "__author__": "test", "matching_heuristics": True}, f, protocol=protocol)
  loaded = cc.load_state_dict(str(path))
  assert sorted(loaded) == sorted(weights)
  for key, value in weights.items():
    np.testing.assert_array_equal(loaded[key], value)
    assert loaded[key].dtype == value.dtype


def test_npz_and_safetensors_round_trip(tmp_path):
  from safetensors.numpy import save_file
  weights = {"x.weight": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)}
  np.savez(tmp_path / "w.npz", **weights)
  save_file(weights, str(tmp_path / "w.safetensors"))
  for name in ("w.npz", "w.safetensors"):
    np.testing.assert_array_equal(cc.load_state_dict(str(tmp_path / name))["x.weight"], weights["x.weight"])


def test_pth_without_torch_says_so(tmp_path, monkeypatch):
  path = tmp_path / "model.pth"
  path.write_bytes(b"not really")
  monkeypatch.setitem(sys.modules, "torch", None)     # import torch -> ImportError
  with pytest.raises(ImportError, match="needs PyTorch"):
    cc.load_state_dict(str(path))


def test_unknown_extension_is_named(tmp_path):
  path = tmp_path / "weights.h5"
  path.write_bytes(b"")
  with pytest.raises(ValueError, match=r"weights\.h5: unknown checkpoint format '\.h5'"):
    cc.load_state_dict(str(path))


def test_errors_list_missing_unexpected_and_misshaped_keys():
  state_dict, hf_config, _ = segmenter_fixture.load()
  broken = dict(state_dict)
  del broken["class_predictor.bias"]
  del broken["model.pixel_level_module.decoder.encoder.layers.1.fc2.weight"]
  broken["model.some_new_head.weight"] = np.zeros(3, np.float32)
  broken["model.transformer_module.queries_features.weight"] = np.zeros((9, 32), np.float32)
  with pytest.raises(cc.ConversionError) as error:
    cc.segmenter_from_hf(broken, hf_config)
  message = str(error.value)
  assert "missing keys (2)" in message
  assert "'class_predictor.bias'" in message
  assert "'model.pixel_level_module.decoder.encoder.layers.1.fc2.weight'" in message
  assert "unexpected keys (1): ['model.some_new_head.weight']" in message
  assert "mis-shaped keys (1)" in message
  assert "model.transformer_module.queries_features.weight (9, 32)" in message
  assert "model expects (8, 32)" in message


def test_detectron2_layout_gives_the_same_config_and_params():
  state_dict, hf_config, _ = segmenter_fixture.load()
  detectron2 = segmenter_fixture.hf_to_detectron2(state_dict)
  detectron2["criterion.empty_weight"] = np.ones(6, np.float32)       # present in real checkpoints
  assert cc.detect_layout(detectron2) == "detectron2" and cc.detect_layout(state_dict) == "hf"
  config_hf, params_hf = cc.segmenter_from_hf(state_dict, hf_config)
  config_d2, params_d2 = cc.segmenter_from_detectron2(detectron2, num_heads=4, pixel_decoder_heads=4)
  assert config_d2 == config_hf
  flat_hf = dict(jax.tree_util.tree_flatten_with_path(params_hf)[0])
  flat_d2 = dict(jax.tree_util.tree_flatten_with_path(params_d2)[0])
  assert flat_hf.keys() == flat_d2.keys()
  for path in flat_hf:
    np.testing.assert_array_equal(flat_d2[path], flat_hf[path], err_msg=jax.tree_util.keystr(path))


def test_fused_in_proj_is_split_into_q_k_v():
  w = np.arange(6 * 2, dtype=np.float32).reshape(6, 2)     # C=2: rows 0-1 q, 2-3 k, 4-5 v
  np.testing.assert_array_equal(conversion.TRANSFORMS["fused_weight"](w, 1), w[2:4].T)
  np.testing.assert_array_equal(conversion.TRANSFORMS["fused_bias"](np.arange(6.0), 2), [4.0, 5.0])
  conv = np.arange(2 * 3 * 1 * 2).reshape(2, 3, 1, 2)       # [O, I, kh, kw]
  assert conversion.TRANSFORMS["conv"](conv, None)[0, 1, 2, 1] == conv[1, 2, 0, 1]


def test_file_conversion_writes_a_loadable_checkpoint(tmp_path):
  state_dict, _, _ = segmenter_fixture.load()
  detectron2 = segmenter_fixture.hf_to_detectron2(state_dict)
  path = tmp_path / "model_final.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": detectron2, "__author__": "test"}, f)
  config, params = cc.convert_file(str(path), num_heads=4)
  # detectron2 files do not record the pixel decoder's heads; the released models use 8.
  assert config.model.pixel_decoder.num_heads == 8 and config.model.num_heads == 4
  cc.save_converted(str(tmp_path / "out"), config, params)
  loaded_config, loaded_params = cc.load_converted(str(tmp_path / "out"))
  assert loaded_config.model.num_queries == 8 and loaded_config.model.backbone.depth == 50
  kernel = ["segmenter", "predictor", "class_embed", "kernel"]
  original, restored = params, loaded_params
  for key in kernel:
    original, restored = original[key], restored[key]
  np.testing.assert_array_equal(restored, original)
  assert jax.tree.structure(loaded_params) == jax.tree.structure(params)


def _write_model_pickle(path, state_dict):
  """A detectron2-style checkpoint file {'model': state_dict}; returns its path."""
  with open(path, "wb") as f:
    pickle.dump({"model": state_dict}, f)
  return path


def test_whole_lomm_checkpoint_converts_segmenter_and_tracker(tmp_path):
  import reference_numpy
  state_dict, _, _ = segmenter_fixture.load()
  checkpoint = segmenter_fixture.hf_to_detectron2(state_dict)
  tracker = reference_numpy.random_state_dict(np.random.default_rng(0), 32, 5, 64, num_layers=3)
  checkpoint.update({f"tracker.{k}": np.asarray(v, np.float32) for k, v in tracker.items()})
  path = _write_model_pickle(tmp_path / "lomm.pkl", checkpoint)
  config, params = cc.convert_file(str(path), num_heads=4)
  assert sorted(params) == ["segmenter", "tracker"]
  assert config.association.method == "o2vis"
  assert config.tracker.num_layers == 3 and config.tracker.num_heads == 4
  np.testing.assert_array_equal(params["tracker"]["class_embed"]["kernel"],
                                np.asarray(tracker["class_embed.weight"], np.float32).T)
  # A tracker trained for other classes than the segmenter is refused by name.
  checkpoint["tracker.class_embed.weight"] = np.zeros((4, 32), np.float32)
  checkpoint["tracker.class_embed.bias"] = np.zeros(4, np.float32)
  _write_model_pickle(path, checkpoint)
  with pytest.raises(cc.ConversionError, match="o2vis weights have num_classes 3, the segmenter has 5"):
    cc.convert_file(str(path), num_heads=4)


@pytest.mark.parametrize("depth", [18, 101])
def test_tables_cover_every_param_for_other_depths(depth):
  from o2vis_jax.defaults import segmenter as segmenter_config
  model_config = segmenter_config.get()
  model_config.backbone.depth, model_config.backbone.width = depth, 4
  model_config.hidden_dim = model_config.pixel_decoder.conv_dim = 32
  model_config.pixel_decoder.num_groups = 4
  shapes = conversion.expected_shapes(model_config)
  for layout in ("hf", "detectron2"):
    rules = conversion.conversion_rules(model_config, layout)
    assert set(rules) == set(shapes), (layout, sorted(set(rules) ^ set(shapes))[:5])
    assert len({key for key, _, _ in rules.values()}) == len(rules) - 4 * model_config.transformer_decoder.num_layers * (
        2 if layout == "detectron2" else 1)   # a fused in_proj weight and bias each serve q, k and v


def test_whole_te_only_checkpoint_converts_segmenter_and_tracker_e(tmp_path):
  import reference_numpy_te
  state_dict, _, _ = segmenter_fixture.load()
  checkpoint = segmenter_fixture.hf_to_detectron2(state_dict)
  tracker = reference_numpy_te.random_state_dict(np.random.default_rng(1), 32, 5, 64, num_layers=2)
  checkpoint.update({f"tracker_E.{k}": np.asarray(v, np.float32) for k, v in tracker.items()})
  path = _write_model_pickle(tmp_path / "lomm_e.pkl", checkpoint)
  config, params = cc.convert_file(str(path), num_heads=4)
  assert config.association.method == "o2vis_te_only" and config.tracker.num_layers == 2
  assert "ref_proj_E" in params["tracker"] and "ref_proj" not in params["tracker"]
  np.testing.assert_array_equal(params["tracker"]["class_embed"]["kernel"],
                                np.asarray(tracker["class_embed.weight"], np.float32).T)


def test_association_from_reference_dispatches_to_the_method():
  import reference_numpy
  sd = reference_numpy.random_state_dict(np.random.default_rng(3), 16, 3, 24, num_layers=2)
  config, params = cc.association_from_reference("o2vis", {f"tracker.{k}": v for k, v in sd.items()}, 4)
  want_config, want_params = cc.tracker_from_reference(sd, 4)
  assert config.association.method == "o2vis" and config.to_dict() == want_config.to_dict()
  jax.tree.map(np.testing.assert_array_equal, params, want_params)
  with pytest.raises(ValueError, match="not a registered association method"):
    cc.association_from_reference("no_such_method", sd, 4)
  with pytest.raises(NotImplementedError, match="training_free.*no reference checkpoint converter"):
    cc.association_from_reference("training_free", sd, 4)


@pytest.mark.parametrize("mode,method", [("trackers", "o2vis"), ("te_only", "o2vis_te_only"),
                                         ("baseline", "training_free")])
def test_configs_written_before_the_association_seam_are_upgraded(mode, method):
  import ml_collections
  legacy = ml_collections.ConfigDict(dict(tracker=dict(
      num_layers=3, matcher="device", mode=mode,
      baseline=dict(memory="none", matching="hungarian", top_k=7))))
  config = cc.upgrade_config(legacy)
  assert config.association.method == method
  assert "mode" not in config.tracker and "baseline" not in config.tracker
  assert config.training_free.to_dict() == dict(memory="none", matching="hungarian", top_k=7,
                                                matcher="device")
  assert cc.upgrade_config(config) is config       # today's layout is left alone
  with pytest.raises(ValueError, match="config.tracker.mode='nope'"):
    cc.upgrade_config(ml_collections.ConfigDict(dict(tracker=dict(mode="nope"))))


# ------------------------------------------------------------------ the converted-checkpoint reader
SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                       "synthetic_tiny")


@pytest.fixture
def shipped_copy(tmp_path):
  """A writable copy of the shipped demo checkpoint (config.json + orbax params/, 5 MB)."""
  import shutil
  directory = tmp_path / "ckpt"
  shutil.copytree(SHIPPED, directory)
  return directory


def _edit_config(directory, edit):
  import json
  path = directory / "config.json"
  content = json.loads(path.read_text())
  edit(content)
  path.write_text(json.dumps(content, indent=1))


def _garble(path, start=2000):
  data = bytearray(path.read_bytes())
  data[start:start + 100] = b"x" * 100
  path.write_bytes(bytes(data))


def _data_file(directory):
  return next((directory / "params" / "d").iterdir())


# (what breaks, how, the file the message must name (relative to the checkpoint), what it must say)
BROKEN_CHECKPOINTS = [
    ("no params/", lambda d: __import__("shutil").rmtree(d / "params"), "params",
     "missing: .* is not a converted checkpoint"),
    ("no config.json", lambda d: (d / "config.json").unlink(), "config.json", "missing"),
    ("config.json not JSON",
     lambda d: (d / "config.json").write_text('{\n "model": {\n  "num_queries": 10,\n }\n}'),
     "config.json", "not valid JSON: Expecting property name enclosed in double quotes at line 4 column 2"),
    ("config.json binary", lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00\x01"), "config.json",
     "not valid JSON"),
    ("config.json a list", lambda d: (d / "config.json").write_text("[1, 2]"), "config.json",
     "expected a JSON object of config sections, got list"),
    ("wrong type", lambda d: _edit_config(d, lambda c: c["model"].update(num_queries="ten")), "config.json",
     r"config.model.num_queries='ten' must be an int \(got str\)"),
    ("unknown field", lambda d: _edit_config(d, lambda c: c["model"].update(num_querys=10)), "config.json",
     "config.model.num_querys is not a config field; did you mean config.model.num_queries?"),
    ("bad value", lambda d: _edit_config(d, lambda c: c["tracker"].update(matcher="gpu")), "config.json",
     r"config.tracker.matcher must be one of \('host', 'device'\), got 'gpu'"),
    ("legacy mode",
     lambda d: _edit_config(d, lambda c: (c.pop("association"), c["tracker"].update(mode="x"))),
     "config.json", "config.tracker.mode='x' is not one of"),
    ("no _METADATA", lambda d: (d / "params" / "_METADATA").unlink(), "params/_METADATA",
     "missing: .* is not a complete orbax checkpoint"),
    ("_METADATA not JSON", lambda d: (d / "params" / "_METADATA").write_text("{not json"), "params/_METADATA",
     "not valid JSON: .* at line 1 column 2"),
    ("corrupt array file", lambda d: _garble(_data_file(d)), "params/d/",
     "corrupt or incomplete params .*DATA_LOSS"),
    ("truncated array file", lambda d: open(_data_file(d), "r+b").truncate(100), "params/d/",
     "corrupt or incomplete params .*OUT_OF_RANGE"),
    ("corrupt manifest", lambda d: (d / "params" / "manifest.ocdbt").write_bytes(b"garbage"),
     "params/manifest.ocdbt", "corrupt or incomplete params .*DATA_LOSS"),
    ("fewer queries", lambda d: _edit_config(d, lambda c: c["model"].update(num_queries=12)), "params",
     r"parameter segmenter/predictor/query_embed has shape \(10, 64\), its .*config.json implies \(12, 64\)"),
    ("other tracker depth", lambda d: _edit_config(d, lambda c: c["tracker"].update(num_layers=4)), "params",
     r"parameter tracker/transformer_cross_attention_layers_A_3/.* that its .*config.json implies is "
     "missing"),
]


@pytest.mark.parametrize("what,breaks,names,says", BROKEN_CHECKPOINTS, ids=[c[0] for c in BROKEN_CHECKPOINTS])
def test_a_broken_converted_checkpoint_is_one_line_naming_the_file(shipped_copy, what, breaks, names, says):
  import re
  from o2vis_jax import cli
  from o2vis_jax.checkpoint_conversion.io import CheckpointError
  breaks(shipped_copy)
  with pytest.raises(CheckpointError) as error:
    cc.load_converted(str(shipped_copy))
  message = str(error.value)
  assert message.startswith(str(shipped_copy / names)), (what, message)
  assert re.search(says, message), (what, message)
  assert "\n" not in message and "tensorstore_spec" not in message, (what, message)
  assert isinstance(error.value, cli.input_error_types()), what     # scripts: one line, exit 2


def test_a_missing_checkpoint_directory_is_named(tmp_path):
  from o2vis_jax.checkpoint_conversion.io import CheckpointError
  with pytest.raises(CheckpointError, match=f"checkpoint {tmp_path / 'nope'} does not exist"):
    cc.load_converted(str(tmp_path / "nope"))


def test_params_are_checked_against_the_run_config(shipped_copy):
  """A training run's init_checkpoint must fit the run's model (`tasks.load_init_params`)."""
  from o2vis_jax import tasks
  from o2vis_jax.checkpoint_conversion.io import CheckpointError
  config, params = cc.load_converted(str(shipped_copy))
  assert sorted(params) == ["refiner", "segmenter", "tracker"]
  run = config.copy_and_resolve_references()
  run.model.num_classes = 40
  with pytest.raises(CheckpointError, match=r"config.init_checkpoint: .*params: parameter "
                                            r"segmenter/predictor/class_embed/bias has shape \(6,\), the "
                                            r"run's config implies \(41,\)"):
    tasks.load_init_params(str(shipped_copy), run)
  # The tracker's params are compared only when the run takes them (config.init_tracker).
  run = config.copy_and_resolve_references()
  run.tracker.num_layers = 2
  assert sorted(tasks.load_init_params(str(shipped_copy), run, ("segmenter",))) == ["refiner", "segmenter",
                                                                                     "tracker"]
  with pytest.raises(CheckpointError, match="tracker/transformer_cross_attention_layers_A_2/.* is not in "
                                            "the model the run's config describes"):
    tasks.load_init_params(str(shipped_copy), run, ("segmenter", "tracker"))


def test_a_config_written_before_the_association_seam_still_loads(shipped_copy):
  def legacy(content):
    del content["association"], content["training_free"], content["minvis"]
    content["tracker"]["mode"] = "trackers"
  _edit_config(shipped_copy, legacy)
  config, _ = cc.load_converted(str(shipped_copy))
  assert config.association.method == "o2vis"


@pytest.mark.parametrize("name,content", [("model_final.pkl", b"\x80\x04garbage"),
                                          ("weights.npz", b"PK\x03\x04 not a zip"),
                                          ("model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}")])
def test_an_unreadable_weight_file_is_named(tmp_path, name, content):
  from o2vis_jax.checkpoint_conversion.io import CheckpointError
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(CheckpointError, match=f"{path}: not a readable \\.{name.rsplit('.', 1)[1]} checkpoint"):
    cc.load_state_dict(str(path))
