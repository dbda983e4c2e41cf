"""Error oracles: what a results file's AP would be with one kind of error removed.

A diagnostic, not the protocol (after TIDE's oracles for detection, Bolya et al. 2020, here for video
tracks). Each oracle rewrites the results and leaves everything else as predicted; scoring the rewritten
results (`evaluation.evaluate`) says how much AP that kind of error costs. Together with the association
ceiling (`evaluation.association_oracle`: perfect identities, categories and ranking on the same per-frame
masks) they split the gap between a method's AP and 1 into:

- 'perfect_ranking': every result's score becomes its best tube IoU with a ground-truth track of its own
  video and category (0 when there is none), so that the tracks that fit an object best come first and
  wrong-category or empty tracks last. What AP loses to the order of the scores (classification
  confidence and track quality not agreeing).
- 'no_ghosts': every result's masks are dropped at the frames where its object is absent (its object: the
  non-crowd ground-truth track of its video, any category, with which it has the highest tube IoU; the first
  listed on ties; none when all are 0, and then the result is kept as it is). What AP loses to masks held
  while the object is not visible (not yet entered, gone, fully occluded), which the reference protocol
  keeps (REFERENCE.md section 8: no per-frame filtering) and which add area to the tube's union.
- 'no_ghosts_perfect_ranking': both, the ranking computed on the masks without ghosts.

What is left between 'no_ghosts_perfect_ranking' and the association ceiling is identity: an object's
frames spread over several tracks (fragments, switches), and the category of those tracks.
"""

import dataclasses
import os
from typing import Union

import numpy as np

from o2vis_jax.evaluation import tube_iou
from o2vis_jax.evaluation.ground_truth import GroundTruth, load_ground_truth
from o2vis_jax.evaluation.results import LoadedResults, load_results

ORACLES = ("perfect_ranking", "no_ghosts", "no_ghosts_perfect_ranking")


def _by_video(tracks) -> dict:
  grouped = {}
  for index, track in enumerate(tracks):
    grouped.setdefault(track.video_id, []).append(index)
  return grouped


def _tube_ious(predictions: list, objects: list) -> np.ndarray:
  if not predictions or not objects:
    return np.zeros((len(predictions), len(objects)))
  return tube_iou.tube_ious(predictions, objects)


def _without_ghosts(predictions: list, objects: list, ious: np.ndarray) -> list:
  """Each prediction's masks dropped where its best-tube-IoU object of `objects` is absent (`ious`: their
  tube IoUs, [len(predictions), len(objects)])."""
  if not predictions or not objects:
    return list(predictions)
  rewritten = []
  for row, prediction in enumerate(predictions):
    if ious[row].max() <= 0:
      rewritten.append(prediction)
      continue
    obj = objects[int(np.argmax(ious[row]))]
    absent = [obj.rles[frame] is None or obj.frame_areas[frame] == 0 for frame in range(len(obj.rles))]
    rles = [None if gone else rle for rle, gone in zip(prediction.rles, absent)]
    areas = np.where(absent, 0, prediction.frame_areas).astype(prediction.frame_areas.dtype)
    nonzero = areas[areas > 0]
    rewritten.append(dataclasses.replace(prediction, rles=rles, frame_areas=areas,
                                         mean_area=float(nonzero.mean()) if nonzero.size else 0.0))
  return rewritten


def _ranked_by_fit(predictions: list, objects: list, ious: np.ndarray) -> list:
  """Each prediction's score replaced by its best tube IoU (`ious`) with an object of its own category."""
  rewritten = []
  for row, prediction in enumerate(predictions):
    same = [column for column, obj in enumerate(objects) if obj.category_id == prediction.category_id]
    score = float(ious[row, same].max()) if same else 0.0
    rewritten.append(dataclasses.replace(prediction, score=score))
  return rewritten


def error_oracles(ground_truth: Union[dict, str, os.PathLike, GroundTruth],
                  results: Union[list, str, os.PathLike]) -> dict:
  """-> {oracle name (ORACLES): the rewritten results}, each to be scored by `evaluation.evaluate` with the
  same ground truth (see the module doc)."""
  ground_truth = load_ground_truth(ground_truth)
  predictions = load_results(results, ground_truth)
  objects = [track for track in ground_truth.tracks if not track.iscrowd]
  objects_by_video = _by_video(objects)
  rewritten = {name: [None] * len(predictions) for name in ORACLES}
  for video_id, rows in _by_video(predictions).items():
    video_objects = [objects[i] for i in objects_by_video.get(video_id, [])]
    video_predictions = [predictions[i] for i in rows]
    ious = _tube_ious(video_predictions, video_objects)   # once for both oracles on the masks as predicted
    no_ghosts = _without_ghosts(video_predictions, video_objects, ious)
    variants = {"perfect_ranking": _ranked_by_fit(video_predictions, video_objects, ious),
                "no_ghosts": no_ghosts,
                "no_ghosts_perfect_ranking": _ranked_by_fit(no_ghosts, video_objects,
                                                            _tube_ious(no_ghosts, video_objects))}
    for name, tracks in variants.items():
      for row, track in zip(rows, tracks):
        rewritten[name][row] = track
  return {name: LoadedResults(tracks, ground_truth) for name, tracks in rewritten.items()}
