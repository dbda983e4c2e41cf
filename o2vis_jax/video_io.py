"""Reading videos frame by frame, and the test-time resize / pad (SPEC section 4, REFERENCE.md 8.1).

Frame sources stream: a video of any length is never held in memory, only the frames of one chunk.
A source is a directory of image frames (sorted by name), an explicit list of frame files (a
YouTube-VIS split) or a video file read through imageio (mp4 and the like need the `imageio-ffmpeg`
or `av` plugin; GIF, TIFF and APNG need only Pillow). Every read error names the file.

Test-time geometry (detectron2 `ResizeShortestEdge` + `ImageList.from_tensors`, as in Mask2Former):
the shorter side is resized to `min_size` (PIL bilinear on uint8), the longer side scaled alike and
rounded, then the image is padded bottom / right to a multiple of `size_divisibility`.
"""

import dataclasses
import os
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class VideoReadError(IOError):
  """A frame or a video that cannot be read; the message names the file."""


# --------------------------------------------------------------------------------------------------
# Test-time geometry.

def resized_shape(height: int, width: int, min_size: int,
                  max_size: Optional[int] = None) -> Tuple[int, int]:
  """Shape after resizing the shorter side to `min_size` (detectron2 ResizeShortestEdge rounding)."""
  scale = min_size / min(height, width)
  new_h, new_w = height * scale, width * scale
  if max_size is not None and max(new_h, new_w) > max_size:
    shrink = max_size / max(new_h, new_w)
    new_h, new_w = new_h * shrink, new_w * shrink
  return int(new_h + 0.5), int(new_w + 0.5)


def padded_shape(height: int, width: int, size_divisibility: int) -> Tuple[int, int]:
  """The shape rounded up to a multiple of `size_divisibility` (no change for 0 or 1)."""
  if size_divisibility <= 1:
    return height, width
  d = size_divisibility
  return -(-height // d) * d, -(-width // d) * d


@dataclasses.dataclass(frozen=True)
class FrameGeometry:
  """Original, resized and padded sizes of every frame of one video."""
  height: int                     # original
  width: int
  resized_height: int             # after the shorter-side resize (the valid region of the input)
  resized_width: int
  padded_height: int              # the network input
  padded_width: int

  @classmethod
  def for_video(cls, height: int, width: int, min_size: int, size_divisibility: int,
                max_size: Optional[int] = None) -> "FrameGeometry":
    rh, rw = resized_shape(height, width, min_size, max_size)
    ph, pw = padded_shape(rh, rw, size_divisibility)
    return cls(height, width, rh, rw, ph, pw)


def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [h, w, 3] -> uint8 [height, width, 3], PIL bilinear (what detectron2 does on uint8)."""
  if frame.shape[:2] == (height, width):
    return frame
  return np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))


def pad_frame(frame: np.ndarray, height: int, width: int, pad_value: Sequence[float]) -> np.ndarray:
  """[h, w, 3] -> float32 [height, width, 3], the image at the top-left, `pad_value` elsewhere.

  The segmenter normalises (x - mean) / std; padding with the pixel mean makes the padded region 0
  after normalisation, which is what detectron2 pads the normalised tensor with.
  """
  out = np.empty((height, width, 3), np.float32)
  out[...] = np.asarray(pad_value, np.float32)
  out[:frame.shape[0], :frame.shape[1]] = frame
  return out


def preprocess_frame(frame: np.ndarray, geometry: FrameGeometry,
                     pad_value: Sequence[float]) -> np.ndarray:
  """Original uint8 frame -> float32 network input [padded_height, padded_width, 3]."""
  if frame.shape[:2] != (geometry.height, geometry.width):
    raise ValueError(f"frame of shape {frame.shape[:2]} in a video of "
                     f"{geometry.height}x{geometry.width} frames")
  resized = resize_frame(frame, geometry.resized_height, geometry.resized_width)
  return pad_frame(resized, geometry.padded_height, geometry.padded_width, pad_value)


# --------------------------------------------------------------------------------------------------
# Frame sources.

def _to_rgb(array: np.ndarray, what: str) -> np.ndarray:
  array = np.asarray(array)
  if array.ndim == 2:
    array = np.repeat(array[:, :, None], 3, axis=2)
  if array.ndim != 3 or array.shape[2] not in (3, 4):
    raise VideoReadError(f"{what}: expected an RGB image, got an array of shape {array.shape}")
  array = array[:, :, :3]
  if array.dtype != np.uint8:
    if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
      array = array * 255.0
    array = np.clip(array, 0, 255).astype(np.uint8)
  return np.ascontiguousarray(array)


def read_image(path: str) -> np.ndarray:
  """One frame file -> uint8 RGB [H, W, 3]; a `VideoReadError` naming the file otherwise."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, SyntaxError) as e:
    raise VideoReadError(f"cannot read frame {path!r}: {e}") from e


class FrameFiles:
  """A video given as a list of frame image files (a YouTube-VIS video, a directory of frames)."""

  def __init__(self, paths: Sequence[str], name: Optional[str] = None):
    if not paths:
      raise VideoReadError(f"video {name!r} has no frames")
    self.paths = list(paths)
    self.name = name if name is not None else os.path.dirname(self.paths[0])
    self.frame_names = [os.path.basename(p) for p in self.paths]
    try:
      with Image.open(self.paths[0]) as image:
        self.width, self.height = image.size
    except (OSError, ValueError, SyntaxError) as e:
      raise VideoReadError(f"cannot read frame {self.paths[0]!r}: {e}") from e

  def __len__(self) -> int:
    return len(self.paths)

  def __iter__(self) -> Iterator[np.ndarray]:
    for path in self.paths:
      frame = read_image(path)
      if frame.shape[:2] != (self.height, self.width):
        raise VideoReadError(
            f"frame {path!r} is {frame.shape[0]}x{frame.shape[1]}, the first frame of video "
            f"{self.name!r} is {self.height}x{self.width}")
      yield frame


def frame_directory(directory: str) -> FrameFiles:
  """The image files of `directory`, sorted by name, as one video."""
  if not os.path.isdir(directory):
    raise VideoReadError(f"{directory!r} is not a directory")
  names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS))
  if not names:
    raise VideoReadError(f"directory {directory!r} has no image frames "
                         f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
  return FrameFiles([os.path.join(directory, n) for n in names],
                    name=os.path.basename(os.path.normpath(directory)))


class VideoFile:
  """A video file read frame by frame through imageio (never all frames at once)."""

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise VideoReadError(f"video file {path!r} does not exist")
    self.path = path
    self.name = os.path.splitext(os.path.basename(path))[0]
    self._length = None
    self.fps = None
    iterator = self._frames()
    try:
      first = next(iterator)
    except StopIteration:
      raise VideoReadError(f"video file {path!r} has no frames") from None
    finally:
      iterator.close()
    self.height, self.width = first.shape[:2]
    self._read_metadata()

  def _read_metadata(self):
    import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
    try:
      meta = iio.immeta(self.path)
      self.fps = meta.get("fps")
      if self.fps is None and meta.get("duration"):
        self.fps = 1000.0 / float(meta["duration"])   # GIF frame duration in milliseconds
    except Exception:  # pylint: disable=broad-except
      pass             # metadata is a convenience (fps of the overlay); frames are what counts

  def _frames(self) -> Iterator[np.ndarray]:
    import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
    index = 0
    try:
      for frame in iio.imiter(self.path):
        yield _to_rgb(frame, f"frame {index} of {self.path!r}")
        index += 1
    except VideoReadError:
      raise
    except Exception as e:  # imageio raises many types: no plugin, truncated stream, ...
      hint = ""
      if self.path.lower().endswith((".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")):
        hint = " (reading this format needs `pip install imageio-ffmpeg` or `pip install av`)"
      raise VideoReadError(f"cannot read video file {self.path!r} at frame {index}: "
                           f"{type(e).__name__}: {e}{hint}") from e

  @property
  def frame_names(self) -> List[str]:
    return [f"{i:05d}.png" for i in range(len(self))]

  def __len__(self) -> int:
    if self._length is None:   # counted by decoding once: container frame counts are unreliable
      self._length = sum(1 for _ in self._frames())
    return self._length

  def __iter__(self) -> Iterator[np.ndarray]:
    count = 0
    for frame in self._frames():
      if frame.shape[:2] != (self.height, self.width):
        raise VideoReadError(f"frame {count} of {self.path!r} is {frame.shape[0]}x{frame.shape[1]},"
                             f" the first frame is {self.height}x{self.width}")
      count += 1
      yield frame
    self._length = count


def open_video(path: str):
  """A directory of frames or a video file -> a frame source (`len`, `height`, `width`, iteration)."""
  if os.path.isdir(path):
    return frame_directory(path)
  if not os.path.exists(path):
    raise VideoReadError(f"input {path!r} does not exist")
  return VideoFile(path)


# --------------------------------------------------------------------------------------------------
# Chunking.

@dataclasses.dataclass
class Chunk:
  images: np.ndarray          # float32 [chunk_size, padded_height, padded_width, 3]
  frame_valid: np.ndarray     # bool [chunk_size]; False for the padding after the last frame
  start: int                  # index of the chunk's first frame in the video
  num_valid: int


def iter_chunks(frames, geometry: FrameGeometry, chunk_size: int,
                pad_value: Sequence[float]) -> Iterator[Chunk]:
  """Pre-processed fixed-size chunks of a frame stream; the last one padded with invalid frames.

  Padded frames repeat the pad value everywhere (their outputs are masked out downstream).
  """
  images = np.empty((chunk_size, geometry.padded_height, geometry.padded_width, 3), np.float32)
  valid = np.zeros((chunk_size,), bool)
  start, filled = 0, 0
  for frame in frames:
    images[filled] = preprocess_frame(frame, geometry, pad_value)
    valid[filled] = True
    filled += 1
    if filled == chunk_size:
      yield Chunk(images.copy(), valid.copy(), start, filled)
      start += filled
      filled = 0
      valid[:] = False
  if filled:
    images[filled:] = np.asarray(pad_value, np.float32)
    yield Chunk(images.copy(), valid.copy(), start, filled)
