"""scripts/evaluate.py on the synthetic dataset's ground truth, with the ground truth as results: AP 1."""

import json
import os
import subprocess
import sys

import pytest

from o2vis_jax.datasets import synthetic
from o2vis_jax.evaluation import results as results_lib

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_evaluate_script_on_synthetic_ground_truth(tmp_path):
  gt_json = synthetic.generate(str(tmp_path / "data"), "valid", 4, seed=3, size=64, num_frames=10)
  results = results_lib.ground_truth_to_results(gt_json)
  with open(gt_json) as f:
    assert len(results) == len(json.load(f)["annotations"]) > 0
  results_path = str(tmp_path / "results.json")
  results_lib.write_results(results_path, results)
  metrics_path = str(tmp_path / "metrics.json")
  out = subprocess.run([sys.executable, os.path.join(_REPO, "scripts", "evaluate.py"), "--gt", gt_json,
                        "--results", results_path, "--json_out", metrics_path],
                       capture_output=True, text=True, timeout=300, cwd=_REPO)
  assert out.returncode == 0, out.stdout + out.stderr
  with open(metrics_path) as f:
    metrics = json.load(f)
  for key in ("AP", "AP50", "AP75", "AR10", "AR100"):
    assert metrics[key] == pytest.approx(1.0, abs=1e-9), (key, metrics)
  # AR1 is below 1: maxDets=1 per (video, category), and the synthetic videos hold look-alikes of a class.
  assert 0.0 < metrics["AR1"] < 1.0
  assert "100.0" in out.stdout


def test_class_agnostic_scores_tracks_without_classes(tmp_path):
  """Every result re-labelled with a wrong category: class-aware AP 0, class-agnostic AP 1. A lower-scoring
  copy of a track with another category is dropped (the track counts once, at its best score)."""
  from o2vis_jax import evaluation
  gt_json = synthetic.generate(str(tmp_path / "data"), "valid", 3, seed=4, size=64, num_frames=8)
  results = results_lib.ground_truth_to_results(gt_json)
  num_categories = len(synthetic.CATEGORIES)
  wrong = [dict(r, category_id=r["category_id"] % num_categories + 1, score=0.9) for r in results]
  copies = [dict(r, category_id=r["category_id"] % num_categories + 1, score=0.2) for r in wrong]
  assert evaluation.evaluate(gt_json, wrong + copies)["AP"] == 0.0
  gt, agnostic = evaluation.class_agnostic(gt_json, wrong + copies)
  assert len(agnostic) == len(results) and {r["score"] for r in agnostic} == {0.9}
  assert gt["categories"] == [{"id": 1, "name": "object"}]
  metrics = evaluation.evaluate(gt, agnostic)
  for key in ("AP", "AP50", "AP75", "AR10"):
    assert metrics[key] == pytest.approx(1.0, abs=1e-9), (key, metrics)
  # Through the script: the same figures.
  path = str(tmp_path / "results.json")
  results_lib.write_results(path, wrong + copies)
  out = subprocess.run([sys.executable, os.path.join(_REPO, "scripts", "evaluate.py"), "--gt", gt_json,
                        "--results", path, "--class_agnostic", "--json_out", str(tmp_path / "m.json")],
                       capture_output=True, text=True, timeout=300, cwd=_REPO)
  assert out.returncode == 0, out.stdout + out.stderr
  with open(tmp_path / "m.json") as f:
    assert json.load(f)["AP"] == pytest.approx(1.0, abs=1e-9)
