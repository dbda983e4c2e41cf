"""Reading videos frame by frame, and the test-time resize / pad (SPEC section 4, REFERENCE.md 8.1).

Frame sources stream: a video of any length is never held in memory, only the frames of one chunk.
A source is a directory of image frames (sorted by name), an explicit list of frame files (a
YouTube-VIS split) or a video file: mp4 and the like decoded by the ffmpeg of `imageio-ffmpeg` (a
requirement), animated GIF / TIFF / APNG read by Pillow through imageio. Every read error names the
file and the frame. A video file is decoded once when it is opened, so a truncated or corrupt file
(the frames that decode fewer than its container announces, a decoder error) is reported before any
model runs, with the frame where decoding stops (`IncompleteVideoError`, or `allow_partial`).

Test-time geometry (detectron2 `ResizeShortestEdge` + `ImageList.from_tensors`, as in Mask2Former):
the shorter side is resized to `min_size` (PIL bilinear on uint8), the longer side scaled alike and
rounded, then the image is padded bottom / right to a multiple of `size_divisibility`.
"""

import dataclasses
import importlib.util
import logging
import os
import re
import subprocess
import tempfile
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

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


def read_image(path: str, what: Optional[str] = None) -> np.ndarray:
  """One frame file -> uint8 RGB [H, W, 3]; a `VideoReadError` naming the file (or `what`) otherwise."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, SyntaxError) as e:
    raise VideoReadError(f"cannot read {what or f'frame {path!r}'}: {e}") from e


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
      raise VideoReadError(f"cannot read frame 0 {self.paths[0]!r} of video {self.name!r}: {e}") from e

  def __len__(self) -> int:
    return len(self.paths)

  def __iter__(self) -> Iterator[np.ndarray]:
    for index, path in enumerate(self.paths):
      frame = read_image(path, f"frame {index} {path!r} of video {self.name!r}")
      if frame.shape[:2] != (self.height, self.width):
        raise VideoReadError(
            f"frame {index} {path!r} is {frame.shape[0]}x{frame.shape[1]}, the first frame of video "
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


# Animated images Pillow reads through imageio; every other file is a video for ffmpeg.
PILLOW_ANIMATION_SUFFIXES = (".gif", ".png", ".apng", ".webp", ".tif", ".tiff")
# What the hint "needs imageio-ffmpeg" may be given for (only when it is really missing).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv",
                  ".flv", ".3gp")


def ffmpeg_executable() -> Optional[str]:
  """The ffmpeg of imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE); None where there is none."""
  try:
    import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
    return imageio_ffmpeg.get_ffmpeg_exe()
  except (ImportError, RuntimeError):   # RuntimeError: the package is there, its binary is not
    return None


# "[h264 @ 0x55ce9de14540] [dec:h264 @ 0x...] [error] Invalid NAL unit size" -> level, message.
_LOG_CONTEXT = re.compile(r"^(\[[^\]]* @ 0x[0-9a-fA-F]+\] ?)+")
_LOG_LEVEL = re.compile(r"^\[(panic|fatal|error|warning|info|verbose|debug|trace)\] ?")


def _ffmpeg_log(text: str) -> List[Tuple[str, str]]:
  """(level, message) of each line of an ffmpeg log written with `-loglevel level+...`."""
  lines = []
  for line in text.splitlines():
    line = _LOG_CONTEXT.sub("", line)
    match = _LOG_LEVEL.match(line)
    level = match.group(1) if match else "info"
    message = line[match.end():] if match else line
    if message.strip():
      lines.append((level, message.rstrip()))
  return lines


def _ffmpeg_errors(log: List[Tuple[str, str]]) -> List[str]:
  return [message.strip() for level, message in log if level in ("panic", "fatal", "error")]


def _is_cut(errors: Sequence[str]) -> bool:
  """The demuxer found samples past the end of the file: the file was cut."""
  return any("partial file" in e or "truncat" in e.lower() for e in errors)


def _telling_error(errors: Sequence[str]) -> str:
  """The error line that explains the others (the cut file rather than the decoder's complaints)."""
  cut = [e for e in errors if "partial file" in e or "truncat" in e.lower()]
  return (cut or list(errors))[0]


def first_meaningful_line(text: str) -> str:
  """The first line of a tool's message that says what went wrong: no version banner, build
  configuration or library versions (what ffmpeg prints first), no `[codec @ 0x...]` prefixes."""
  banner = re.compile(r"^\s*(ffmpeg version|built with|configuration:|lib\w+\s+\d|=== stderr ===|"
                      r"Could not load meta information|Copyright)")
  lines = [_LOG_LEVEL.sub("", _LOG_CONTEXT.sub("", line)).strip() for line in text.splitlines()]
  lines = [line for line in lines if line and not banner.match(line)]
  for line in lines:   # an error rather than a warning about it
    if re.search(r"error|invalid|not found|no such|partial|corrupt|truncat|unsupported|could not|"
                 r"cannot|unable", line, re.IGNORECASE):
      return line
  return lines[0] if lines else "no message"


def _ffmpeg_hint(message: str) -> str:
  if "moov atom not found" in message:
    return (" (the file's index is missing: the mp4 is truncated, still being written, or not an "
            "mp4)")
  return ""


@dataclasses.dataclass
class _Probe:
  """What a decoding pass of ffmpeg (to the null muxer) says about a video file."""
  frames: int                       # frames decoded
  height: int                       # of the decoded frames (after ffmpeg's autorotation)
  width: int
  fps: Optional[float]
  duration: Optional[float]         # the container's, seconds
  errors: List[str]                 # error lines of the decoders and the demuxer, in order
  failed: bool                      # ffmpeg gave up (e.g. too many frames fail to decode)

  @property
  def announced_frames(self) -> Optional[int]:
    """The frame count the container's duration and frame rate imply (None if it tells neither)."""
    if not self.fps or not self.duration:
      return None
    return int(round(self.duration * self.fps))


def _decode_command(executable: str, path: str, output: List[str], loglevel: str) -> List[str]:
  # passthrough: one output frame per decoded frame, no duplicated or dropped frames (the null and
  # rawvideo muxers would otherwise disagree about variable-frame-rate videos).
  return [executable, "-hide_banner", "-nostdin", "-nostats", "-loglevel", loglevel, "-i", path,
          "-map", "0:v:0", "-fps_mode", "passthrough"] + output


def _probe(executable: str, path: str) -> _Probe:
  """Decodes the whole video once, to the null muxer (no conversion, no copy to Python)."""
  command = _decode_command(executable, path, ["-progress", "pipe:1", "-f", "null", "-"],
                            "level+info")
  # close_fds=False lets Python posix_spawn ffmpeg instead of forking a process that runs JAX's
  # threads (JAX warns about fork); Python's own descriptors are close-on-exec anyway.
  run = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, close_fds=False, check=False)
  log = _ffmpeg_log(run.stderr.decode("utf-8", "replace"))
  errors = _ffmpeg_errors(log)
  output_video = [m for _, m in log if m.lstrip().startswith("Stream #") and " Video: " in m]
  counts = re.findall(r"^frame=(\d+)", run.stdout.decode("utf-8", "replace"), re.MULTILINE)
  frames = int(counts[-1]) if counts else 0
  if frames == 0 and (run.returncode != 0 or not output_video):
    message = (_telling_error(errors) if errors
               else first_meaningful_line(run.stderr.decode("utf-8", "replace")))
    what = "is truncated: no frame decodes" if _is_cut(errors) else "cannot be read"
    raise VideoReadError(f"video file {path!r} {what}: {message}{_ffmpeg_hint(message)}")
  messages = [m for _, m in log]
  duration = fps = None
  for message in messages:
    match = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", message)
    if match:
      duration = int(match.group(1)) * 3600 + int(match.group(2)) * 60 + float(match.group(3))
      break
  rate = (re.search(r" (\d+(?:\.\d+)?) fps", output_video[0])
          or re.search(r" (\d+(?:\.\d+)?) tbr", output_video[0]))
  if rate:
    fps = float(rate.group(1))
  # The output stream (the last video line) has the decoded size, after autorotation.
  size = re.search(r",\s(\d+)x(\d+)(?=[\s,\[]|$)", output_video[-1])
  if size is None:
    raise VideoReadError(f"cannot read video file {path!r}: no frame size in ffmpeg's description "
                         f"{output_video[-1].strip()!r}")
  return _Probe(frames=frames, height=int(size.group(2)), width=int(size.group(1)), fps=fps,
                duration=duration or None, errors=errors, failed=run.returncode != 0)


def _incompleteness(probe: _Probe) -> Optional[str]:
  """Why the decoded frames are not the whole video, or None if nothing says they are not.

  The container's duration x frame rate is what the video should hold; a video stream a little
  shorter than its audio is normal, so without a decoding error a shortfall of up to 2% (at least
  2 frames) is tolerated. The demuxer's "partial file" (samples past the end of the file) is the
  surest sign of a cut mp4, e.g. one written for streaming (index at the front) and cut in half.
  """
  announced = probe.announced_frames
  cut = _is_cut(probe.errors)
  short = announced is not None and probe.frames < announced - max(2, round(0.02 * announced))
  lost = announced is not None and probe.errors and probe.frames < announced
  if not (cut or short or lost or probe.failed):
    return None
  # Where frames are lost mid-stream (a corrupt packet) ffmpeg does not say which: the count then.
  what = (f"decoding stops at frame {probe.frames}" if cut or probe.failed
          else f"{probe.frames} frames decode")
  if announced is not None:
    what += f", its container announces {announced} ({probe.duration:.2f} s at {probe.fps:g} fps)"
  error = f"; ffmpeg: {_telling_error(probe.errors)}" if probe.errors else ""
  return what + error


class IncompleteVideoError(VideoReadError):
  """A video file that decodes only in part (truncated, corrupt mid-stream); `frames_read` decode."""

  def __init__(self, message: str, path: str, frames_read: int):
    super().__init__(message)
    self.path = path
    self.frames_read = frames_read


class VideoFile:
  """A video file read frame by frame (never all frames at once), checked whole when opened.

  Videos (mp4, ...) are decoded by the ffmpeg of imageio-ffmpeg: opening decodes the file once
  without keeping the frames, which counts them, and compares the count with what the container
  announces; a truncated or corrupt file raises `IncompleteVideoError` naming the frame where
  decoding stops, before any model runs. With `allow_partial=True` it opens instead, holds the
  frames that decode, and `incomplete` says what is missing. Animated images (GIF, ...) are read
  by Pillow through imageio.
  """

  def __init__(self, path: str, allow_partial: bool = False):
    if not os.path.isfile(path):
      raise VideoReadError(f"video file {path!r} does not exist")
    self.path = path
    self.name = os.path.splitext(os.path.basename(path))[0]
    self.fps = None
    self.incomplete: Optional[str] = None   # why only part of the video is read (allow_partial)
    self._length = None
    suffix = os.path.splitext(path)[1].lower()
    self._ffmpeg = None if suffix in PILLOW_ANIMATION_SUFFIXES else ffmpeg_executable()
    if self._ffmpeg is not None:
      self._open_with_ffmpeg(allow_partial)
    else:
      self._open_with_imageio()

  # -- ffmpeg ----------------------------------------------------------------------------------

  def _open_with_ffmpeg(self, allow_partial: bool):
    probe = _probe(self._ffmpeg, self.path)
    if probe.frames == 0:
      detail = f": {_telling_error(probe.errors)}" if probe.errors else ""
      raise VideoReadError(f"video file {self.path!r} has no frames that decode{detail}")
    self.height, self.width, self.fps = probe.height, probe.width, probe.fps
    self._length = probe.frames
    reason = _incompleteness(probe)
    if reason is not None:
      if not allow_partial:
        raise IncompleteVideoError(f"video file {self.path!r} is truncated or corrupt: {reason}",
                                   self.path, probe.frames)
      self.incomplete = reason
    elif probe.errors:   # every announced frame decoded: a damaged but complete stream
      logger.warning("video file %r: ffmpeg reports %r, but every frame decodes", self.path,
                     probe.errors[0])

  def _ffmpeg_frames(self) -> Iterator[np.ndarray]:
    command = _decode_command(self._ffmpeg, self.path,
                              ["-pix_fmt", "rgb24", "-f", "rawvideo", "-"], "error")
    frame_bytes = self.height * self.width * 3
    with tempfile.TemporaryFile() as log:   # a file, not a pipe: a chatty decoder cannot block
      process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=log, close_fds=False)
      index = 0
      try:
        while True:
          buffer = bytearray(frame_bytes)
          view, filled = memoryview(buffer), 0
          while filled < frame_bytes:
            got = process.stdout.readinto(view[filled:])
            if not got:
              break
            filled += got
          if filled == 0:
            break
          if filled < frame_bytes:
            raise VideoReadError(f"video file {self.path!r}: frame {index} ends after {filled} of "
                                 f"its {frame_bytes} bytes")
          yield np.frombuffer(buffer, np.uint8).reshape(self.height, self.width, 3)
          index += 1
        returncode = process.wait()
        log.seek(0)
        errors = _ffmpeg_errors(_ffmpeg_log(log.read().decode("utf-8", "replace")))
        if returncode != 0 and self.incomplete is None:
          message = _telling_error(errors) if errors else f"ffmpeg exited with status {returncode}"
          raise VideoReadError(f"video file {self.path!r}: decoding stops at frame {index}: "
                               f"{message}")
        if index != self._length:   # the file changed since it was opened, or decoding is erratic
          error = f"; ffmpeg: {_telling_error(errors)}" if errors else ""
          raise VideoReadError(f"video file {self.path!r}: {index} frames decode now, {self._length} "
                               f"did when it was opened{error}")
      finally:
        process.stdout.close()
        if process.poll() is None:   # the consumer stopped early (an error, Ctrl-C)
          process.kill()
          process.wait()

  # -- imageio (animated images) ---------------------------------------------------------------

  def _open_with_imageio(self):
    iterator = self._imageio_frames()
    try:
      first = next(iterator)
    except StopIteration:
      raise VideoReadError(f"video file {self.path!r} has no frames") from None
    finally:
      iterator.close()
    self.height, self.width = first.shape[:2]
    import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
    try:
      meta = iio.immeta(self.path)
      self.fps = meta.get("fps")
      if self.fps is None and meta.get("duration"):
        self.fps = 1000.0 / float(meta["duration"])   # GIF frame duration in milliseconds
    except Exception:  # pylint: disable=broad-except
      pass             # metadata is a convenience (fps of the overlay); frames are what counts

  def _imageio_frames(self) -> Iterator[np.ndarray]:
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
      if (self.path.lower().endswith(VIDEO_SUFFIXES)
          and not any(importlib.util.find_spec(m) for m in ("imageio_ffmpeg", "av"))):
        hint = " (reading this format needs `pip install imageio-ffmpeg`)"
      message = first_meaningful_line(str(e))
      raise VideoReadError(f"cannot read video file {self.path!r} at frame {index}: "
                           f"{type(e).__name__}: {message}{hint}") from e

  # -- the frame source --------------------------------------------------------------------------

  def _frames(self) -> Iterator[np.ndarray]:
    return self._ffmpeg_frames() if self._ffmpeg is not None else self._imageio_frames()

  @property
  def frame_names(self) -> List[str]:
    return [f"{i:05d}.png" for i in range(len(self))]

  def __len__(self) -> int:
    if self._length is None:   # imageio: counted by decoding once (container counts are unreliable)
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


def open_video(path: str, allow_partial: bool = False):
  """A directory of frames or a video file -> a frame source (`len`, `height`, `width`, iteration).

  allow_partial: a truncated or corrupt video file opens with the frames that decode (its
  `incomplete` says what is missing) instead of raising `IncompleteVideoError`.
  """
  if os.path.isdir(path):
    return frame_directory(path)
  if not os.path.exists(path):
    raise VideoReadError(f"input {path!r} does not exist")
  return VideoFile(path, allow_partial=allow_partial)


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
