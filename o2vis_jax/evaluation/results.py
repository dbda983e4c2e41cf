"""Results files: reading them for evaluation and writing them from inference.

A results file is a JSON list with one entry per predicted object track:
`{"video_id": int, "category_id": int, "score": float, "segmentations": [RLE or null per frame]}`
with compressed RLE `{"size": [h, w], "counts": str}`. The evaluation servers take it zipped as
`results.json` at the root of the archive (`write_results_zip`).

Reading is strict where the official evaluator is silent: an unknown video or category id, a
frame count or mask size that differs from the video, a malformed RLE or a missing key raise an
`EvaluationInputError` naming the entry and its video.
"""

import json
import math
import os
import zipfile
from typing import Iterable, Optional, Sequence, Union

import numpy as np
from pycocotools import mask as mask_utils

from o2vis_jax.evaluation import rle as rle_lib
from o2vis_jax.evaluation.errors import EvaluationInputError, parse_json, read_json
from o2vis_jax.evaluation.ground_truth import GroundTruth, load_ground_truth
from o2vis_jax.evaluation.tracks import Track, mean_nonzero_area

RESULT_KEYS = ("video_id", "category_id", "score", "segmentations")
ARCHIVE_MEMBER = "results.json"


# ---------------------------------------------------------------------------------------------
# Writing


def _json_rle(rle: Optional[dict]) -> Optional[dict]:
  if rle is None:
    return None
  counts = rle["counts"]
  if isinstance(counts, bytes):
    counts = counts.decode("utf-8")
  return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def encode_masks(masks) -> list:
  """Binary masks (N, H, W) -> N compressed RLE dicts with str counts (JSON-ready)."""
  masks = np.asarray(masks)
  if masks.ndim != 3:
    raise ValueError(f"masks must be (N, height, width), got shape {masks.shape}")
  if masks.shape[0] == 0:
    return []
  rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
  return [_json_rle(rle) for rle in rles]


def instance_to_result(video_id: int, category_id: int, score: float,
                       masks: Union[np.ndarray, Sequence]) -> dict:
  """One predicted track -> one results entry.

  `masks` is either a binary array (T, H, W) (every frame encoded, empty ones too, as the
  reference inference does) or a sequence with one entry per frame: a pycocotools RLE dict
  (counts bytes or str), a binary (H, W) array, or None where the object is absent.
  """
  if isinstance(masks, np.ndarray):
    segmentations = encode_masks(masks)
  else:
    segmentations = []
    for frame, mask in enumerate(masks):
      if mask is None:
        segmentations.append(None)
      elif isinstance(mask, dict) and "counts" in mask and "size" in mask:
        segmentations.append(_json_rle(mask))
      elif isinstance(mask, np.ndarray) and mask.ndim == 2:
        segmentations.extend(encode_masks(mask[None]))
      else:
        raise ValueError(f"video {video_id}: frame {frame} is neither an RLE dict, an (H, W) "
                         "array nor None")
  score = float(score)
  if not math.isfinite(score):
    raise ValueError(f"video {video_id}, category {category_id}: score {score} is not finite")
  return {"video_id": int(video_id), "category_id": int(category_id), "score": score,
          "segmentations": segmentations}


def write_results(path: Union[str, os.PathLike], results: Iterable[dict]) -> None:
  """Writes the results list as JSON."""
  with open(path, "w") as f:
    json.dump(list(results), f)


def write_results_zip(path: Union[str, os.PathLike], results: Iterable[dict]) -> None:
  """Writes the archive the YouTube-VIS / OVIS servers accept: `results.json` at its root."""
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
    archive.writestr(ARCHIVE_MEMBER, json.dumps(list(results)))


def ground_truth_to_results(ground_truth) -> list:
  """The ground truth's non-crowd annotations as results of score 1 (a sanity check: AP 1)."""
  return [instance_to_result(track.video_id, track.category_id, 1.0, track.rles)
          for track in load_ground_truth(ground_truth).tracks if not track.iscrowd]


# ---------------------------------------------------------------------------------------------
# Reading


def read_results_file(path: Union[str, os.PathLike]) -> list:
  """A results JSON, or a server archive holding `results.json`, -> the parsed list."""
  path = os.fspath(path)
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      if ARCHIVE_MEMBER not in archive.namelist():
        raise EvaluationInputError(
            f"results {path}: the archive has no {ARCHIVE_MEMBER} at its root")
      return parse_json(archive.read(ARCHIVE_MEMBER), f"results {path}: {ARCHIVE_MEMBER}")
  return read_json(path, "results")


def _load_result(entry, index: int, ground_truth: GroundTruth, where: str) -> Track:
  where = f"{where}: result {index}"
  if not isinstance(entry, dict):
    raise EvaluationInputError(f"{where}: expected an object, got {type(entry).__name__}")
  missing = [key for key in RESULT_KEYS if key not in entry]
  if missing:
    raise EvaluationInputError(f"{where}: missing key(s) {missing}")
  video_id, category_id, score = entry["video_id"], entry["category_id"], entry["score"]
  if not isinstance(video_id, int) or isinstance(video_id, bool) or (
      video_id not in ground_truth.videos):
    raise EvaluationInputError(f"{where}: unknown video id {video_id!r}")
  video = ground_truth.videos[video_id]
  where = f"{where} ({video.describe()}, category {category_id!r})"
  if not isinstance(category_id, int) or isinstance(category_id, bool) or (
      category_id not in ground_truth.categories):
    raise EvaluationInputError(f"{where}: unknown category id {category_id!r}")
  if not rle_lib.is_number(score) or not math.isfinite(score):
    raise EvaluationInputError(f"{where}: score must be a finite number, got {score!r}")
  rles = rle_lib.track_to_rles(entry["segmentations"], video.height, video.width,
                               video.num_frames, where)
  areas = rle_lib.frame_areas(rles)
  return Track(video_id=video_id, category_id=category_id, rles=rles, frame_areas=areas,
               mean_area=mean_nonzero_area(areas.tolist()), score=float(score))


class LoadedResults(list):
  """What `load_results` returns: one Track per result, validated against `ground_truth`'s videos.
  Given back to `load_results` (so to `evaluate`, `tracking_metrics`, the ceiling diagnostics) with the
  same ground truth, it is used as it is: a results file is read and validated once per script."""

  def __init__(self, tracks: Iterable[Track], ground_truth: GroundTruth):
    super().__init__(tracks)
    self.videos = ground_truth.videos


def load_results(results: Union[list, str, os.PathLike], ground_truth: GroundTruth) -> LoadedResults:
  """Reads and validates results (a list, a JSON path or a server zip) -> list of Track."""
  if isinstance(results, LoadedResults):
    if results.videos is not ground_truth.videos:
      raise ValueError("these results were loaded against another ground truth; load them again")
    return results
  source = "<list>"
  if not isinstance(results, list):
    source = os.fspath(results)
    results = read_results_file(source)
    if not isinstance(results, list):
      raise EvaluationInputError(f"results {source}: expected a JSON list of results")
  where = f"results {source}"
  return LoadedResults((_load_result(entry, index, ground_truth, where) for index, entry in enumerate(results)),
                       ground_truth)
