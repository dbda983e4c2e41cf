"""Overlays of instance masks on frames, with one stable colour per identity (a tracker slot).

Used by `scripts/infer.py` and the demo. Everything streams frame by frame: an overlay of a video
of any length needs the memory of one frame (except an animated GIF, which Pillow writes at the end).

* `identity_colour(i)`: the colour of identity `i`, the same in every frame, video and run
  (golden-ratio hue steps, so neighbouring identities get distinct colours).
* `overlay_frame`: masks blended on a frame, contours, optional label text.
* `OverlayWriter`: mp4 and the like through imageio-ffmpeg (or PyAV) when installed, otherwise a
  directory of PNG frames; `.gif` an animated GIF; a path without suffix a directory of PNG frames
  (`overlay_target` says which, so a command line can check the path before it runs a model).
* `write_png_masks`: per-frame indexed PNG masks (DAVIS style: 0 background, i + 1 instance i, the
  palette holding the identity colours).
"""

import colorsys
import importlib.util
import logging
import os
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from o2vis_jax.evaluation import rle as rle_lib

_GOLDEN_RATIO_CONJUGATE = 0.618033988749895
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def identity_colour(identity: int) -> np.ndarray:
  """uint8 RGB colour of an identity: a pure function of the integer, stable across frames and runs."""
  hue = (0.13 + identity * _GOLDEN_RATIO_CONJUGATE) % 1.0
  saturation = 0.85 if identity % 2 == 0 else 0.65
  value = 0.95 if (identity // 2) % 2 == 0 else 0.8
  return np.round(np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255).astype(np.uint8)


def _boundary(mask: np.ndarray) -> np.ndarray:
  """Pixels of `mask` with a 4-neighbour outside it."""
  padded = np.pad(mask, 1)
  interior = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
  return mask & ~interior


def overlay_frame(frame: np.ndarray, masks: np.ndarray, identities: Sequence[int],
                  labels: Optional[Sequence[Optional[str]]] = None, alpha: float = 0.5,
                  contours: bool = True) -> np.ndarray:
  """Blends boolean `masks` [M, H, W] on uint8 `frame` [H, W, 3], mask m in the colour of
  identities[m].

  Masks are painted in order, so a later mask covers an earlier one where they overlap. `labels[m]`
  (or None) is written at the top-left of mask m's bounding box.
  """
  masks = np.asarray(masks, bool)
  if masks.ndim != 3 or masks.shape[1:] != frame.shape[:2]:
    raise ValueError(f"masks of shape {masks.shape} for a frame of shape {frame.shape}")
  if len(identities) != masks.shape[0]:
    raise ValueError(f"{masks.shape[0]} masks but {len(identities)} identities")
  out = frame.astype(np.float32)
  for mask, identity in zip(masks, identities):
    colour = identity_colour(int(identity)).astype(np.float32)
    out[mask] = (1.0 - alpha) * out[mask] + alpha * colour
    if contours:
      out[_boundary(mask)] = colour
  out = np.clip(np.round(out), 0, 255).astype(np.uint8)
  if labels is not None and any(labels):
    image = Image.fromarray(out)
    draw = ImageDraw.Draw(image)
    # Text about 1/30 of the frame height (Pillow's default 11 px on small frames).
    font = ImageFont.load_default(size=max(11, frame.shape[0] // 30))
    placed = []   # label boxes drawn so far: a later label moves down (or up) off them.
    for mask, identity, label in zip(masks, identities, labels):
      if not label or not mask.any():
        continue
      ys, xs = np.nonzero(mask)
      left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
      box = _label_box(int(xs.min()), int(ys.min()), right - left + 2, bottom - top + 2, frame.shape[1],
                       frame.shape[0], placed)
      placed.append(box)
      draw.rectangle(box, fill=tuple(int(c) for c in identity_colour(int(identity))))
      draw.text((box[0] + 1 - left, box[1] + 1 - top), label, fill=(0, 0, 0), font=font)
    out = np.asarray(image)
  return out


def _label_box(x: int, y: int, width: int, height: int, frame_width: int, frame_height: int, placed):
  """(x0, y0, x1, y1) of a label of that size at the mask's top-left (x, y), moved inside the frame and
  then down, else up, in steps of its height until it overlaps no box of `placed` (or no place is free)."""
  x = min(max(x, 0), max(frame_width - width - 1, 0))
  y = min(max(y, 0), max(frame_height - height - 1, 0))
  overlaps = lambda y0: any(x < b[2] and b[0] < x + width and y0 < b[3] and b[1] < y0 + height
                            for b in placed)
  candidates = [y + k * (height + 1) for k in range(frame_height // (height + 1) + 1)]
  candidates += [y - k * (height + 1) for k in range(1, frame_height // (height + 1) + 1)]
  free = [c for c in candidates if 0 <= c <= frame_height - height - 1 and not overlaps(c)]
  y = free[0] if free else y
  return x, y, x + width, y + height


def ffmpeg_available() -> bool:
  """Whether imageio can write mp4 here (imageio-ffmpeg or PyAV installed)."""
  return any(importlib.util.find_spec(module) is not None for module in ("imageio_ffmpeg", "av"))


def overlay_target(path: str) -> Tuple[str, str]:
  """(kind, path) of what an overlay at `path` is written as: ('video', path) for a video suffix
  (.mp4, ...) where imageio-ffmpeg or PyAV is installed, else ('png', '<path without suffix>_frames');
  ('gif', path) for .gif; ('png', path), a directory of PNG frames, for a path without suffix.
  Any other suffix (.png, .jpg, ...) is a ValueError: it is neither a video nor a directory."""
  suffix = os.path.splitext(path)[1].lower()
  if suffix in VIDEO_SUFFIXES:
    if ffmpeg_available():
      return "video", path
    return "png", os.path.splitext(path)[0] + "_frames"
  if suffix == ".gif":
    return "gif", path
  if not suffix:
    return "png", path
  raise ValueError(f"overlay {path!r}: {suffix} is not an overlay format; give a video "
                   f"({', '.join(VIDEO_SUFFIXES)}), a .gif or a directory (PNG frames)")


class OverlayWriter:
  """Writes frames to a video file, an animated GIF or a directory of PNGs, chosen by `path`
  (`overlay_target`).

  A video suffix (.mp4, ...) without imageio-ffmpeg / PyAV falls back to PNG frames in
  `<path without suffix>_frames/` with a warning; `self.path` is where the output really is.
  """

  def __init__(self, path: str, fps: float = 10.0):
    self.fps = float(fps or 10.0)
    self.kind, self.path = overlay_target(path)
    self._writer = None
    self._gif_frames: List[Image.Image] = []
    self._count = 0
    if self.kind == "video":
      import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
      # imageio-ffmpeg starts ffmpeg with preexec_fn=os.setpgrp (to keep Ctrl-C from it), which makes
      # Python run fork handlers in this multithreaded (JAX) process: JAX then warns of a deadlock.
      # Without preexec_fn, subprocess starts it with a plain fork + exec and no Python in between.
      os.environ.setdefault("IMAGEIO_FFMPEG_NO_PREVENT_SIGINT", "1")
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      self._writer = imageio.get_writer(path, fps=self.fps, macro_block_size=1)
    elif self.kind == "png":
      if self.path != path:
        logging.warning("writing %s needs imageio-ffmpeg (pip install imageio-ffmpeg); writing PNG "
                        "frames to %s instead", path, self.path)
      os.makedirs(self.path, exist_ok=True)

  def write(self, frame: np.ndarray) -> None:
    if self.kind == "video":
      self._writer.append_data(frame)
    elif self.kind == "gif":
      self._gif_frames.append(Image.fromarray(frame))
    else:
      Image.fromarray(frame).save(os.path.join(self.path, f"{self._count:05d}.png"))
    self._count += 1

  def close(self) -> None:
    if self.kind == "video":
      self._writer.close()
    elif self.kind == "gif" and self._gif_frames:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
      self._gif_frames[0].save(self.path, save_all=True, append_images=self._gif_frames[1:],
                               duration=int(round(1000.0 / self.fps)), loop=0)
      self._gif_frames = []

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def decode_frame_masks(instances: Sequence[dict], frame_index: int, height: int,
                       width: int) -> np.ndarray:
  """bool [M, H, W]: frame `frame_index` of each instance's `segmentations` (RLE or None)."""
  masks = np.zeros((len(instances), height, width), bool)
  for m, instance in enumerate(instances):
    rle = instance["segmentations"][frame_index]
    if rle is not None:
      masks[m] = rle_lib.decode_mask(rle)
  return masks


def write_overlay(frames: Iterable[np.ndarray], instances: Sequence[dict], path: str,
                  fps: float = 10.0, labels: Optional[Sequence[Optional[str]]] = None,
                  alpha: float = 0.5, progress: Optional[Callable[[int], None]] = None,
                  scale: int = 1) -> str:
  """Overlay video of `instances` (dicts with `segmentations` and `identity`) on `frames`.

  Instances are painted lowest score first, so the most confident one is on top. Returns the path
  actually written (see `OverlayWriter`). `progress(1)` is called after every frame (a long video
  takes minutes). `scale`: frames and masks enlarged that many times (nearest pixel) before drawing, so
  that small frames are readable and their labels fit.
  """
  order = sorted(range(len(instances)), key=lambda i: instances[i].get("score", 0.0))
  ordered = [instances[i] for i in order]
  identities = [int(inst.get("identity", i)) for i, inst in zip(order, ordered)]
  ordered_labels = None if labels is None else [labels[i] for i in order]
  with OverlayWriter(path, fps) as writer:
    for t, frame in enumerate(frames):
      masks = decode_frame_masks(ordered, t, frame.shape[0], frame.shape[1])
      if scale > 1:
        frame = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
        masks = np.repeat(np.repeat(masks, scale, axis=1), scale, axis=2)
      writer.write(overlay_frame(frame, masks, identities, ordered_labels, alpha))
      if progress is not None:
        progress(1)
  return writer.path


def write_png_masks(directory: str, frame_names: Sequence[str], instances: Sequence[dict],
                    height: int, width: int, progress: Optional[Callable[[int], None]] = None) -> None:
  """One indexed PNG per frame in `directory`: value i + 1 where instance i is (0 background).

  Where instances overlap, the higher score wins. The palette holds the identity colours, so the
  PNGs look like the overlay when opened in an image viewer. `progress(1)` is called after every
  frame.
  """
  if len(instances) > 255:
    raise ValueError(f"{len(instances)} instances do not fit an 8-bit indexed PNG")
  os.makedirs(directory, exist_ok=True)
  palette = np.zeros((256, 3), np.uint8)
  for i, instance in enumerate(instances):
    palette[i + 1] = identity_colour(int(instance.get("identity", i)))
  order = sorted(range(len(instances)), key=lambda i: instances[i].get("score", 0.0))
  for t, name in enumerate(frame_names):
    index = np.zeros((height, width), np.uint8)
    masks = decode_frame_masks([instances[i] for i in order], t, height, width)
    for mask, i in zip(masks, order):
      index[mask] = i + 1
    image = Image.frombytes("P", (width, height), index.tobytes())
    image.putpalette(palette.reshape(-1).tolist())
    image.save(os.path.join(directory, os.path.splitext(name)[0] + ".png"))
    if progress is not None:
      progress(1)
