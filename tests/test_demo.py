"""The README's main command: scripts/demo.py with the shipped checkpoint (assets/synthetic_tiny) prints its
table, its numbers are what the evaluator gives on its results and the README's figures; the overlay's
labels stay inside the frame and off each other. One default run checks all of it: a `--reduced` run
(3 videos of 12 frames, the same code path) would cost about as much, compiling the same programs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from o2vis_jax import evaluation, visualize

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_demo(workdir, *flags):
  """scripts/demo.py with the shipped checkpoint into `workdir`; the finished process."""
  out = subprocess.run([sys.executable, os.path.join(_REPO, "scripts", "demo.py"), *flags, "--no_progress",
                        "--workdir", str(workdir)], capture_output=True, text=True, timeout=900, cwd=_REPO)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  return out


def test_demo_default_run_table_outputs_and_figures_of_the_shipped_checkpoint(tmp_path):
  """The README's main command as a new user runs it (one run: it is the suite's longest subprocess).

  Its table, its demo_metrics.json keyed by registry names with the evaluators' numbers on the written
  results files, quiet output and an overlay; and the README's figures for the shipped checkpoint on the
  default held-out split (20 videos, seed 20000): O2VIS AP 27.9, AssA 53.8; no memory + Hungarian (Table
  3(a) row 1) AP 18.2, AssA 48.6. Asserted with a margin that float reduction order cannot cross (a
  changed checkpoint, generator or evaluator moves them by far more). On other splits the margins are
  smaller (README "The synthetic demo")."""
  checkpoint = os.path.join(_REPO, "assets", "synthetic_tiny")
  assert os.path.isfile(os.path.join(checkpoint, "config.json")), "the shipped demo checkpoint is missing"
  out = _run_demo(tmp_path)
  lines = out.stdout.splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith("method"))
  assert lines[header].split()[1:] == ["AP", "AP50", "AP75", "AR1", "AR10", "HOTA", "AssA", "IDF1"]
  rows = lines[header + 2:header + 5]
  assert [r.split("  ")[0].strip() for r in rows] == [
      "O2VIS (IOM + OHM + T_E + T_A)", "IOM + OHM, no trackers", "no memory + Hungarian"]
  with open(tmp_path / "demo_metrics.json") as f:
    metrics = json.load(f)
  # Keyed by registry names; o2vis_offline where the checkpoint holds a refiner.
  assert list(metrics)[:3] == ["o2vis", "training_free", "minvis"]
  assert set(list(metrics)[3:]) <= {"o2vis_offline"}
  # The printed and saved figures are the evaluators' on the written results files.
  gt = str(tmp_path / "data" / "valid.json")
  with open(gt) as f:
    assert len(json.load(f)["videos"]) == 20
  for label, name in (("O2VIS (IOM + OHM + T_E + T_A)", "o2vis"), ("no memory + Hungarian", "minvis")):
    results = str(tmp_path / f"results_{name}.json")
    again = evaluation.evaluate(gt, results)
    again.update(evaluation.tracking_metrics(gt, results))
    assert sorted(metrics[name]) == sorted(["AP", "AP50", "AP75", "AR1", "AR10", "HOTA", "AssA", "IDF1"])
    for key in ("AP", "AP50", "AR10", "HOTA", "AssA", "IDF1"):
      assert metrics[name][key] == pytest.approx(again[key], abs=1e-12)
      assert 0.0 <= metrics[name][key] <= 1.0
    row = next(r for r in rows if r.startswith(label))
    assert float(row[len(label):].split()[0]) == pytest.approx(100 * metrics[name]["AP"], abs=0.051)
    assert float(row[len(label):].split()[5]) == pytest.approx(100 * metrics[name]["HOTA"], abs=0.051)
  # Quiet by default: no orbax INFO lines, no JAX fork warning (ffmpeg is started without preexec_fn).
  assert "orbax" not in out.stderr and "os.fork()" not in out.stderr, out.stderr[-2000:]
  overlays = [p for p in os.listdir(tmp_path) if p.startswith("overlay")]
  assert overlays and os.path.getsize(tmp_path / overlays[0]) > 0

  o2vis, no_memory = metrics["o2vis"], metrics["minvis"]
  assert o2vis["AP"] == pytest.approx(0.279, abs=0.01), o2vis
  assert no_memory["AP"] == pytest.approx(0.182, abs=0.01), no_memory
  assert o2vis["AssA"] == pytest.approx(0.538, abs=0.01) and no_memory["AssA"] == pytest.approx(0.486, abs=0.01)
  assert o2vis["AP"] > no_memory["AP"] + 0.05 and o2vis["AssA"] > no_memory["AssA"] + 0.04


def test_overlay_labels_inside_the_frame_and_apart():
  # Three masks with the same top-left corner, one at the right edge: their labels are drawn inside the
  # 40 x 64 frame and do not overlap (each later one moves below the earlier ones).
  frame = np.zeros((40, 64, 3), np.uint8)
  masks = np.zeros((3, 40, 64), bool)
  masks[0, 2:20, 2:20] = masks[1, 2:12, 2:12] = True
  masks[2, 0:10, 58:64] = True
  placed = []
  for mask in masks:
    ys, xs = np.nonzero(mask)
    placed.append(visualize._label_box(int(xs.min()), int(ys.min()), 30, 9, 64, 40, placed))
  for x0, y0, x1, y1 in placed:
    assert 0 <= x0 and x1 < 64 and 0 <= y0 and y1 < 40, placed
  for i, a in enumerate(placed):
    for b in placed[i + 1:]:
      assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
  drawn = visualize.overlay_frame(frame, masks, [0, 1, 2], labels=["circle #0", "star #1", "ring #2"])
  assert drawn.shape == frame.shape and (drawn[:, 34:58] > 0).any()   # the edge label moved left.
