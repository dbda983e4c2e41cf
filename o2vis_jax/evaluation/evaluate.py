"""YouTube-VIS / OVIS video instance segmentation metrics (SPEC section 8).

`evaluate(ground_truth, results)` returns the 12 standard numbers as fractions (AP, AP50, AP75,
APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl; -1 where undefined), OVIS's AP/AR per occlusion
level when the ground truth has occlusion labels, and the AP of each category.

The numbers equal those of the official evaluators (youtubevos/cocoapi `ytvoseval.py`, OVIS
`oviseval.py`) bit for bit on valid inputs (tests/test_evaluation_parity.py). Deliberate
differences: inputs they truncate, zero-fill or drop are refused (`EvaluationInputError`); an
empty results list scores 0 instead of crashing; polygons and uncompressed RLE are accepted in
results too; a ground-truth annotation with id 0 can be matched (their match arrays store ids and
read 0 as "unmatched").
"""

import collections
import os
from typing import Union

import numpy as np

from o2vis_jax.evaluation import accumulate
from o2vis_jax.evaluation.ground_truth import GroundTruth, load_ground_truth
from o2vis_jax.evaluation.matching import match
from o2vis_jax.evaluation.protocol import (AREA_RANGES, IOU_THRESHOLDS, MAX_DETECTIONS,
                                           OCCLUSION_RANGES)
from o2vis_jax.evaluation.results import load_results
from o2vis_jax.evaluation.tube_iou import tube_ious

# Evaluated subsets: (name, area range, occlusion range or None). The official OVIS code also
# evaluates every area x occlusion combination but reports only these.
_AREA_SUBSETS = tuple((name, AREA_RANGES[name], None)
                      for name in ("all", "small", "medium", "large"))
_OCCLUSION_SUBSETS = tuple((f"occlusion_{name}", AREA_RANGES["all"], OCCLUSION_RANGES[name])
                           for name in ("light", "medium", "heavy"))


def _outside(values: np.ndarray, bounds) -> np.ndarray:
  return (values < bounds[0]) | (values > bounds[1])


def _evaluate_unit(gts: list, predictions: list, subsets) -> list:
  """All subsets of one (video, category) -> one UnitEvaluation per subset."""
  order = np.argsort([-p.score for p in predictions], kind="mergesort")
  predictions = [predictions[i] for i in order[:MAX_DETECTIONS[-1]]]
  ious = tube_ious(predictions, gts)
  scores = np.array([p.score for p in predictions], dtype=np.float64)
  prediction_areas = np.array([p.mean_area for p in predictions], dtype=np.float64)
  gt_areas = np.array([g.mean_area for g in gts], dtype=np.float64)
  gt_crowd = np.array([g.iscrowd for g in gts], dtype=bool)
  gt_occlusion = np.array([g.occlusion_score if g.occlusion_score is not None else 0.0
                           for g in gts], dtype=np.float64)
  evaluations = []
  for _, area_range, occlusion_range in subsets:
    gt_ignored = gt_crowd | _outside(gt_areas, area_range)
    if occlusion_range is not None:
      gt_ignored |= _outside(gt_occlusion, occlusion_range)
    matched, ignored = match(ious, gt_ignored, gt_crowd, _outside(prediction_areas, area_range),
                             IOU_THRESHOLDS)
    evaluations.append(accumulate.UnitEvaluation(scores, matched, ignored,
                                                 int((~gt_ignored).sum())))
  return evaluations


def evaluate_arrays(ground_truth: GroundTruth, predictions: list):
  """-> (subset names, precision (T, R, K, S, M), recall (T, K, S, M)), K in category-id order."""
  subsets = _AREA_SUBSETS + (_OCCLUSION_SUBSETS if ground_truth.has_occlusion else ())
  gts_by_unit = collections.defaultdict(list)
  for track in ground_truth.tracks:
    gts_by_unit[track.video_id, track.category_id].append(track)
  predictions_by_unit = collections.defaultdict(list)
  for track in predictions:
    predictions_by_unit[track.video_id, track.category_id].append(track)
  num_thresholds, num_recalls = len(IOU_THRESHOLDS), len(accumulate.RECALL_THRESHOLDS)
  shape = (len(ground_truth.categories), len(subsets), len(MAX_DETECTIONS))
  precision = -np.ones((num_thresholds, num_recalls) + shape)
  recall = -np.ones((num_thresholds,) + shape)
  for k, category_id in enumerate(ground_truth.categories):
    units_per_subset = [[] for _ in subsets]
    for video_id in sorted(ground_truth.videos):
      gts = gts_by_unit.get((video_id, category_id), [])
      unit_predictions = predictions_by_unit.get((video_id, category_id), [])
      if not gts and not unit_predictions:
        continue
      for s, evaluation in enumerate(_evaluate_unit(gts, unit_predictions, subsets)):
        units_per_subset[s].append(evaluation)
    for s, units in enumerate(units_per_subset):
      precision[:, :, k, s], recall[:, k, s] = accumulate.precision_recall(units, num_thresholds)
  return tuple(name for name, _, _ in subsets), precision, recall


def summarize(subset_names, precision: np.ndarray, recall: np.ndarray) -> dict:
  """The 12 numbers (+ occlusion AP/AR when evaluated), official indexing and -1 rule."""
  s = {name: i for i, name in enumerate(subset_names)}
  m100 = MAX_DETECTIONS.index(100)
  t50, t75 = (int(np.flatnonzero(IOU_THRESHOLDS == t)[0]) for t in (0.5, 0.75))

  def ap(subset="all", threshold=None):
    values = precision[:, :, :, s[subset], m100]
    return accumulate.mean_defined(values if threshold is None else values[[threshold]])

  def ar(subset="all", max_dets=100):
    return accumulate.mean_defined(recall[:, :, s[subset], MAX_DETECTIONS.index(max_dets)])

  metrics = {
      "AP": ap(), "AP50": ap(threshold=t50), "AP75": ap(threshold=t75),
      "APs": ap("small"), "APm": ap("medium"), "APl": ap("large"),
      "AR1": ar(max_dets=1), "AR10": ar(max_dets=10), "AR100": ar(),
      "ARs": ar("small"), "ARm": ar("medium"), "ARl": ar("large"),
  }
  if "occlusion_light" in s:
    for level in ("light", "medium", "heavy"):
      metrics[f"AP_{level}"] = ap(f"occlusion_{level}")
    for level in ("light", "medium", "heavy"):
      metrics[f"AR_{level}"] = ar(f"occlusion_{level}")
  return metrics


def evaluate(ground_truth: Union[dict, str, os.PathLike, GroundTruth],
             results: Union[list, str, os.PathLike]) -> dict:
  """Scores results against ground truth.

  Args:
    ground_truth: a YouTube-VIS / OVIS annotation JSON path, its parsed dict, or a GroundTruth.
    results: a results list, a results JSON path or a server zip (see `results.py`).

  Returns:
    {"AP": ..., ..., "ARl": ...} as fractions (-1 where undefined), the six OVIS occlusion keys
    (AP_light, AP_medium, AP_heavy, AR_light, AR_medium, AR_heavy) when the ground truth has
    occlusion labels, and "per_category_AP": {category name: AP or -1} (keys "id:name" when
    names repeat).

  Raises:
    EvaluationInputError: on any input the protocol cannot score as given.
  """
  ground_truth = load_ground_truth(ground_truth)
  predictions = load_results(results, ground_truth)
  subset_names, precision, recall = evaluate_arrays(ground_truth, predictions)
  metrics = summarize(subset_names, precision, recall)
  names = list(ground_truth.categories.values())
  if len(set(names)) != len(names):
    names = [f"{category_id}:{name}" for category_id, name in ground_truth.categories.items()]
  metrics["per_category_AP"] = {
      name: accumulate.mean_defined(precision[:, :, k, 0, MAX_DETECTIONS.index(100)])
      for k, name in enumerate(names)}
  return metrics
