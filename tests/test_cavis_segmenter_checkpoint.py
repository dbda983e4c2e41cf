"""A CAVIS SEGMENTER-stage checkpoint (the authors' CAVIS_segmenter file, or the export of our segmenter stage):
its ReID head is the tracker of the segmenter stage, params['tracker'] = {'reid_embed'} of method 'cavis'.
It converts (the transposed torch weights, exactly), round-trips through save_converted / load_converted,
starts the tracker stage (the head kept, CAIT fresh), and inference with 'cavis' refuses it in one line.

The state dict is the tiny `cavis_segmenter_r50` layout of tests/fixtures/checkpoint_layouts.json (the authors'
key names and shapes at C 32, N 8, K 5; random values)."""

import os
import sys

import jax
import numpy as np
import pytest

from configs import cavis_tiny
from o2vis_jax import association, inference, tasks
from o2vis_jax.association.cavis import convert
from o2vis_jax.checkpoint_conversion import io as checkpoint_io, released
from o2vis_jax.checkpoint_conversion.errors import ConversionError
from o2vis_jax.checkpoint_conversion.io import CheckpointError
from test_released_checkpoints import HEADS, state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REID = "sem_seg_head.predictor.reid_embed.layers."
MESSAGE = ("association method 'cavis' needs its trained tracker; {source} holds only the segmenter stage's "
           "['reid_embed']: train the tracker stage (train.task='tracker', config.init_checkpoint={init}) or "
           "run a training-free method")


@pytest.fixture(scope="module")
def segmenter_file():
  return state_dict("cavis_segmenter_r50", "tiny", seed=5)


@pytest.fixture(scope="module")
def converted_dir(segmenter_file, tmp_path_factory):
  out = released.convert_state_dict(segmenter_file, num_heads=HEADS, where="cavis_segmenter.pkl")
  directory = str(tmp_path_factory.mktemp("cavis_segmenter") / "converted")
  checkpoint_io.save_converted(directory, out.config, out.params)
  return directory


@pytest.fixture(scope="module")
def loaded(converted_dir):
  return checkpoint_io.load_converted(converted_dir)


def _run_config(converted_config, directory, init_tracker):
  """The tracker stage's config: the converted one (its segmenter), CAIT shrunk (it starts fresh)."""
  config = converted_config.copy_and_resolve_references()
  config.train.task = "tracker"
  config.init_checkpoint = directory
  config.init_tracker = init_tracker
  config.association.cavis.update(num_layers=1, ffn_dim=16)
  return config


def test_the_reid_head_converts_into_the_segmenter_stage_tracker(segmenter_file):
  out = released.convert_state_dict(segmenter_file, num_heads=HEADS, where="cavis_segmenter.pkl")
  assert sorted(out.params) == ["segmenter", "tracker"] and out.unconverted == {}
  assert list(out.params["tracker"]) == ["reid_embed"]
  head = out.params["tracker"]["reid_embed"]
  assert sorted(head) == ["layers_0", "layers_1", "layers_2"]
  for m in range(3):
    weight, bias = segmenter_file[f"{REID}{m}.weight"], segmenter_file[f"{REID}{m}.bias"]
    np.testing.assert_array_equal(head[f"layers_{m}"]["kernel"], weight.T)
    np.testing.assert_array_equal(head[f"layers_{m}"]["bias"], bias)
  section = out.config.association.cavis
  assert out.config.association.method == "cavis"
  assert (section.reid_hidden_dim, section.num_reid_head_layers, section.context_filter_size, section.num_heads) \
      == (segmenter_file[f"{REID}0.weight"].shape[0], 3, 9, HEADS)
  assert segmenter_file[f"{REID}0.weight"].shape[1] == 2 * out.config.model.hidden_dim == 64
  assert ("converted: CAVIS segmenter-stage ReID head -> tracker/reid_embed; the CAVIS tracker stage starts "
          "from it") in out.note_text()
  assert "kept unconverted" not in out.note_text()
  assert checkpoint_io.segmenter_stage_only(out.config, out.params)
  bare = {k[len(convert.HEAD_PREFIX):]: v for k, v in segmenter_file.items()
          if k.startswith(convert.REID_PREFIX) or k == convert.LAPLACIAN_KEY}
  _, params = convert.reid_head_from_reference(bare, num_heads=HEADS)   # the bare keys convert the same
  jax.tree.map(np.testing.assert_array_equal, params, out.params["tracker"])


def test_a_wrong_laplacian_or_head_is_refused(segmenter_file):
  wrong = dict(segmenter_file)
  wrong["sem_seg_head.predictor.laplacian"] = np.ones((1, 1, 3, 3), np.float32)
  with pytest.raises(ConversionError, match="laplacian is .* expected the 8-neighbour Laplacian"):
    released.convert_state_dict(wrong, num_heads=HEADS)
  misshaped = dict(segmenter_file)
  misshaped[f"{REID}1.bias"] = np.zeros(3, np.float32)
  with pytest.raises(ConversionError, match=r"mis-shaped \(1\): \['reid_embed.layers.1.bias: \(3,\)"):
    released.convert_state_dict(misshaped, num_heads=HEADS)


def test_save_and_load_round_trip(segmenter_file, converted_dir):
  config, params = checkpoint_io.load_converted(converted_dir)
  assert config.association.method == "cavis" and sorted(params) == ["segmenter", "tracker"]
  assert checkpoint_io.segmenter_stage_only(config, params)
  for m in range(3):
    np.testing.assert_array_equal(params["tracker"]["reid_embed"][f"layers_{m}"]["kernel"],
                                  segmenter_file[f"{REID}{m}.weight"].T)


@pytest.mark.parametrize("init_tracker", [False, True])
def test_the_tracker_stage_starts_from_it(converted_dir, loaded, init_tracker):
  converted_config, converted = loaded
  config = _run_config(converted_config, converted_dir, init_tracker)
  task = tasks.TrackingTask(config)
  rng = jax.random.PRNGKey(3)
  tracker, frozen = task.init_params(rng)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(tracker["reid_embed"]),
               converted["tracker"]["reid_embed"])
  model = config.model
  fresh = association.method_of(config).init_params(config, jax.random.split(rng)[1],
                                                    num_classes=model.num_classes, hidden_dim=model.hidden_dim)
  assert sorted(tracker) == sorted(fresh) and len(fresh) > 1
  for name in fresh:
    if name != "reid_embed":
      jax.tree.map(np.testing.assert_array_equal, jax.device_get(tracker[name]), fresh[name])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(frozen["segmenter"]), converted["segmenter"])


def test_inference_refuses_it_in_one_line(converted_dir, loaded):
  config, params = loaded
  with pytest.raises(ValueError) as error:
    inference.VideoPredictor.from_config(config, params)
  assert str(error.value) == MESSAGE.format(source="the checkpoint", init="<this checkpoint>")
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  try:
    import demo
  finally:
    sys.path.pop(0)
  with pytest.raises(demo.cli.InputError) as error:
    demo.check_weights(converted_dir, config, True, ["training_free", "cavis"], params)
  assert str(error.value) == "--methods cavis: " + MESSAGE.format(source=converted_dir, init=converted_dir)
  demo.check_weights(converted_dir, config, True, ["training_free"], params)   # training-free rows run
  refiner_config = _run_config(config, converted_dir, True)
  refiner_config.train.task = "refiner"
  with pytest.raises(ValueError, match=r"runs the frozen online model: association method 'cavis' needs its "
                                       r"trained tracker"):
    tasks.RefinerTask(refiner_config).init_params(jax.random.PRNGKey(0))


def test_infer_refuses_it_before_any_frame_runs(converted_dir, tmp_path):
  import subprocess
  from PIL import Image
  frames = tmp_path / "frames"
  frames.mkdir()
  for t in range(2):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(frames / f"{t:05d}.jpg")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "infer.py"), "--checkpoint", converted_dir,
                        "--input", str(frames), "--output", str(tmp_path / "r.json"), "--no_progress"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
  assert run.returncode != 0 and not (tmp_path / "r.json").exists()
  lines = [line for line in run.stderr.splitlines() if line.strip()]
  assert lines[-1] == "error: " + MESSAGE.format(source=converted_dir, init=converted_dir), run.stderr[-2000:]


def test_a_full_tracker_is_checked_whole(loaded):
  config, params = loaded[0].copy_and_resolve_references(), loaded[1]
  config.association.cavis.update(num_layers=1, ffn_dim=16)
  model = config.model
  full = association.method_of(config).init_params(config, jax.random.PRNGKey(0), num_classes=model.num_classes,
                                                   hidden_dim=model.hidden_dim)
  whole = {"segmenter": params["segmenter"], "tracker": full}
  assert not checkpoint_io.segmenter_stage_only(config, whole)
  checkpoint_io.check_param_shapes(whole, config, "ckpt", "the config")
  one_missing = dict(full, class_embed={"kernel": full["class_embed"]["kernel"]})
  with pytest.raises(CheckpointError, match=r"^ckpt: parameter tracker/class_embed/bias \(6,\) that the config "
                                            r"implies is missing$"):
    checkpoint_io.check_param_shapes({"segmenter": params["segmenter"], "tracker": one_missing}, config, "ckpt",
                                     "the config")
  some_missing = {"reid_embed": full["reid_embed"], "class_embed": full["class_embed"]}   # not the stage's subset
  with pytest.raises(CheckpointError, match="parameter tracker/.* is missing"):
    checkpoint_io.check_param_shapes({"segmenter": params["segmenter"], "tracker": some_missing}, config,
                                     "ckpt", "the config")
  wrong_head = {"reid_embed": dict(full["reid_embed"], layers_2={"kernel": np.zeros((32, 31), np.float32),
                                                                 "bias": np.zeros(31, np.float32)})}
  with pytest.raises(CheckpointError, match=r"tracker/reid_embed/layers_2/bias has shape \(31,\)"):
    checkpoint_io.check_param_shapes({"segmenter": params["segmenter"], "tracker": wrong_head}, config, "ckpt",
                                     "the config")


def test_the_segmenter_stage_exports_only_its_subtrees():
  config = cavis_tiny.get_config("segmenter")
  task = tasks.SegmenterTask(config)
  trained = {"segmenter": {"w": np.ones(2)}, "tracker": {"reid_embed": {"b": np.zeros(3)},
                                                         "class_embed": {"b": np.ones(1)}}}
  exported = task.export_params(trained)
  assert exported == {"segmenter": trained["segmenter"], "tracker": {"reid_embed": trained["tracker"]["reid_embed"]}}
