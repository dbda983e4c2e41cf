"""CAVIS through the command lines: a whole CAVIS checkpoint file converts (segmenter + association method
'cavis', told apart from LOMM's tracker.* files), scripts/convert_checkpoint.py names the method, the demo
has its row, and scripts/infer.py --method cavis runs the tiny model end to end."""

import json
import os
import pickle
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

import segmenter_fixture
from o2vis_jax import association, checkpoint_conversion as cc
from o2vis_jax.association.cavis import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, JAX_PLATFORMS="cpu",
           JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "o2vis_jax_test_jax_cache"),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")


def cavis_checkpoint(path, segmenter_state_dict, hidden_dim, num_classes):
  """A detectron2-style CAVIS online file: the segmenter, the ReID head, the Laplacian, the tracker (random
  values of the authors' key names and shapes)."""
  rng = np.random.default_rng(0)
  checkpoint = dict(segmenter_state_dict)
  table = convert.expected_table(hidden_dim, num_classes, ffn_dim=24, num_layers=6, reid_hidden_dim=12,
                                 num_reid_head_layers=3)
  for key, (shape, _) in table.items():
    name = (convert.HEAD_PREFIX + key if key.startswith("reid_embed.") or key == "laplacian"
            else convert.TRACKER_PREFIX + key)
    checkpoint[name] = (convert.LAPLACIAN.reshape(1, 1, 3, 3) if key == "laplacian"
                        else rng.normal(size=shape)).astype(np.float32)
  with open(path, "wb") as f:
    pickle.dump({"model": checkpoint}, f)
  return str(path)


def test_whole_cavis_checkpoint_converts_and_the_cli_names_the_method(tmp_path):
  state_dict, _, _ = segmenter_fixture.load()
  segmenter = segmenter_fixture.hf_to_detectron2(state_dict)
  path = cavis_checkpoint(tmp_path / "cavis_online.pkl", segmenter, 32, 5)
  config, params = cc.convert_file(path, num_heads=4)
  assert config.association.method == "cavis" and sorted(params) == ["segmenter", "tracker"]
  assert config.association.cavis.num_layers == 6 and config.association.cavis.context_filter_size == 9
  assert params["tracker"]["reid_embed"]["layers_0"]["kernel"].shape == (64, 12)
  out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "convert_checkpoint.py"), "--input",
                        path, "--output_dir", str(tmp_path / "converted"), "--num_heads", "4"],
                       capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "association method 'cavis'" in out.stdout, out.stdout
  loaded_config, _ = cc.load_converted(str(tmp_path / "converted"))
  assert loaded_config.association.method == "cavis"
  assert loaded_config.association.cavis.reid_hidden_dim == 12


def test_demo_has_a_cavis_row():
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  try:
    import demo
  finally:
    sys.path.pop(0)
  from o2vis_jax import defaults
  config = demo.method_config(defaults.base_config(), "cavis")
  assert association.method_of(config).name == "cavis"
  assert demo.ROWS["cavis"][0].startswith("CAVIS")


def test_infer_method_cavis_runs_end_to_end(tmp_path):
  frames = tmp_path / "frames"
  frames.mkdir()
  rng = np.random.default_rng(0)
  for t in range(5):
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(frames / f"{t:05d}.jpg")
  output = tmp_path / "r.json"
  run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "infer.py"), "--config",
                        os.path.join(ROOT, "configs", "tiny.py"), "--method", "cavis", "--input", str(frames),
                        "--output", str(output), "--chunk_size", "2", "--no_progress"],
                       capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(output) as f:
    results = json.load(f)
  assert len(results) == 10   # config.inference.max_num
  assert all(len(r["segmentations"]) == 5 and 0 < r["score"] < 1 for r in results)
