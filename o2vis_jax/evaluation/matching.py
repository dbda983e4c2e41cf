"""Greedy matching of one (video, category) at every IoU threshold (official semantics).

Predictions are taken in descending score order (stable for ties). Each one takes, among the
ground truths still free (crowd ones never become taken) whose IoU reaches the threshold, the one
with the highest IoU, preferring a regular ground truth over an ignored one (crowd, or outside the
area / occlusion range); among equal IoUs the last in ground-truth order wins, as in the official
scan (which replaces the running best on `>=`). A prediction matched to an ignored ground truth
is ignored; an unmatched prediction outside the area range is ignored too.
"""

import numpy as np


def _last_argmax(values: np.ndarray, allowed: np.ndarray):
  """Per row: (any allowed?, index of the last maximum among the allowed entries)."""
  masked = np.where(allowed, values, -np.inf)
  best = masked.max(axis=1, keepdims=True)
  is_best = allowed & (masked == best)
  last = is_best.shape[1] - 1 - np.argmax(is_best[:, ::-1], axis=1)
  return allowed.any(axis=1), last


def match(ious: np.ndarray, gt_ignored: np.ndarray, gt_crowd: np.ndarray,
          prediction_out_of_range: np.ndarray, iou_thresholds: np.ndarray):
  """Greedy matching.

  Args:
    ious: (D, G) tube IoUs, predictions already in descending score order.
    gt_ignored: (G,) bool, ground truths that count neither as hits nor as misses.
    gt_crowd: (G,) bool, ground truths that may absorb any number of predictions.
    prediction_out_of_range: (D,) bool, predictions outside the evaluated area range.
    iou_thresholds: (T,).

  Returns:
    matched (T, D) bool and ignored (T, D) bool for the predictions.
  """
  num_thresholds, (num_predictions, num_gts) = len(iou_thresholds), ious.shape
  matched = np.zeros((num_thresholds, num_predictions), dtype=bool)
  ignored = np.zeros((num_thresholds, num_predictions), dtype=bool)
  if num_gts and num_predictions:
    # The official scan visits regular ground truths first (stable sort on the ignore flag).
    order = np.argsort(gt_ignored, kind="stable")
    ious, gt_ignored, gt_crowd = ious[:, order], gt_ignored[order], gt_crowd[order]
    taken = np.zeros((num_thresholds, num_gts), dtype=bool)
    thresholds = np.asarray(iou_thresholds)[:, None]
    rows = np.arange(num_thresholds)
    for d in range(num_predictions):
      candidates = (~taken | gt_crowd) & (ious[d][None, :] >= thresholds)
      has_regular, regular = _last_argmax(ious[d][None, :], candidates & ~gt_ignored)
      has_ignored, other = _last_argmax(ious[d][None, :], candidates & gt_ignored)
      chosen = np.where(has_regular, regular, other)
      found = has_regular | has_ignored
      matched[:, d] = found
      ignored[:, d] = found & gt_ignored[chosen]
      taken[rows[found], chosen[found]] = True
  ignored |= ~matched & prediction_out_of_range[None, :]
  return matched, ignored
