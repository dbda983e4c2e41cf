"""HOTA / DetA / AssA / IDF1 through TrackEval (o2vis_jax/evaluation/tracking.py) on hand-made cases whose
values follow from the metrics' definitions, worked out in each test's comment."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from o2vis_jax.evaluation import tracking
from o2vis_jax.evaluation.results import encode_masks

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, FRAMES = 16, 4
# Two objects of category 1, at fixed places, visible in every frame.
BOXES = {1: (1, 1, 6, 6), 2: (9, 9, 14, 14)}


def _mask(box):
  mask = np.zeros((SIZE, SIZE), bool)
  x0, y0, x1, y1 = box
  mask[y0:y1, x0:x1] = True
  return mask


def _segmentations(objects_per_frame):
  """[object key or None per frame] -> per-frame compressed RLE / null."""
  return [None if key is None else encode_masks(_mask(BOXES[key])[None])[0] for key in objects_per_frame]


def _ground_truth():
  return {"videos": [{"id": 1, "width": SIZE, "height": SIZE, "length": FRAMES,
                      "file_names": [f"v/{t}.jpg" for t in range(FRAMES)]}],
          "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
          "annotations": [{"id": key, "video_id": 1, "category_id": 1, "iscrowd": 0,
                           "segmentations": _segmentations([key] * FRAMES),
                           "areas": [25.0] * FRAMES} for key in BOXES]}


def _result(objects_per_frame, score=0.9, category_id=1):
  return {"video_id": 1, "category_id": category_id, "score": score,
          "segmentations": _segmentations(objects_per_frame)}


def test_perfect_tracks_score_one():
  metrics = tracking.tracking_metrics(_ground_truth(), [_result([1] * FRAMES), _result([2] * FRAMES)])
  for name in tracking.TRACKING_METRIC_NAMES:
    assert metrics[name] == pytest.approx(1.0, abs=1e-12), (name, metrics)


def test_one_track_split_in_two():
  # Object 1 is followed by track A in frames 0-1 and by track B in frames 2-3 (object 2 perfect).
  # Every mask is exact, so all 8 detections are TPs at every alpha: DetA = 1. HOTA's association
  # accuracy of a TP c is |TPA| / (|TPA| + |FNA| + |FPA|): for object 1's TPs 2 / (2 + 2 + 0) = 1/2, for
  # object 2's 4 / 4 = 1; AssA = mean over the 8 TPs = (4 * 1/2 + 4 * 1) / 8 = 3/4; HOTA = sqrt(DetA AssA).
  # IDF1: the best one-to-one id match pairs object 1 with A (or B): IDTP = 2 + 4 = 6, IDFN = 8 - 6 = 2,
  # IDFP = 8 - 6 = 2, IDF1 = 2 IDTP / (2 IDTP + IDFN + IDFP) = 12 / 16.
  results = [_result([1, 1, None, None]), _result([None, None, 1, 1]), _result([2] * FRAMES)]
  metrics = tracking.tracking_metrics(_ground_truth(), results)
  assert metrics["DetA"] == pytest.approx(1.0, abs=1e-12)
  assert metrics["AssA"] == pytest.approx(0.75, abs=1e-12)
  assert metrics["HOTA"] == pytest.approx(math.sqrt(0.75), abs=1e-12)
  assert metrics["IDF1"] == pytest.approx(0.75, abs=1e-12)


def test_identity_switch_between_two_lookalikes():
  # Track A follows object 1 then object 2 from frame 2, track B the other way round: an identity switch.
  # DetA = 1 again; each TP's association: TPA 2, FNA 2 (its object with the other track), FPA 2 (its
  # track on the other object): 2 / 6 = 1/3 = AssA; HOTA = sqrt(1/3). IDF1: IDTP = 2 + 2, IDFN = IDFP = 4,
  # IDF1 = 8 / 16.
  results = [_result([1, 1, 2, 2]), _result([2, 2, 1, 1])]
  metrics = tracking.tracking_metrics(_ground_truth(), results)
  assert metrics["DetA"] == pytest.approx(1.0, abs=1e-12)
  assert metrics["AssA"] == pytest.approx(1 / 3, abs=1e-12)
  assert metrics["HOTA"] == pytest.approx(math.sqrt(1 / 3), abs=1e-12)
  assert metrics["IDF1"] == pytest.approx(0.5, abs=1e-12)


def test_score_threshold_and_wrong_class():
  # A low-score duplicate is not part of the tracker's output (score < threshold). Object 2 predicted as
  # category 2: a false positive in class 2 and a miss in class 1. Pooled over classes: TP 4, FN 4,
  # FP 4: DetA = 4 / 12 = 1/3; the 4 TPs associate perfectly: AssA = 1. IDF1 = 8 / (8 + 4 + 4) = 1/2.
  results = [_result([1] * FRAMES), _result([2] * FRAMES, category_id=2),
             _result([1] * FRAMES, score=0.1)]
  metrics = tracking.tracking_metrics(_ground_truth(), results)
  assert metrics["tracks_scored"] == 2
  assert metrics["DetA"] == pytest.approx(1 / 3, abs=1e-12)
  assert metrics["AssA"] == pytest.approx(1.0, abs=1e-12)
  assert metrics["HOTA"] == pytest.approx(math.sqrt(1 / 3), abs=1e-12)
  assert metrics["IDF1"] == pytest.approx(0.5, abs=1e-12)
  # With no threshold the duplicate counts: 4 more FPs in class 1.
  everything = tracking.tracking_metrics(_ground_truth(), results, score_threshold=0.0)
  assert everything["tracks_scored"] == 3
  assert everything["DetA"] == pytest.approx(4 / 16, abs=1e-12)
  # Nothing at or above the threshold: everything is missed.
  nothing = tracking.tracking_metrics(_ground_truth(), [_result([1] * FRAMES, score=0.2)])
  assert [nothing[name] for name in tracking.TRACKING_METRIC_NAMES] == [0.0] * 4


def test_evaluate_cli_tracking_metrics(tmp_path):
  gt_path, results_path, out_path = tmp_path / "gt.json", tmp_path / "results.json", tmp_path / "m.json"
  gt_path.write_text(json.dumps(_ground_truth()))
  results_path.write_text(json.dumps([_result([1, 1, 2, 2]), _result([2, 2, 1, 1])]))
  out = subprocess.run([sys.executable, os.path.join(_REPO, "scripts", "evaluate.py"), "--gt", str(gt_path),
                        "--results", str(results_path), "--tracking_metrics", "--json_out", str(out_path)],
                       capture_output=True, text=True, timeout=300, cwd=_REPO)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  metrics = json.loads(out_path.read_text())
  assert metrics["AssA"] == pytest.approx(1 / 3, abs=1e-12)
  assert metrics["IDF1"] == pytest.approx(0.5, abs=1e-12)
  assert "HOTA" in out.stdout and "57.7" in out.stdout    # printed x100: sqrt(1/3)
