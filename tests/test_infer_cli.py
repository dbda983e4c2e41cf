"""scripts/infer.py as a user runs it: bad input fails early in one line naming the file, frame or
flag (exit 2, before the model loads); an unreadable video or Ctrl-C in a dataset run keeps the
finished videos for --resume; a truncated video runs only with --allow_partial, and says so.

Each test is a subprocess (about 2 s to start). Most stop before the model, or run with
`tests.fake_predictor` in place of the model; one runs the real tiny model end to end.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "infer.py")
TINY = os.path.join(ROOT, "configs", "tiny.py")
MODEL_LOADS = "random weights"   # what infer.py logs once the model is being built


def _infer(*args, fake=False, interrupt_at=None):
  """Runs infer.py with `args`; fake: with `tests.fake_predictor` instead of the model."""
  if fake:
    code = (f"import runpy, sys; sys.path.insert(0, {ROOT!r}); from tests import fake_predictor; "
            f"fake_predictor.install(interrupt_at={interrupt_at!r}); "
            f"sys.argv = {[SCRIPT, *args]!r}; runpy.run_path({SCRIPT!r}, run_name='__main__')")
    command = [sys.executable, "-c", code]
  else:
    command = [sys.executable, SCRIPT, *args]
  env = dict(os.environ, JAX_PLATFORMS="cpu",   # the compilations of earlier runs are reused
             JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "o2vis_jax_test_jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def _error_line(run):
  """The one `error:` line of a failed run (and nothing like a usage text or a traceback)."""
  errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
  return errors[0]


def _frames_dir(path, num=3, height=24, width=32):
  os.makedirs(path, exist_ok=True)
  for t in range(num):
    frame = np.full((height, width, 3), 30 * t, np.uint8)
    Image.fromarray(frame).save(os.path.join(path, f"{t:05d}.jpg"))
  return str(path)


def _dataset(tmp_path, num_videos=3):
  frames = tmp_path / "JPEGImages"
  videos = []
  for v in range(num_videos):
    _frames_dir(frames / f"clip{v}")
    videos.append(dict(id=v + 1, file_names=[f"clip{v}/{t:05d}.jpg" for t in range(3)]))
  path = tmp_path / "valid.json"
  path.write_text(json.dumps(dict(videos=videos, categories=[dict(id=7, name="cat"),
                                                              dict(id=9, name="dog")])))
  return str(path), str(frames)


def test_help_exits_0_and_a_usage_error_is_one_line():
  run = _infer("--help")
  assert run.returncode == 0, run.stderr[-2000:]
  for flag in ("--[no]allow_partial", "--[no]resume", "--[no]skip_unreadable", "--[no]no_progress"):
    assert flag in run.stdout, f"{flag} missing from --help"
  run = _infer("--config", TINY, "--input", "clip.mp4", "--resume")
  assert run.returncode == 2
  assert run.stderr.strip().splitlines() == ["error: --resume applies to --dataset_json only",
                                             "see --help"], run.stderr[-2000:]


def test_every_output_is_checked_before_the_model_loads(tmp_path):
  frames = _frames_dir(tmp_path / "frames")
  (tmp_path / "a_file").write_text("x")
  (tmp_path / "r.zip").mkdir()
  cases = {   # flag: (extra arguments, what the message says)
      "output": (["--output", str(tmp_path)], "is a directory"),
      "png_masks": (["--png_masks", str(tmp_path / "a_file")], "is not a directory"),
      "overlay": (["--overlay", str(tmp_path / "overlay.png")], "not an overlay format"),
      "zip": (["--zip"], "is a directory"),
  }
  for flag, (extra, says) in cases.items():
    run = _infer("--config", TINY, "--input", frames, "--output", str(tmp_path / "r.json"), *extra)
    assert run.returncode == 2, f"--{flag}: {run.stderr[-2000:]}"
    line = _error_line(run)
    assert f"--{flag}" in line and says in line, line
    assert MODEL_LOADS not in run.stderr, f"--{flag} was checked only after the model loaded"
  assert not (tmp_path / "r.json").exists()


def test_truncated_video_stops_before_the_model_and_names_the_frame(tmp_path):
  import imageio.v2 as imageio
  path = str(tmp_path / "clip.mp4")
  writer = imageio.get_writer(path, fps=10, macro_block_size=1,
                              output_params=["-movflags", "+faststart"])   # index at the front
  rng = np.random.default_rng(0)
  for _ in range(20):
    writer.append_data(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
  writer.close()
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  run = _infer("--config", TINY, "--input", path, "--output", str(tmp_path / "r.json"))
  assert run.returncode == 2, run.stderr[-2000:]
  line = _error_line(run)
  assert "clip.mp4" in line and "decoding stops at frame" in line and "--allow_partial" in line, line
  assert "ffmpeg version" not in run.stderr and "pip install" not in run.stderr
  assert MODEL_LOADS not in run.stderr and not (tmp_path / "r.json").exists()


def test_dataset_run_keeps_finished_videos_through_a_bad_frame_and_resumes(tmp_path):
  dataset_json, frames = _dataset(tmp_path)
  output = str(tmp_path / "out" / "results.json")
  os.makedirs(os.path.dirname(output))
  partial = output + ".partial.jsonl"
  common = ["--config", TINY, "--dataset_json", dataset_json, "--frames_dir", frames, "--output",
            output, "--png_masks", str(tmp_path / "masks"), "--no_progress"]

  # A missing frame file is found before the model loads.
  os.rename(os.path.join(frames, "clip2", "00002.jpg"), str(tmp_path / "aside.jpg"))
  run = _infer(*common, fake=True)
  line = _error_line(run)
  assert run.returncode == 2 and "video 3 (clip2): frame 2" in line and "00002.jpg" in line, line
  assert "--skip_unreadable" in line and MODEL_LOADS not in run.stderr
  os.rename(str(tmp_path / "aside.jpg"), os.path.join(frames, "clip2", "00002.jpg"))

  # A corrupt JPEG in the middle of video 2: the run stops there, video 1 is kept.
  bad = os.path.join(frames, "clip1", "00001.jpg")
  good = open(bad, "rb").read()
  with open(bad, "wb") as f:
    f.write(good[:len(good) // 2])
  run = _infer(*common, fake=True)
  assert run.returncode == 2, run.stderr[-3000:]
  line = _error_line(run)
  for says in ("frame 1", "clip1/00001.jpg", "video '2 (clip1)'", partial, "--resume",
               "--skip_unreadable"):
    assert says in line, f"{says!r} missing from: {line}"
  with open(partial) as f:
    assert [json.loads(l).get("video_id") for l in f] == [None, 1]   # header, video 1
  assert sorted(os.listdir(tmp_path / "masks" / "clip0")) == ["00000.png", "00001.png", "00002.png"]
  assert not os.path.exists(output)

  # The same command again: the unfinished record is not overwritten.
  run = _infer(*common, fake=True)
  assert run.returncode == 2 and partial in _error_line(run) and "--resume" in _error_line(run)

  # --resume --skip_unreadable: video 1 not rerun, video 2 left out (and said), video 3 run.
  run = _infer(*common, "--resume", "--skip_unreadable", "--zip", fake=True)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "1 of 3 videos finished" in run.stdout, run.stdout
  assert "2 (clip1)" in run.stderr and "left out" in run.stderr
  with open(output) as f:
    assert sorted({r["video_id"] for r in json.load(f)}) == [1, 3]
  assert os.path.exists(output[:-len(".json")] + ".zip") and not os.path.exists(partial)


def test_ctrl_c_in_a_dataset_run_keeps_the_finished_videos(tmp_path):
  dataset_json, frames = _dataset(tmp_path)
  output = str(tmp_path / "results.json")
  run = _infer("--config", TINY, "--dataset_json", dataset_json, "--frames_dir", frames,
               "--output", output, "--no_progress", fake=True, interrupt_at=2)
  assert run.returncode == 130, run.stderr[-3000:]
  last = run.stderr.strip().splitlines()[-1]
  assert last.startswith("interrupted: the 1 finished videos are kept in") and "--resume" in last, last
  with open(output + ".partial.jsonl") as f:
    assert [json.loads(l).get("video_id") for l in f] == [None, 1]


def test_allow_partial_runs_the_model_on_the_frames_that_decode(tmp_path):
  # The real tiny model, end to end: results, PNG masks and overlay of the frames read, with
  # progress bars for the masks and the overlay.
  import imageio.v2 as imageio
  path = str(tmp_path / "clip.mp4")
  writer = imageio.get_writer(path, fps=10, macro_block_size=1,
                              output_params=["-movflags", "+faststart"])
  rng = np.random.default_rng(0)
  for _ in range(12):
    writer.append_data(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
  writer.close()
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  output = str(tmp_path / "r.json")
  run = _infer("--config", TINY, "--input", path, "--allow_partial", "--output", output,
               "--png_masks", str(tmp_path / "masks"), "--overlay", str(tmp_path / "overlay.gif"),
               "--chunk_size", "4")
  assert run.returncode == 0, run.stderr[-3000:]
  warnings = [line for line in run.stderr.splitlines() if "--allow_partial" in line]
  assert len(warnings) == 1 and "clip.mp4" in warnings[0] and "decoding stops at frame" in warnings[0]
  with open(output) as f:
    results = json.load(f)
  read = len(results[0]["segmentations"])
  assert 0 < read < 12 and f"running on the {read} frames" in warnings[0]
  assert len(os.listdir(tmp_path / "masks")) == read
  with Image.open(tmp_path / "overlay.gif") as gif:
    assert gif.n_frames == read
  assert "png masks clip" in run.stderr and "overlay clip" in run.stderr, "no progress bar"
