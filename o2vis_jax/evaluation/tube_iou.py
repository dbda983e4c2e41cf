"""Tube IoU between predicted and ground-truth tracks of one (video, category).

IoU(D, G) = sum_f |D_f ∩ G_f| / sum_f |D_f ∪ G_f| (SPEC 8): a frame where only one side has a
mask adds that mask's area to the union, a frame where neither has one adds nothing, and a zero
union gives IoU 0 (as the official `iou_seq`).

Vectorised per frame: one pycocotools `iou` call with every ground truth marked crowd returns
|D ∩ G| / |D| for all pairs present in that frame; multiplying by |D| and rounding recovers the
integer intersections exactly (areas are far below 2^53). The union then follows from the summed
areas: sum_f |D_f ∪ G_f| = sum_f |D_f| + sum_f |G_f| - sum_f |D_f ∩ G_f|.
"""

import numpy as np
from pycocotools import mask as mask_utils


def tube_intersections(predictions: list, ground_truths: list) -> np.ndarray:
  """Summed per-frame intersection areas, (len(predictions), len(ground_truths)) float64."""
  intersections = np.zeros((len(predictions), len(ground_truths)))
  if not predictions or not ground_truths:
    return intersections
  num_frames = len(predictions[0].rles)
  for frame in range(num_frames):
    rows = [i for i, p in enumerate(predictions) if p.rles[frame] is not None]
    cols = [j for j, g in enumerate(ground_truths) if g.rles[frame] is not None]
    if not rows or not cols:
      continue
    over_prediction = mask_utils.iou([predictions[i].rles[frame] for i in rows],
                                     [ground_truths[j].rles[frame] for j in cols],
                                     [1] * len(cols))
    prediction_areas = np.array([predictions[i].frame_areas[frame] for i in rows])
    intersections[np.ix_(rows, cols)] += np.rint(
        np.asarray(over_prediction).reshape(len(rows), len(cols)) * prediction_areas[:, None])
  return intersections


def tube_ious(predictions: list, ground_truths: list) -> np.ndarray:
  """Tube IoU of every (prediction, ground truth) pair, (D, G) float64."""
  intersections = tube_intersections(predictions, ground_truths)
  prediction_areas = np.array([p.frame_areas.sum() for p in predictions]).reshape(-1, 1)
  ground_truth_areas = np.array([g.frame_areas.sum() for g in ground_truths]).reshape(1, -1)
  unions = prediction_areas + ground_truth_areas - intersections
  return np.divide(intersections, unions, out=np.zeros_like(intersections), where=unions > 0)
