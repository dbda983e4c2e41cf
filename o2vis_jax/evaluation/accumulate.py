"""Precision / recall over the videos of each category, and the summary numbers.

For one category, evaluated subset (area / occlusion range) and maxDets m: the first m predictions
of every (video, category) are pooled and sorted by descending score (stable: video id order, then
per-video score order); precision at each of the 101 recall thresholds is the interpolated
(monotone from the right) precision at the first point reaching that recall, 0 beyond the highest
recall; recall is the final recall. Categories without any regular ground truth in the subset are
-1 and left out of every mean, as are (video, category) pairs with neither ground truth nor
predictions. Same arithmetic as the official code, so numbers agree to the last bit.
"""

import dataclasses

import numpy as np

from o2vis_jax.evaluation.protocol import MAX_DETECTIONS, RECALL_THRESHOLDS


@dataclasses.dataclass(frozen=True)
class UnitEvaluation:
  """Matching outcome of one (video, category) in one subset."""
  scores: np.ndarray  # (D,) descending
  matched: np.ndarray  # (T, D) bool
  ignored: np.ndarray  # (T, D) bool
  num_regular_gts: int


def precision_recall(units: list, num_thresholds: int):
  """Units of one category and subset -> precision (T, R, M), recall (T, M); -1 if undefined."""
  num_recalls = len(RECALL_THRESHOLDS)
  precision = -np.ones((num_thresholds, num_recalls, len(MAX_DETECTIONS)))
  recall = -np.ones((num_thresholds, len(MAX_DETECTIONS)))
  num_regular = sum(unit.num_regular_gts for unit in units)
  if not units or num_regular == 0:
    return precision, recall
  for m, max_dets in enumerate(MAX_DETECTIONS):
    scores = np.concatenate([unit.scores[:max_dets] for unit in units])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([unit.matched[:, :max_dets] for unit in units], axis=1)[:, order]
    ignored = np.concatenate([unit.ignored[:, :max_dets] for unit in units], axis=1)[:, order]
    true_positives = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    false_positives = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    num_predictions = scores.size
    recalls = true_positives / num_regular
    precisions = true_positives / (false_positives + true_positives + np.spacing(1))
    recall[:, m] = recalls[:, -1] if num_predictions else 0.0
    precision[:, :, m] = 0.0
    if not num_predictions:
      continue
    envelope = np.maximum.accumulate(precisions[:, ::-1], axis=1)[:, ::-1]
    for t in range(num_thresholds):
      indices = np.searchsorted(recalls[t], RECALL_THRESHOLDS, side="left")
      reached = indices < num_predictions
      precision[t, reached, m] = envelope[t, indices[reached]]
  return precision, recall


def mean_defined(values: np.ndarray) -> float:
  """Mean of the entries > -1, or -1 when there is none (the official summary rule)."""
  defined = values[values > -1]
  return float(np.mean(defined)) if defined.size else -1.0
