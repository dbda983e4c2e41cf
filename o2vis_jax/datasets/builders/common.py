"""What the video and image builders share: the record features, validation with errors that name the
file, video and annotation, segmentation -> RLE conversion, category mapping and the local holdout split.

Record format (one TFDS example; a COCO image is a video of length 1, so the pipeline reads one format):
  video_id int64, name str, height / width / length int32,
  frames      [T] bytes     the JPEG files as stored on disk (decoded by the input pipeline),
  annotation_ids [G] int64, labels [G] int32 (contiguous 0..K-1), category_ids [G] int32, iscrowd [G] int32,
  rles        [G * T] bytes compressed COCO RLE `counts` of annotation g at frame t (index g * T + t),
                            b"" where the segmentation is null (object absent or hidden).
Masks are stored losslessly, so a built dataset round-trips the source masks exactly; they decode with
`o2vis_jax.evaluation.rle.masks_from_counts(rles, height, width)`.
"""

import inspect
import io
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from etils import epath
import tensorflow_datasets as tfds
from PIL import Image
from pycocotools import mask as mask_utils


class SourceFileCodePath:
  """Mixin for our builders: TFDS 4.9.10 looks up a builder's `code_path` through
  `importlib_resources`, which is not installed (nor needed) here; the class's source file is the answer."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(inspect.getfile(cls))


class DataValidationError(ValueError):
  """Raised at build time for input the builder refuses; the message names the file, video, annotation."""


def record_features() -> tfds.features.FeaturesDict:
  string_list = lambda: tfds.features.Tensor(shape=(None,), dtype=np.object_)
  int_list = lambda dtype: tfds.features.Tensor(shape=(None,), dtype=dtype)
  return tfds.features.FeaturesDict({
      "video_id": tfds.features.Scalar(dtype=np.int64),
      "name": tfds.features.Text(),
      "height": tfds.features.Scalar(dtype=np.int32),
      "width": tfds.features.Scalar(dtype=np.int32),
      "length": tfds.features.Scalar(dtype=np.int32),
      "frames": string_list(),
      "annotation_ids": int_list(np.int64),
      "labels": int_list(np.int32),
      "category_ids": int_list(np.int32),
      "iscrowd": int_list(np.int32),
      "rles": string_list(),
  })


def load_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise DataValidationError(f"{path}: annotation file not found")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise DataValidationError(f"{path}: not readable as JSON ({e})") from e


def find_first(root: str, candidates: Sequence[str], what: str, isdir: bool) -> str:
  """The first of `candidates` (relative to `root`) that exists; an error listing them otherwise."""
  for candidate in candidates:
    path = os.path.join(root, candidate)
    if (os.path.isdir(path) if isdir else os.path.isfile(path)):
      return path
  raise DataValidationError(f"{root}: no {what}; looked for {', '.join(candidates)}")


def category_labels(categories: Sequence[dict], where: str) -> Dict[int, int]:
  """Dataset category id -> contiguous label 0..K-1 in increasing id order."""
  ids = []
  for category in categories:
    if "id" not in category or "name" not in category:
      raise DataValidationError(f"{where}: category {category!r} needs 'id' and 'name'")
    ids.append(int(category["id"]))
  if len(set(ids)) != len(ids):
    raise DataValidationError(f"{where}: duplicate category ids {sorted(ids)}")
  return {category_id: label for label, category_id in enumerate(sorted(ids))}


def segmentation_to_rle(segmentation, height: int, width: int, where: str) -> bytes:
  """Compressed RLE counts of an uncompressed / compressed RLE or polygon list; b"" for null."""
  if segmentation is None:
    return b""
  if isinstance(segmentation, dict):
    size = segmentation.get("size")
    if size is None or "counts" not in segmentation:
      raise DataValidationError(f"{where}: RLE needs 'size' and 'counts', got keys {sorted(segmentation)}")
    if [int(s) for s in size] != [height, width]:
      raise DataValidationError(f"{where}: mask size {list(size)} differs from the frame size "
                                f"[{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):
      if sum(counts) != height * width:
        raise DataValidationError(f"{where}: RLE counts sum to {sum(counts)}, expected {height * width} "
                                  f"for size [{height}, {width}]")
      rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
      rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
      try:
        area = int(mask_utils.area(rle))
      except Exception as e:  # pycocotools raises bare exceptions on malformed strings.
        raise DataValidationError(f"{where}: malformed compressed RLE ({e})") from e
      if area > height * width:
        raise DataValidationError(f"{where}: malformed compressed RLE")
  elif isinstance(segmentation, list):
    polygons = [p for p in segmentation if len(p) >= 6]
    if not polygons:
      return b""
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
  else:
    raise DataValidationError(f"{where}: segmentation of type {type(segmentation).__name__} is neither "
                              "RLE, polygon nor null")
  counts = rle["counts"]
  return counts if isinstance(counts, bytes) else counts.encode()


def read_jpeg(path: str, height: int, width: int, where: str) -> bytes:
  """The file's bytes after checking that it exists, decodes, and has the video's size."""
  if not os.path.isfile(path):
    raise DataValidationError(f"{where}: frame file {path} is missing")
  with open(path, "rb") as f:
    data = f.read()
  try:
    image = Image.open(io.BytesIO(data))
    size = image.size
    image.draft("RGB", (max(size[0] // 8, 1), max(size[1] // 8, 1)))   # a fast full decode pass.
    image.load()
  except Exception as e:  # PIL raises several types for corrupt files.
    raise DataValidationError(f"{where}: frame file {path} is not a readable image ({e})") from e
  if size != (width, height):
    raise DataValidationError(f"{where}: frame file {path} is {size[0]}x{size[1]} (WxH), the video says "
                              f"{width}x{height}")
  return data


def holdout_ids(ids: Sequence[int], num_holdout: int, seed: int, where: str) -> List[int]:
  """A seeded choice of `num_holdout` ids held out of train as a labelled local validation split."""
  if num_holdout < 0 or num_holdout >= len(ids):
    raise DataValidationError(f"{where}: cannot hold out {num_holdout} of {len(ids)} videos "
                              "(need 0 <= holdout < number of videos)")
  order = np.random.default_rng(seed).permutation(len(ids))
  return sorted(int(ids[i]) for i in order[:num_holdout])


def map_category_names(source_categories: Sequence[dict], target_categories: Sequence[dict],
                       aliases: Optional[Dict[str, str]] = None) -> Dict[int, int]:
  """Source category id -> target category id by normalised name ('tennis racket' == 'tennis_racket'),
  after applying `aliases` (source name -> target name); source categories without a match are absent."""
  normalise = lambda name: name.strip().lower().replace(" ", "_").replace("-", "_")
  aliases = {normalise(k): normalise(v) for k, v in (aliases or {}).items()}
  target_by_name = {normalise(c["name"]): int(c["id"]) for c in target_categories}
  mapping = {}
  for category in source_categories:
    name = normalise(category["name"])
    name = aliases.get(name, name)
    if name in target_by_name:
      mapping[int(category["id"])] = target_by_name[name]
  return mapping


def split_rles(rles: np.ndarray, num_annotations: int, length: int) -> np.ndarray:
  """The stored flat [G * T] RLE list as [G, T]."""
  return np.asarray(rles, dtype=object).reshape(num_annotations, length)


def describe_video(json_path: str, video: dict) -> str:
  return f"{json_path}: video {video.get('id')} ({video.get('name') or _video_folder(video)!r})"


def _video_folder(video: dict) -> str:
  names = video.get("file_names") or [""]
  return os.path.dirname(names[0])


def video_name(video: dict) -> str:
  return str(video.get("name") or _video_folder(video) or video["id"])


def frame_size(video: dict, where: str) -> Tuple[int, int]:
  try:
    return int(video["height"]), int(video["width"])
  except (KeyError, TypeError, ValueError) as e:
    raise DataValidationError(f"{where}: needs integer 'height' and 'width'") from e
