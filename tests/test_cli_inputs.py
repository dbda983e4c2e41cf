"""The command lines on bad input (scripts/train.py, evaluate.py, convert_checkpoint.py, demo.py): each
fails before its expensive work with one line `error: ...` naming the flag, file or field, exit 2, no
traceback, and leaves what was already written alone. Subprocesses (each pays Python + JAX imports),
so only the cases a library test cannot show; the library's checks are tested in
test_config_validation.py and test_checkpoint_conversion.py."""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "assets", "synthetic_tiny")


def _run(script, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), *args],
                        capture_output=True, text=True, timeout=180, cwd=REPO, env=env)


def _error_line(process) -> str:
  """The one `error:` line of a failed run (absl's INFO log lines may precede it)."""
  assert process.returncode == 2, process.stdout[-2000:] + process.stderr[-2000:]
  assert "Traceback" not in process.stderr and "Event loop is closed" not in process.stderr, process.stderr
  errors = [line for line in process.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, process.stderr
  return errors[0]


@pytest.mark.parametrize("override,says", [
    ("--config.trian.x=1", "error: --config.trian.x=1: config.trian is not a config field; did you mean "
                           "config.train?"),
    ("--config.tracker.matcher=gpu", "error: config.tracker.matcher must be one of ('host', 'device'), "
                                     "got 'gpu'"),
    ("--config.data.synthetic_radius_range=0.2", "error: config.data.synthetic_radius_range=(0.2,) must "
                                                 "have 2 entries like the default (0.12, 0.2)"),
], ids=["misspelt", "matcher", "radius_range"])
def test_train_rejects_a_bad_config_before_anything_runs(tmp_path, override, says):
  workdir = tmp_path / "run"
  process = _run("train.py", "--config", "configs/synthetic_tiny.py", "--workdir", str(workdir), override)
  assert _error_line(process) == says
  assert not workdir.exists()            # nothing generated, trained or written


def test_train_rejects_a_broken_init_checkpoint(tmp_path):
  checkpoint = tmp_path / "ckpt"
  shutil.copytree(SHIPPED, checkpoint)
  (checkpoint / "params" / "_METADATA").write_text("{not json")
  process = _run("train.py", "--config", "configs/synthetic_tiny.py:tracker", "--workdir",
                 str(tmp_path / "run"), f"--config.init_checkpoint={checkpoint}")
  assert _error_line(process).startswith(
      f"error: config.init_checkpoint: {checkpoint}/params/_METADATA: not valid JSON")
  assert not (tmp_path / "run").exists()


def test_help_exits_0():
  process = _run("train.py", "--help")
  assert process.returncode == 0 and "--workdir" in process.stdout, process.stderr


def test_evaluate_checks_its_outputs_before_scoring(tmp_path):
  gt, results = tmp_path / "gt.json", tmp_path / "results.json"
  gt.write_text(json.dumps(dict(videos=[], annotations=[], categories=[dict(id=1, name="a")])))
  results.write_text("[]")
  missing = tmp_path / "missing" / "metrics.json"
  process = _run("evaluate.py", f"--gt={gt}", f"--results={results}", f"--json_out={missing}")
  assert _error_line(process) == (f"error: --json_out {str(missing)!r}: directory "
                                  f"{str(missing.parent)!r} does not exist")
  assert process.stdout == ""            # no table: nothing was scored


def test_evaluate_keeps_an_earlier_output_when_the_input_is_bad(tmp_path):
  gt, results = tmp_path / "gt.json", tmp_path / "results.json"
  gt.write_text(json.dumps(dict(videos=[], annotations=[], categories=[dict(id=1, name="a")])))
  results.write_text('[{"video_id": ')
  earlier = tmp_path / "metrics.json"
  earlier.write_text('{"AP": 0.5}')
  process = _run("evaluate.py", f"--gt={gt}", f"--results={results}", f"--json_out={earlier}")
  assert f"results {results}: not valid JSON" in _error_line(process)
  assert earlier.read_text() == '{"AP": 0.5}'
  assert sorted(os.listdir(tmp_path)) == ["gt.json", "metrics.json", "results.json"]


def test_convert_keeps_an_existing_checkpoint(tmp_path):
  existing = tmp_path / "converted"
  shutil.copytree(SHIPPED, existing)
  before = (existing / "config.json").read_text()
  source = tmp_path / "model_final.pkl"
  source.write_bytes(b"\x80\x04garbage")
  process = _run("convert_checkpoint.py", f"--input={source}", f"--output_dir={existing}")
  assert _error_line(process) == (f"error: --output_dir {str(existing)!r} already holds a checkpoint "
                                  "(config.json, params); choose a new directory (the existing one is kept)")
  assert (existing / "config.json").read_text() == before
  process = _run("convert_checkpoint.py", f"--input={source}", f"--output_dir={tmp_path / 'new'}")
  assert _error_line(process).startswith(f"error: {source}: not a readable .pkl checkpoint")
  assert not (tmp_path / "new").exists() and not (tmp_path / "new.incomplete").exists()


def test_demo_names_a_corrupt_checkpoint_file(tmp_path):
  checkpoint = tmp_path / "ckpt"
  shutil.copytree(SHIPPED, checkpoint)
  data_file = next((checkpoint / "params" / "d").iterdir())
  data = bytearray(data_file.read_bytes())
  data[2000:2100] = b"x" * 100
  data_file.write_bytes(bytes(data))
  process = _run("demo.py", f"--checkpoint={checkpoint}", f"--workdir={tmp_path / 'demo'}", "--reduced",
                 "--no_progress")
  assert _error_line(process).startswith(f"error: {data_file}: corrupt or incomplete params")
  assert not (tmp_path / "demo" / "data").exists()    # nothing generated before the checkpoint was read
