"""The evaluated unit of both sides: one object track, its per-frame RLEs and its summaries."""

import dataclasses
from typing import Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class Video:
  id: int
  height: int
  width: int
  num_frames: int
  name: str  # for error messages: the first frame's folder, or '' when unknown

  def describe(self) -> str:
    return f"video {self.id} ({self.name!r})" if self.name else f"video {self.id}"


@dataclasses.dataclass(frozen=True)
class Track:
  """A ground-truth annotation or a predicted result, validated and converted to RLE.

  `frame_areas` are the RLE pixel areas (0 where absent), used for the tube IoU. `mean_area` is
  the mean of the non-zero per-frame areas, used for the area ranges: for ground truth from the
  JSON `areas`, for predictions from the masks (as the official `loadRes` does).
  """
  video_id: int
  category_id: int
  rles: list
  frame_areas: np.ndarray
  mean_area: float
  score: float = 1.0  # predictions only
  iscrowd: bool = False  # ground truth only
  occlusion_score: Optional[float] = None  # OVIS ground truth only


def mean_nonzero_area(areas) -> float:
  """Mean of the truthy per-frame areas (null and 0 skipped), 0 when there is none.

  Same reduction (`np.array(list).mean()`) as the official code, so float areas agree bitwise.
  """
  nonzero = [area for area in areas if area]
  return float(np.array(nonzero).mean()) if nonzero else 0.0
