"""Per-frame segmentations (null, polygons, uncompressed or compressed RLE) -> validated RLE, and
the package's one RLE -> mask decoder (`decode_mask`; `masks_from_counts` for the built records).

Every frame mask becomes a pycocotools compressed RLE `{"size": [h, w], "counts": bytes}` or None
(object absent in that frame). Anything the official evaluator would mis-score silently is refused
with an `EvaluationInputError` naming the input, video, annotation and frame: a size that differs
from the video's, a compressed string that does not decode to exactly h*w pixels, negative runs,
degenerate polygons (pycocotools reads a 4-number polygon as a box).
"""

import numbers

import numpy as np
from pycocotools import mask as mask_utils

from o2vis_jax.evaluation.errors import EvaluationInputError

# The compressed alphabet is 64 characters from '0' (48); 7 characters hold 35 bits, enough for
# any uint32 run length with its sign bit.
_FIRST_CHAR = 48
_MAX_CHARS_PER_VALUE = 7


class MalformedCounts(ValueError):
  """A compressed counts string that is not a pycocotools encoding; `index` says which one."""

  def __init__(self, index: int, message: str):
    super().__init__(message)
    self.index = index


def decode_counts(strings: list) -> tuple:
  """Decodes pycocotools compressed counts strings (bytes) into run lengths, all in one pass.

  Format (pycocotools `rleToString`): each value is written in 5-bit groups, least significant
  first, as characters 48 + group, bit 0x20 meaning "more groups follow" and bit 0x10 of the last
  group the sign; value m >= 3 stores the difference to value m - 2.

  Returns:
    (runs int64, first) where string i's runs are runs[first[i]:first[i + 1]].
  Raises:
    MalformedCounts on the first string that is not such an encoding.
  """
  lengths = np.array([len(string) for string in strings])
  if lengths.size == 0:
    return np.zeros(0, np.int64), np.zeros(1, np.int64)
  if (lengths == 0).any():
    raise MalformedCounts(int(np.argmin(lengths)), "empty counts string")
  string_of_char = np.repeat(np.arange(lengths.size), lengths)
  chars = np.frombuffer(b"".join(strings), dtype=np.uint8).astype(np.int64) - _FIRST_CHAR
  bad = (chars < 0) | (chars > 63)
  if bad.any():
    raise MalformedCounts(int(string_of_char[np.argmax(bad)]),
                          "character outside the RLE alphabet ('0'..'o')")
  more = (chars & 0x20) != 0
  last_chars = np.cumsum(lengths) - 1
  if more[last_chars].any():
    raise MalformedCounts(int(np.argmax(more[last_chars])), "counts string ends inside a value")
  ends = np.flatnonzero(~more)
  starts = np.concatenate([[0], ends[:-1] + 1])
  value_lengths = ends - starts + 1
  if value_lengths.max() > _MAX_CHARS_PER_VALUE:
    raise MalformedCounts(int(string_of_char[ends[np.argmax(value_lengths)]]),
                          f"a value spans more than {_MAX_CHARS_PER_VALUE} characters")
  value_of_char = np.repeat(np.arange(ends.size), value_lengths)
  shift = 5 * (np.arange(chars.size) - starts[value_of_char])
  values = np.add.reduceat((chars & 0x1F) << shift, starts)
  negative = ((chars[ends] & 0x10) != 0).astype(np.int64)
  values = values - (negative << (5 * value_lengths))
  # Undo the delta coding: a cumulative sum along each chain (string, odd m) and
  # (string, even m >= 2); m = 0 stands alone.
  string_of_value = string_of_char[ends]
  first = np.searchsorted(string_of_value, np.arange(lengths.size + 1))
  m = np.arange(values.size) - first[string_of_value]
  chain = 3 * string_of_value + np.where(m == 0, 0, np.where(m % 2 == 1, 1, 2))
  order = np.argsort(chain, kind="stable")
  sorted_chain, sorted_values = chain[order], values[order]
  totals = np.cumsum(sorted_values)
  chain_start = np.flatnonzero(np.diff(sorted_chain, prepend=-1))
  offsets = np.repeat(totals[chain_start] - sorted_values[chain_start],
                      np.diff(np.append(chain_start, sorted_values.size)))
  runs = np.empty_like(values)
  runs[order] = totals - offsets
  return runs, first


def run_lengths(counts: bytes) -> np.ndarray:
  """One compressed counts string -> its run lengths (int64); ValueError if malformed."""
  return decode_counts([counts])[0]


def _check_totals(runs: np.ndarray, first: np.ndarray, height: int, width: int, wheres):
  """Every string's runs must be >= 0 and cover exactly height * width pixels."""
  if runs.size == 0:
    return
  minima = np.minimum.reduceat(runs, first[:-1])
  totals = np.add.reduceat(runs, first[:-1])
  for i in np.flatnonzero((minima < 0) | (totals != height * width)):
    if minima[i] < 0:
      raise EvaluationInputError(
          f"{wheres[i]}: malformed RLE, negative run length {int(minima[i])}")
    raise EvaluationInputError(
        f"{wheres[i]}: malformed RLE, runs cover {int(totals[i])} pixels, video is "
        f"{height}x{width} = {height * width}")


def is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _rle_to_compressed(segmentation: dict, height: int, width: int, where: str) -> dict:
  """RLE dict -> compressed RLE; compressed counts are checked later, a track at a time."""
  missing = [key for key in ("size", "counts") if key not in segmentation]
  if missing:
    raise EvaluationInputError(f"{where}: malformed RLE, missing key(s) {missing}")
  size = segmentation["size"]
  if (not isinstance(size, (list, tuple)) or len(size) != 2
      or not all(isinstance(s, numbers.Integral) for s in size)):
    raise EvaluationInputError(f"{where}: malformed RLE, size {size!r} is not [height, width]")
  if (int(size[0]), int(size[1])) != (height, width):
    raise EvaluationInputError(
        f"{where}: mask size {int(size[0])}x{int(size[1])} differs from the video size "
        f"{height}x{width}")
  counts = segmentation["counts"]
  if isinstance(counts, str):
    counts = counts.encode("ascii", errors="replace")
  if isinstance(counts, bytes):
    return {"size": [height, width], "counts": counts}
  if isinstance(counts, (list, tuple)):
    if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in counts):
      raise EvaluationInputError(f"{where}: malformed RLE, uncompressed counts must be integers")
    runs = np.asarray(counts, dtype=np.int64)
    _check_totals(runs, np.array([0, runs.size]), height, width, [where])
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": list(counts)}, height, width)
    return {"size": [height, width], "counts": rle["counts"]}
  raise EvaluationInputError(
      f"{where}: malformed RLE, counts is a {type(counts).__name__}, expected a string or a list")


def _polygons_to_compressed(polygons: list, height: int, width: int, where: str) -> dict:
  for polygon in polygons:
    if (not isinstance(polygon, (list, tuple)) or len(polygon) < 6 or len(polygon) % 2
        or not all(is_number(v) and np.isfinite(v) for v in polygon)):
      raise EvaluationInputError(
          f"{where}: malformed polygon, expected lists of >= 3 (x, y) pairs of numbers")
  rle = mask_utils.merge(mask_utils.frPyObjects([list(p) for p in polygons], height, width))
  return {"size": [height, width], "counts": rle["counts"]}


def _frame_to_rle(segmentation, height: int, width: int, where: str):
  """One frame's segmentation -> compressed RLE dict, or None when the object is absent.

  Absent: `null` or an empty list (the official evaluator tests `if segmentation:`).
  """
  if segmentation is None or (isinstance(segmentation, list) and not segmentation):
    return None
  if isinstance(segmentation, dict):
    return _rle_to_compressed(segmentation, height, width, where)
  if isinstance(segmentation, list):
    return _polygons_to_compressed(segmentation, height, width, where)
  raise EvaluationInputError(
      f"{where}: a frame segmentation must be null, an RLE dict or a list of polygons, got "
      f"{type(segmentation).__name__}")


def track_to_rles(segmentations, height: int, width: int, num_frames: int, where: str) -> list:
  """A whole track's `segmentations` (one entry per video frame) -> list of RLE dicts / None.

  Every compressed string is decoded (all frames of the track in one vectorised pass) and must
  cover exactly height * width pixels with non-negative runs.
  """
  if not isinstance(segmentations, (list, tuple)):
    raise EvaluationInputError(
        f"{where}: 'segmentations' must be a list with one entry per frame, got "
        f"{type(segmentations).__name__}")
  if len(segmentations) != num_frames:
    raise EvaluationInputError(
        f"{where}: {len(segmentations)} segmentations, the video has {num_frames} frames")
  frame_wheres = [f"{where}, frame {frame}" for frame in range(num_frames)]
  rles = [_frame_to_rle(segmentation, height, width, frame_wheres[frame])
          for frame, segmentation in enumerate(segmentations)]
  compressed = [frame for frame, (rle, segmentation) in enumerate(zip(rles, segmentations))
                if rle is not None and isinstance(segmentation, dict)
                and isinstance(segmentation["counts"], (str, bytes))]
  try:
    runs, first = decode_counts([rles[frame]["counts"] for frame in compressed])
  except MalformedCounts as error:
    raise EvaluationInputError(
        f"{frame_wheres[compressed[error.index]]}: malformed RLE, {error}") from None
  _check_totals(runs, first, height, width, [frame_wheres[frame] for frame in compressed])
  return rles


def decode_mask(rle: dict) -> np.ndarray:
  """A COCO RLE -> bool [H, W]; the one decoder of the package (datasets, input pipeline, inference).

  `counts` may be compressed (str or bytes: results files, pycocotools `encode`, the built records) or
  the uncompressed run-length list of the official train annotations; `size` is [height, width].
  Decoding does not validate: inputs from outside go through `track_to_rles` (evaluation) or the
  dataset builders first.
  """
  missing = [key for key in ("size", "counts") if key not in rle]
  if missing:
    raise ValueError(f"RLE misses key(s) {missing}; has {sorted(rle)}")
  height, width = (int(s) for s in rle["size"])
  counts = rle["counts"]
  if isinstance(counts, (list, tuple)):
    rle = mask_utils.frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]},
                                 height, width)
  else:
    rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else bytes(counts)}
  return mask_utils.decode(rle).astype(bool)


def masks_from_counts(counts, height: int, width: int) -> np.ndarray:
  """[n] compressed counts (bytes; b"" where the object is absent) of one frame size -> bool
  [n, height, width]: the built dataset records store their masks this way (datasets/builders/common.py)."""
  masks = np.zeros((len(counts), height, width), bool)
  for i, string in enumerate(counts):
    if len(string):
      masks[i] = decode_mask({"size": [height, width], "counts": string})
  return masks


def frame_areas(rles: list) -> np.ndarray:
  """Pixel areas of a track's frames (0 where the object is absent), float64."""
  areas = np.zeros(len(rles), dtype=np.float64)
  present = [i for i, rle in enumerate(rles) if rle is not None]
  if present:
    areas[present] = mask_utils.area([rles[i] for i in present])
  return areas
