"""The README's main command in a reduced mode: scripts/demo.py --reduced with the shipped checkpoint
(assets/synthetic_tiny) prints its table, and its numbers are what the evaluator gives on its results."""

import json
import os
import subprocess
import sys

import pytest

from o2vis_jax import evaluation

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_demo(workdir, *flags):
  """scripts/demo.py with the shipped checkpoint into `workdir`; the finished process."""
  out = subprocess.run([sys.executable, os.path.join(_REPO, "scripts", "demo.py"), *flags, "--no_progress",
                        "--workdir", str(workdir)], capture_output=True, text=True, timeout=900, cwd=_REPO)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out


def test_demo_reduced(tmp_path):
  checkpoint = os.path.join(_REPO, "assets", "synthetic_tiny")
  assert os.path.isfile(os.path.join(checkpoint, "config.json")), "the shipped demo checkpoint is missing"
  out = _run_demo(tmp_path, "--reduced")
  lines = out.stdout.splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith("method"))
  assert lines[header].split()[1:] == ["AP", "AP50", "AP75", "AR1", "AR10"]
  rows = lines[header + 2:header + 5]
  assert [r.split("  ")[0].strip() for r in rows] == [
      "O2VIS (IOM + OHM + T_E + T_A)", "IOM + OHM, no trackers", "no memory + Hungarian"]
  with open(tmp_path / "demo_metrics.json") as f:
    metrics = json.load(f)
  # The printed and saved figures are the evaluator's on the written results files.
  gt = str(tmp_path / "data" / "valid.json")
  for label, name in (("O2VIS (IOM + OHM + T_E + T_A)", "o2vis"), ("no memory + Hungarian", "minvis")):
    again = evaluation.evaluate(gt, str(tmp_path / f"results_{name}.json"))
    for key in ("AP", "AP50", "AR10"):
      assert metrics[label][key] == pytest.approx(again[key], abs=1e-12)
      assert 0.0 <= metrics[label][key] <= 1.0
    row = next(r for r in rows if r.startswith(label))
    assert float(row[len(label):].split()[0]) == pytest.approx(100 * metrics[label]["AP"], abs=0.051)
  overlays = [p for p in os.listdir(tmp_path) if p.startswith("overlay")]
  assert overlays and os.path.getsize(tmp_path / overlays[0]) > 0


def test_demo_default_split_o2vis_ahead_of_no_memory_baseline(tmp_path):
  """The README's claim for the shipped checkpoint, on the demo's default held-out split (20 videos, seed
  20000): the full O2VIS scores a higher AP than no memory + Hungarian (Table 3(a) row 1)."""
  _run_demo(tmp_path)
  with open(tmp_path / "demo_metrics.json") as f:
    metrics = json.load(f)
  o2vis, no_memory = metrics["O2VIS (IOM + OHM + T_E + T_A)"], metrics["no memory + Hungarian"]
  assert o2vis["AP"] > no_memory["AP"], (o2vis, no_memory)
  assert o2vis["AR10"] > no_memory["AR10"], (o2vis, no_memory)
  with open(tmp_path / "data" / "valid.json") as f:
    assert len(json.load(f)["videos"]) == 20
