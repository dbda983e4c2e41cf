"""Agreement with the official evaluators, and invariance of the metrics to result order.

tests/fixtures/eval_official_cases.json holds random YouTube-VIS and OVIS cases (every GT mask
format, null frames, crowd, area-range boundaries, tied scores, > 10 predictions per video and
category) scored by youtubevos/cocoapi `ytvoseval.py` and the OVIS `oviseval.py`; it is written
by scripts/make_eval_fixtures.py. Ours must give the same numbers to the last bit.
"""

import json
import os

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest

from o2vis_jax import evaluation
from test_evaluation import box, gt_ann, make_gt, result

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "eval_official_cases.json")
with open(FIXTURE) as _f:
  CASES = json.load(_f)["cases"]


def test_fixture_covers_the_protocol():
  names = [case["name"] for case in CASES]
  assert len(names) >= 20
  ovis = [c for c in CASES if "AP_light" in c["official_metrics"]]
  assert len(ovis) >= 5
  assert any(c["official_metrics"]["AR10"] != c["official_metrics"]["AR100"] for c in CASES)
  assert any(c["official_metrics"]["APl"] not in (-1.0, 0.0) for c in CASES)
  annotations = [a for c in CASES for a in c["ground_truth"]["annotations"]]
  assert any(a["iscrowd"] for a in annotations)
  frames = [s for a in annotations for s in a["segmentations"]]
  assert any(s is None for s in frames) and any(isinstance(s, list) for s in frames)  # polygons
  assert any(isinstance(s, dict) and isinstance(s["counts"], list) for s in frames)
  assert any(isinstance(s, dict) and isinstance(s["counts"], str) for s in frames)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_matches_the_official_evaluator_bitwise(case):
  metrics = evaluation.evaluate(case["ground_truth"], case["results"])
  official = case["official_metrics"]
  has_annotations = bool(case["ground_truth"]["annotations"])
  # With no annotation at all, nothing tells an OVIS file from a YouTube-VIS one.
  expected = {k: v for k, v in official.items() if has_annotations or k in evaluation.METRIC_NAMES}
  assert {k: metrics[k] for k in expected} == expected
  assert set(metrics) == set(expected) | {"per_category_AP"}
  assert metrics["per_category_AP"] == case["official_per_category_AP"]


def _random_case(seed: int):
  rng = np.random.default_rng(seed)
  size = 12
  videos = {v: (size, size, int(rng.integers(1, 4))) for v in (1, 2, 3)}
  categories = [1, 2]

  def random_masks(num_frames):
    masks = []
    for _ in range(num_frames):
      if rng.random() < 0.2:
        masks.append(None)
        continue
      y0, x0 = rng.integers(0, size - 2, 2)
      y1, x1 = y0 + rng.integers(2, size - y0 + 1), x0 + rng.integers(2, size - x0 + 1)
      masks.append(box(size, size, y0, y1, x0, x1))
    return masks

  annotations, results = [], []
  for video_id, (_, _, num_frames) in videos.items():
    for _ in range(rng.integers(0, 4)):
      category = int(rng.choice(categories))
      masks = random_masks(num_frames)
      annotations.append(gt_ann(video_id, category, masks, iscrowd=int(rng.random() < 0.15)))
      if rng.random() < 0.7:
        jittered = [m if m is None or rng.random() < 0.5 else np.roll(m, 1, axis=1)
                    for m in masks]
        results.append((video_id, category, jittered))
    for _ in range(rng.integers(0, 4)):
      results.append((video_id, int(rng.choice(categories)), random_masks(num_frames)))
  scores = rng.permutation(len(results)) / max(len(results), 1) + 0.01  # all different
  return (make_gt(videos, categories, annotations),
          [result(v, c, float(s), masks) for (v, c, masks), s in zip(results, scores)])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.randoms(use_true_random=False))
def test_metrics_do_not_depend_on_result_order_when_scores_differ(seed, random):
  gt, results = _random_case(seed)
  shuffled = list(results)
  random.shuffle(shuffled)
  assert evaluation.evaluate(gt, shuffled) == evaluation.evaluate(gt, results)
