"""Identity metrics of video instance segmentation results: HOTA, DetA, AssA and IDF1 by TrackEval.

AP (evaluate.py) scores each predicted track as one tube against one ground-truth tube, so a track that
switches identity mid-video costs little AP; HOTA (Luiten et al., IJCV 2021) and IDF1 (Ristani et al., 2016)
score identity frame by frame. The numbers are TrackEval's own (the `trackeval` package, pinned in
requirements.txt): its `YouTubeVIS` dataset reads the two JSON files from a temporary folder in the layout
it expects and its `HOTA` and `Identity` metrics score them; nothing of the metrics is re-implemented here.

What this module decides (TrackEval's YouTube-VIS support leaves it to the caller):
- Which predictions are the tracker's output. A YouTube-VIS results file lists the top-k (slot, class)
  pairs per video for AP, most of them low-score duplicates; HOTA and IDF1 count every listed mask as a
  detection. Only tracks with `score >= score_threshold` (default 0.5) are given to TrackEval, and a frame
  whose mask is empty counts as no detection (null), as in the ground truth.
- How classes combine. TrackEval scores each category separately (a track of the wrong class is a false
  positive in its class and the ground truth a miss in its own) and combines them two ways; we report its
  detection-averaged combination (`cls_comb_det_av`: the per-class counts pooled), which, unlike the
  class average, does not count a category absent from both sides as 0.
Both sides are validated by the evaluation package's readers first (load_ground_truth, load_results), so a
bad input fails with the same one-line errors as `evaluate`.

  metrics = tracking_metrics("valid.json", "results.json")   # {'HOTA': 0.61, 'DetA': ..., 'AssA': ..., ...}
"""

import contextlib
import io
import json
import os
import tempfile
from typing import Union

import numpy as np

from o2vis_jax.evaluation import rle as rle_lib
from o2vis_jax.evaluation.ground_truth import GroundTruth, load_ground_truth
from o2vis_jax.evaluation.results import load_results

TRACKING_METRIC_NAMES = ("HOTA", "DetA", "AssA", "IDF1")
DEFAULT_SCORE_THRESHOLD = 0.5
_SPLIT = "eval"        # TrackEval reads GT_FOLDER/youtube_vis_<split>/*.json
_TRACKER = "results"   # and TRACKERS_FOLDER/youtube_vis_<split>/<tracker>/data/*.json.


def _uncompressed(rle: dict) -> dict:
  """A compressed RLE -> the uncompressed (run-length list) form TrackEval's ground-truth reader takes
  (it calls pycocotools.frPyObjects, which reads only that form of a dict)."""
  flat = rle_lib.decode_mask(rle).reshape(-1, order="F")
  boundaries = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
  counts = np.diff(boundaries).tolist()
  if flat.size and flat[0]:
    counts = [0] + counts
  return {"size": [int(s) for s in rle["size"]], "counts": [int(c) for c in counts]}


def _compressed(rle: dict) -> dict:
  counts = rle["counts"]
  return {"size": [int(s) for s in rle["size"]],
          "counts": counts.decode("utf-8") if isinstance(counts, bytes) else counts}


def _trackeval_inputs(ground_truth: GroundTruth, results: list, score_threshold: float):
  """(ground-truth JSON, results JSON) in TrackEval's YouTube-VIS reading."""
  videos = [{"id": video.id, "width": video.width, "height": video.height, "length": video.num_frames,
             # TrackEval names a sequence by the folder of its first frame; ours are unique by id.
             "file_names": [f"video_{video.id}/{t:05d}.jpg" for t in range(video.num_frames)]}
            for video in ground_truth.videos.values()]
  annotations = []
  for index, track in enumerate(ground_truth.tracks):
    video = ground_truth.videos[track.video_id]
    annotations.append({
        "id": index + 1, "video_id": track.video_id, "category_id": track.category_id,
        "iscrowd": int(track.iscrowd), "height": video.height, "width": video.width,
        "segmentations": [None if area == 0 else _uncompressed(rle)
                          for rle, area in zip(track.rles, track.frame_areas)],
        "areas": [None if area == 0 else float(area) for area in track.frame_areas]})
  gt_json = {"videos": videos, "annotations": annotations,
             "categories": [{"id": i, "name": name} for i, name in ground_truth.categories.items()]}
  results_json = [{"video_id": track.video_id, "category_id": track.category_id, "score": track.score,
                   "segmentations": [None if area == 0 else _compressed(rle)
                                     for rle, area in zip(track.rles, track.frame_areas)]}
                  for track in results if track.score >= score_threshold and track.frame_areas.any()]
  return gt_json, results_json


def _category_names_unique(ground_truth: GroundTruth) -> dict:
  """TrackEval keys classes by name: the names made unique (a name given twice gets its id appended)."""
  names = list(ground_truth.categories.values())
  return {i: (name if names.count(name) == 1 else f"{name}_{i}")
          for i, name in ground_truth.categories.items()}


def tracking_metrics(ground_truth: Union[dict, str, os.PathLike, GroundTruth],
                     results: Union[list, str, os.PathLike],
                     score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> dict:
  """HOTA, DetA, AssA (TrackEval's HOTA metric: the mean over its 19 IoU thresholds 0.05..0.95) and IDF1
  (its Identity metric, IoU >= 0.5), as fractions in [0, 1]; plus `tracks_scored` (results at or above
  `score_threshold`). Inputs as `evaluate` takes them (paths, parsed JSON, a server zip)."""
  import trackeval  # pylint: disable=g-import-not-at-top  (an optional import cost for evaluate's users)
  ground_truth = load_ground_truth(ground_truth)
  tracks = load_results(results, ground_truth)
  names = _category_names_unique(ground_truth)
  ground_truth = GroundTruth(ground_truth.videos, names, ground_truth.tracks, ground_truth.has_occlusion,
                             ground_truth.source)
  gt_json, results_json = _trackeval_inputs(ground_truth, tracks, score_threshold)
  with tempfile.TemporaryDirectory(prefix="trackeval_") as root:
    gt_dir = os.path.join(root, "gt", f"youtube_vis_{_SPLIT}")
    results_dir = os.path.join(root, "trackers", f"youtube_vis_{_SPLIT}", _TRACKER, "data")
    os.makedirs(gt_dir)
    os.makedirs(results_dir)
    with open(os.path.join(gt_dir, "gt.json"), "w") as f:
      json.dump(gt_json, f)
    with open(os.path.join(results_dir, "results.json"), "w") as f:
      json.dump(results_json, f)
    dataset_config = {"GT_FOLDER": os.path.join(root, "gt", ""),
                      "TRACKERS_FOLDER": os.path.join(root, "trackers", ""),
                      "OUTPUT_FOLDER": os.path.join(root, "out"), "SPLIT_TO_EVAL": _SPLIT,
                      "TRACKERS_TO_EVAL": [_TRACKER], "PRINT_CONFIG": False}
    eval_config = {"USE_PARALLEL": False, "BREAK_ON_ERROR": True, "LOG_ON_ERROR": None,
                   "PRINT_RESULTS": False, "PRINT_CONFIG": False, "TIME_PROGRESS": False,
                   "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False}
    with contextlib.redirect_stdout(io.StringIO()):   # TrackEval prints its progress unconditionally.
      evaluator = trackeval.Evaluator(eval_config)
      dataset = trackeval.datasets.YouTubeVIS(dataset_config)
      metric_list = [trackeval.metrics.HOTA({"PRINT_CONFIG": False}),
                     trackeval.metrics.Identity({"PRINT_CONFIG": False})]
      output, messages = evaluator.evaluate([dataset], metric_list)
  message = messages["YouTubeVIS"][_TRACKER]
  if message != "Success":
    raise RuntimeError(f"TrackEval could not score the results: {message}")
  combined = output["YouTubeVIS"][_TRACKER]["COMBINED_SEQ"]["cls_comb_det_av"]
  hota, identity = combined["HOTA"], combined["Identity"]
  return {"HOTA": float(np.mean(hota["HOTA"])), "DetA": float(np.mean(hota["DetA"])),
          "AssA": float(np.mean(hota["AssA"])), "IDF1": float(identity["IDF1"]),
          "tracks_scored": len(results_json)}
