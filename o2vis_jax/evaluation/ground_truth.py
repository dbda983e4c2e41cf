"""Ground truth: YouTube-VIS 2019/2021/2022 and OVIS annotation files.

Layout: `videos` [{id, height, width, length and/or file_names}], `categories` [{id, name}],
`annotations` [{id, video_id, category_id, iscrowd, segmentations, areas[, occlusion]}] where
`segmentations` and `areas` have one entry per frame (null where the object is absent) and each
segmentation is an uncompressed or compressed RLE or a list of polygons. OVIS annotations add the
per-frame `occlusion` labels ('no_occlusion' / 'slight_occlusion' / 'severe_occlusion' / null);
`annotations` may be null (test splits).
"""

import dataclasses
import math
import numbers
import os
from typing import Union

from o2vis_jax.evaluation import rle as rle_lib
from o2vis_jax.evaluation.errors import EvaluationInputError, read_json
from o2vis_jax.evaluation.protocol import OCCLUSION_LABEL_SCORES
from o2vis_jax.evaluation.tracks import Track, Video, mean_nonzero_area

_ANNOTATION_KEYS = ("id", "video_id", "category_id", "iscrowd", "segmentations", "areas")


@dataclasses.dataclass(frozen=True)
class GroundTruth:
  videos: dict  # id -> Video
  categories: dict  # id -> name, ascending ids
  tracks: list  # Track, in file order (the order decides ties in the greedy matching)
  has_occlusion: bool
  source: str  # the file name, or '<dict>', for error messages


def _require(record: dict, keys, where: str):
  if not isinstance(record, dict):
    raise EvaluationInputError(f"{where}: expected an object, got {type(record).__name__}")
  missing = [key for key in keys if key not in record]
  if missing:
    raise EvaluationInputError(f"{where}: missing key(s) {missing}")


def _integer(value, where: str, field: str) -> int:
  if not isinstance(value, numbers.Integral) or isinstance(value, bool):
    raise EvaluationInputError(f"{where}: '{field}' must be an integer, got {value!r}")
  return int(value)


def _load_video(record, where: str) -> Video:
  _require(record, ("id", "height", "width"), where)
  video_id = _integer(record["id"], where, "id")
  where = f"{where} (video {video_id})"
  height = _integer(record["height"], where, "height")
  width = _integer(record["width"], where, "width")
  file_names = record.get("file_names")
  length = record.get("length")
  if length is None and file_names is None:
    raise EvaluationInputError(f"{where}: needs 'length' or 'file_names' for its frame count")
  if length is not None:
    length = _integer(length, where, "length")
  if file_names is not None:
    if length is not None and len(file_names) != length:
      raise EvaluationInputError(
          f"{where}: 'length' {length} differs from its {len(file_names)} file_names")
    length = len(file_names)
  name = os.path.dirname(file_names[0]) if file_names else ""
  return Video(video_id, height, width, length, name)


def occlusion_score(labels, where: str) -> float:
  """OVIS object occlusion score: mean of the highest half (rounded up) of its frame scores."""
  scores = []
  for label in labels:
    if label is None:
      continue
    if not isinstance(label, str) or label not in OCCLUSION_LABEL_SCORES:
      raise EvaluationInputError(
          f"{where}: unknown occlusion label {label!r}, expected one of "
          f"{sorted(OCCLUSION_LABEL_SCORES)} or null")
    scores.append(OCCLUSION_LABEL_SCORES[label])
  if not scores:
    raise EvaluationInputError(f"{where}: 'occlusion' has no non-null label")
  highest = sorted(scores)[-math.ceil(len(scores) / 2):]
  return sum(highest) / len(highest)


def _load_annotation(record, index: int, videos: dict, categories: dict, with_occlusion: bool,
                     where: str) -> tuple:
  where = f"{where}: annotations[{index}]"
  _require(record, _ANNOTATION_KEYS + (("occlusion",) if with_occlusion else ()), where)
  annotation_id = _integer(record["id"], where, "id")
  video_id = _integer(record["video_id"], where, "video_id")
  if video_id not in videos:
    raise EvaluationInputError(f"{where} (annotation {annotation_id}): unknown video id {video_id}")
  video = videos[video_id]
  where = f"{where}: {video.describe()}, annotation {annotation_id}"
  category_id = _integer(record["category_id"], where, "category_id")
  if category_id not in categories:
    raise EvaluationInputError(f"{where}: unknown category id {category_id}")
  rles = rle_lib.track_to_rles(record["segmentations"], video.height, video.width,
                               video.num_frames, where)
  areas = record["areas"]
  if not isinstance(areas, (list, tuple)) or len(areas) != video.num_frames:
    raise EvaluationInputError(
        f"{where}: 'areas' must list one value per frame ({video.num_frames}), got {areas!r:.80}")
  if not all(a is None or (rle_lib.is_number(a) and a >= 0) for a in areas):
    raise EvaluationInputError(f"{where}: 'areas' must hold non-negative numbers or null")
  occlusion = None
  if with_occlusion:
    labels = record["occlusion"]
    if not isinstance(labels, (list, tuple)) or len(labels) != video.num_frames:
      raise EvaluationInputError(
          f"{where}: 'occlusion' must list one label per frame ({video.num_frames})")
    occlusion = occlusion_score(labels, where)
  iscrowd = record["iscrowd"]
  if iscrowd not in (0, 1):  # also True / False
    raise EvaluationInputError(f"{where}: 'iscrowd' must be 0 or 1, got {iscrowd!r}")
  track = Track(video_id=video_id, category_id=category_id, rles=rles,
                frame_areas=rle_lib.frame_areas(rles), mean_area=mean_nonzero_area(areas),
                iscrowd=bool(iscrowd), occlusion_score=occlusion)
  return annotation_id, track


def load_ground_truth(ground_truth: Union[dict, str, os.PathLike, "GroundTruth"]) -> GroundTruth:
  """Reads and validates a ground-truth JSON (path or already-parsed dict)."""
  if isinstance(ground_truth, GroundTruth):
    return ground_truth
  source = "<dict>"
  if not isinstance(ground_truth, dict):
    source = os.fspath(ground_truth)
    ground_truth = read_json(source, "ground truth")
  where = f"ground truth {source}"
  _require(ground_truth, ("videos", "categories"), where)
  videos = {}
  for index, record in enumerate(ground_truth["videos"]):
    video = _load_video(record, f"{where}: videos[{index}]")
    if video.id in videos:
      raise EvaluationInputError(f"{where}: videos[{index}]: duplicate video id {video.id}")
    videos[video.id] = video
  categories = {}
  for index, record in enumerate(ground_truth["categories"]):
    _require(record, ("id",), f"{where}: categories[{index}]")
    category_id = _integer(record["id"], f"{where}: categories[{index}]", "id")
    categories[category_id] = str(record.get("name", category_id))
  categories = dict(sorted(categories.items()))
  annotations = ground_truth.get("annotations") or []
  # OVIS: every annotation carries `occlusion` once one does (the official code needs all).
  with_occlusion = any(isinstance(a, dict) and "occlusion" in a for a in annotations)
  tracks, seen_ids = [], set()
  for index, record in enumerate(annotations):
    annotation_id, track = _load_annotation(record, index, videos, categories, with_occlusion,
                                             where)
    if annotation_id in seen_ids:
      raise EvaluationInputError(f"{where}: annotations[{index}]: duplicate id {annotation_id}")
    seen_ids.add(annotation_id)
    tracks.append(track)
  return GroundTruth(videos=videos, categories=categories, tracks=tracks,
                     has_occlusion=with_occlusion, source=source)
