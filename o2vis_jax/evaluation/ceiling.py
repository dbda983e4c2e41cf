"""The association ceiling of a results file: what its per-frame masks would score with perfect identities.

A diagnostic, not the protocol. For every non-crowd ground-truth track and every frame, the oracle takes,
among the masks that the results predict in that frame (tracks scoring at least `score_threshold`), the
one with the highest IoU with the ground truth's mask (none when no mask overlaps it, or when the object
is absent), and puts it in one oracle track that keeps the ground truth's category, with score 1.
Scoring the oracle tracks (`evaluation.evaluate`) gives the AP that the same per-frame masks reach when
association (and classification and ranking) is perfect: the gap to the results' own AP is what those
lose; the gap to 1 is what per-frame segmentation loses. Ties go to the result listed first.
`best_track_frames` says where the results lose it: frame by frame along each object's best track.
"""

import os
from typing import Union

import numpy as np
from pycocotools import mask as mask_utils

from o2vis_jax.evaluation import tube_iou
from o2vis_jax.evaluation.ground_truth import GroundTruth, load_ground_truth
from o2vis_jax.evaluation.results import instance_to_result, load_results


def _loaded(ground_truth, results, score_threshold: float):
  """-> (GroundTruth, {video id: [result Track scoring >= score_threshold]})."""
  if not (np.isfinite(score_threshold) and score_threshold >= 0.0):
    raise ValueError(f"score_threshold must be a finite number >= 0, got {score_threshold!r}")
  ground_truth = load_ground_truth(ground_truth)
  by_video = {}
  for prediction in load_results(results, ground_truth):
    if prediction.score >= score_threshold:
      by_video.setdefault(prediction.video_id, []).append(prediction)
  return ground_truth, by_video


def association_oracle(ground_truth: Union[dict, str, os.PathLike, GroundTruth],
                       results: Union[list, str, os.PathLike], score_threshold: float = 0.0) -> list:
  """-> a results list with one oracle track per non-crowd ground-truth track (see the module doc)."""
  ground_truth, by_video = _loaded(ground_truth, results, score_threshold)
  tracks = [track for track in ground_truth.tracks if not track.iscrowd]
  masks = [[None] * len(track.rles) for track in tracks]
  by_gt_video = {}
  for index, track in enumerate(tracks):
    by_gt_video.setdefault(track.video_id, []).append(index)
  for video_id, indices in by_gt_video.items():
    candidates = by_video.get(video_id, [])
    for frame in range(ground_truth.videos[video_id].num_frames):
      present = [p.rles[frame] for p in candidates if p.rles[frame] is not None]
      objects = [i for i in indices if tracks[i].rles[frame] is not None]
      if not present or not objects:
        continue
      # One pycocotools call per frame: (predicted masks, objects) IoUs.
      ious = np.asarray(mask_utils.iou(present, [tracks[i].rles[frame] for i in objects],
                                       [0] * len(objects))).reshape(len(present), len(objects))
      for column, i in enumerate(objects):
        if ious[:, column].max() > 0:
          masks[i][frame] = present[int(np.argmax(ious[:, column]))]
  return [instance_to_result(track.video_id, track.category_id, 1.0, track_masks)
          for track, track_masks in zip(tracks, masks)]


FRAME_OUTCOMES = ("on_object", "partial", "elsewhere", "missing", "ghost", "absent_empty")


def best_track_frames(ground_truth: Union[dict, str, os.PathLike, GroundTruth],
                      results: Union[list, str, os.PathLike], score_threshold: float = 0.0) -> dict:
  """Where the tube IoU of each object's best track is lost, frame by frame.

  For every non-crowd ground-truth track, its best result (highest tube IoU among the results of its video
  scoring at least `score_threshold`, any category; the first listed on ties; none when all are 0) and, at
  every frame of the video, one outcome: the object visible and the track's mask at IoU >= 0.5
  ('on_object'), at 0 < IoU < 0.5 ('partial'), with IoU 0 ('elsewhere': on another object or on nothing),
  or empty ('missing'); the object absent (not yet entered, gone, fully occluded) and the track holding a
  mask anyway ('ghost') or none ('absent_empty'). -> {outcome: share of all object-frames}, the shares
  summing to 1 ({} when the ground truth has no track)."""
  ground_truth, by_video = _loaded(ground_truth, results, score_threshold)
  counts = dict.fromkeys(FRAME_OUTCOMES, 0)
  for track in ground_truth.tracks:
    if track.iscrowd:
      continue
    candidates = by_video.get(track.video_id, [])
    best = None
    if candidates:
      ious = tube_iou.tube_ious(candidates, [track])[:, 0]
      if ious.max() > 0:
        best = candidates[int(np.argmax(ious))]
    for frame, gt_rle in enumerate(track.rles):
      mask = None if best is None else best.rles[frame]
      has_mask = mask is not None and best.frame_areas[frame] > 0
      if gt_rle is None or track.frame_areas[frame] == 0:
        counts["ghost" if has_mask else "absent_empty"] += 1
      elif not has_mask:
        counts["missing"] += 1
      else:
        iou = float(np.asarray(mask_utils.iou([mask], [gt_rle], [0])).reshape(()))
        counts["on_object" if iou >= 0.5 else "partial" if iou > 0 else "elsewhere"] += 1
  total = sum(counts.values())
  return {name: count / total for name, count in counts.items()} if total else {}
