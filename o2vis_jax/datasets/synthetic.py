"""The synthetic occlusion dataset (SPEC section 7), written in the real YouTube-VIS layout.

`<out>/<split>.json` + `<out>/<split>/JPEGImages/<video>/<frame:05d>.jpg`, so every code path of the real
data (builder, pipeline, evaluation) runs on it. Each video is a muted textured background with a few
shapes (classes below) that move, rotate, bounce in a box larger than the frame (so they leave and re-enter),
enter late, pass behind each other and behind static occluder bars wide enough to hide them completely for
several frames (the segmentation is then null), and often come as a group of look-alikes of one class, so
that identity needs memory.

What a class looks like (`appearance='class'`, the default): its shape, a colour family (a hue band; the
saturation and brightness vary per object) and a texture, so that a small model trained from scratch can
tell the classes apart (as real categories differ in more than outline), while objects of one class still
look alike: a look-alike group shares one hue, texture and size, and each member keeps one trait of its own
for the whole video (a brightness level and a texture scale, LOOKALIKE_LEVELS), as individuals of one
category do in real videos: frame to frame they are easily confused, and after a full occlusion only a
memory of that trait tells who came back (identical copies could only be told apart by motion, which no
method of this library models). `appearance='random'` is the earlier dataset, bit for bit (any colour and texture
for any class: only the shape tells the class), kept for comparisons and for models trained on it.

Masks are the visible (modal) regions of the rendered label map, stored as uncompressed RLE like the
official train annotations; `areas` and `bboxes` ([x, y, w, h]) are computed from
the very same masks, and null where the object is hidden.

Every video is drawn from `numpy.random.default_rng([seed, video_index])`: the same seed gives the same
files, and two seeds (e.g. train and valid) give different videos. Frames are rendered and written one at a
time, so memory does not grow with the number of frames (only the small RLE lists do).

  json_path = generate("/tmp/synth", "train", num_videos=100, seed=0, size=128, num_frames=24)

The command line is `python -m data.synthetic` (data/synthetic.py); masks decode with
`o2vis_jax.evaluation.rle.decode_mask`.
"""

import dataclasses
import json
import os
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image

CATEGORIES = ({"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"},
              {"id": 4, "name": "star"}, {"id": 5, "name": "ring"})
TEXTURES = ("solid", "stripes", "checker", "dots")
# Per category (CATEGORIES order): the centre of its hue band (degrees) and its texture.
CLASS_HUES = (0.0, 120.0, 225.0, 50.0, 290.0)
CLASS_TEXTURES = ("solid", "stripes", "checker", "dots", "solid")
APPEARANCES = ("class", "random")
# `appearance='class'`: a look-alike group's members differ only by these (brightness factor, texture
# frequency) levels, one level per member, drawn without replacement.
LOOKALIKE_LEVELS = ((0.62, 2.5), (0.82, 3.6), (1.0, 5.0))
RADIUS_RANGE = (0.12, 0.2)   # object radius as a fraction of the frame size (a shape's bounding half-size).


@dataclasses.dataclass(frozen=True)
class ShapeObject:
  """One annotated object; its position at frame t is a closed-form function of t (no state)."""
  category_id: int
  colour: np.ndarray            # [3] base RGB.
  texture: str
  texture_frequency: float
  radius: float
  start: np.ndarray             # [2] (x, y) at t = 0 in the extended box coordinates.
  velocity: np.ndarray          # [2] pixels per frame.
  angle: float
  angular_velocity: float
  depth: float                  # larger is nearer the camera.
  first_frame: int              # not drawn before this frame (enters late).
  lookalike_member: int = -1    # index within the video's look-alike group (-1: not in it).


@dataclasses.dataclass(frozen=True)
class Occluder:
  """An unannotated static bar drawn in front of every object."""
  x0: int
  y0: int
  x1: int
  y1: int
  colour: np.ndarray


def _hsv_to_rgb(hue_degrees: float, saturation: float, value: float) -> np.ndarray:
  """[3] RGB in 0..255 (the standard hexcone model)."""
  h = (hue_degrees % 360.0) / 60.0
  c = value * saturation
  x = c * (1 - abs(h % 2 - 1))
  rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
  return 255.0 * (np.array(rgb) + value - c)


def _appearance(rng: np.random.Generator, category_id: int, appearance: str):
  """(colour [3], texture, texture frequency) of a new object of `category_id`."""
  if appearance == "class":
    hue = CLASS_HUES[category_id - 1] + rng.uniform(-15, 15)
    colour = _hsv_to_rgb(hue, rng.uniform(0.6, 0.95), rng.uniform(0.65, 1.0))
    return colour, CLASS_TEXTURES[category_id - 1], float(rng.uniform(2.5, 5))
  return (rng.uniform(30, 230, 3), TEXTURES[int(rng.integers(len(TEXTURES)))],
          float(rng.uniform(2.5, 5)))


def _bounce(position: np.ndarray, low: float, high: float) -> np.ndarray:
  """Reflects a free linear motion into [low, high] (a triangle wave)."""
  span = high - low
  phase = np.mod(position - low, 2 * span)
  return low + np.where(phase > span, 2 * span - phase, phase)


def _object_centre(obj: ShapeObject, t: int, size: int) -> np.ndarray:
  margin = 1.6 * obj.radius    # beyond 1.0 * radius the object is fully outside the frame.
  return _bounce(obj.start + obj.velocity * t, -margin, size + margin)


def _inside(obj: ShapeObject, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Whether local coordinates (in units of the radius, already rotated) fall inside the shape."""
  name = CATEGORIES[obj.category_id - 1]["name"]
  rho = np.sqrt(u * u + v * v)
  if name == "circle":
    return rho <= 1.0
  if name == "square":
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8
  if name == "triangle":
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
      normal_angle = np.pi / 2 + 2 * np.pi * k / 3
      inside &= u * np.cos(normal_angle) + v * np.sin(normal_angle) <= 0.5
    return inside
  if name == "star":
    theta = np.arctan2(v, u)
    return rho <= 0.42 + 0.58 * ((1 + np.cos(5 * theta)) / 2) ** 3
  return (rho <= 1.0) & (rho >= 0.55)   # ring.


def _texture(obj: ShapeObject, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Per-pixel brightness factor in local coordinates, so the texture moves and turns with the object."""
  f = obj.texture_frequency
  if obj.texture == "stripes":
    return np.where(np.sin(f * u) > 0, 1.0, 0.6)
  if obj.texture == "checker":
    return np.where((np.floor(f * u / np.pi) + np.floor(f * v / np.pi)) % 2 == 0, 1.0, 0.65)
  if obj.texture == "dots":
    return np.where(np.sin(f * u) * np.sin(f * v) > 0.5, 0.5, 1.0)
  return np.ones_like(u)


def _background(rng: np.random.Generator, size: int, muted: bool) -> np.ndarray:
  """A textured background: smooth value noise blended with a random stripe or checker pattern; `muted`:
  in low-saturation colours (so that hue belongs to the objects, as in `appearance='class'`)."""
  coarse = rng.uniform(0, 1, (size // 16 + 2, size // 16 + 2))
  noise = np.array(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
      (size, size), Image.BICUBIC), np.float32) / 255.0
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  period = rng.uniform(6, 20)
  if rng.uniform() < 0.5:
    pattern = (np.sin((xx * np.cos(rng.uniform(0, np.pi)) + yy) / period * np.pi) > 0).astype(np.float32)
  else:
    pattern = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
  colour_a, colour_b = rng.uniform(40, 215, (2, 3))
  if muted:
    grey_a, grey_b = rng.uniform(60, 190, 2)
    colour_a, colour_b = grey_a + 0.25 * (colour_a - grey_a), grey_b + 0.25 * (colour_b - grey_b)
  weight = (0.6 * noise + 0.4 * pattern)[..., None]
  return colour_a * weight + colour_b * (1 - weight)


def _random_objects(rng: np.random.Generator, size: int, num_frames: int, max_objects: int,
                    occluders: Sequence[Occluder], radius_range: Tuple[float, float] = RADIUS_RANGE,
                    appearance: str = "class") -> List[ShapeObject]:
  """Samples a video's objects so that every event of the dataset is likely in every video."""
  num_objects = int(rng.integers(2, max_objects + 1))
  objects = []
  lookalike_class = int(rng.integers(1, len(CATEGORIES) + 1))
  lookalike_colour, lookalike_texture, lookalike_frequency = _appearance(rng, lookalike_class, appearance)
  num_lookalikes = int(rng.integers(2, 4)) if num_objects >= 3 and rng.uniform() < 0.8 else 0
  if appearance == "class":
    # Each member of the look-alike group keeps an individual trait for the whole video: a brightness
    # level and a texture scale (LOOKALIKE_LEVELS), so that an appearance memory can tell who came back.
    member_levels = rng.permutation(len(LOOKALIKE_LEVELS))
  for index in range(num_objects):
    radius = float(rng.uniform(*radius_range) * size)
    margin = 1.6 * radius
    # Speed such that the object crosses the extended box about once or twice per video.
    crossing = (size + 2 * margin) / max(num_frames, 1)
    speed = float(rng.uniform(0.4, 1.3) * crossing) if num_frames <= 100 else float(rng.uniform(1.5, 4.0))
    direction = rng.uniform(0, 2 * np.pi)
    velocity = speed * np.array([np.cos(direction), np.sin(direction)])
    start = rng.uniform(0, size, 2)
    first_frame = 0
    if index < num_lookalikes:
      category_id, colour = lookalike_class, np.clip(lookalike_colour + rng.uniform(-12, 12, 3), 0, 255)
      texture, frequency = lookalike_texture, lookalike_frequency
      if appearance == "class":
        brightness, frequency = LOOKALIKE_LEVELS[member_levels[index]]
        colour = np.clip(colour * brightness, 0, 255)
      radius = float(size * 0.5 * (radius_range[0] + radius_range[1]) * rng.uniform(0.9, 1.1))
    else:
      category_id = int(rng.integers(1, len(CATEGORIES) + 1))
      colour, texture, frequency = _appearance(rng, category_id, appearance)
    role = rng.uniform()
    if occluders and role < 0.35:
      # Crosses the first occluder slowly enough to stay fully hidden for several frames.
      bar = occluders[0]
      radius = float(min(radius, 0.35 * (bar.x1 - bar.x0)))
      centre_y = rng.uniform(bar.y0 + radius, bar.y1 - radius) if bar.y1 - bar.y0 > 2 * radius else size / 2
      speed = float(rng.uniform(0.5, 1.0) * (bar.x1 - bar.x0 - 2 * radius) / 4 + 0.5)
      sign = 1.0 if rng.uniform() < 0.5 else -1.0
      velocity = np.array([sign * speed, 0.0])
      crossing_frame = rng.uniform(0.2, 0.6) * num_frames
      start = np.array([(bar.x0 + bar.x1) / 2 - velocity[0] * crossing_frame, centre_y])
    elif role < 0.6:
      # Enters late: starts beyond the left or right border moving inwards, or simply appears later.
      if rng.uniform() < 0.5:
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        start = np.array([size / 2 - side * (size / 2 + 1.5 * radius), rng.uniform(radius, size - radius)])
        velocity = np.array([side * abs(velocity[0]) + side * 1.0, velocity[1] * 0.3])
      else:
        first_frame = int(rng.integers(1, max(2, num_frames // 2)))
    objects.append(ShapeObject(
        category_id=category_id, colour=colour, texture=texture, texture_frequency=frequency,
        radius=radius, start=start, velocity=velocity, angle=float(rng.uniform(0, 2 * np.pi)),
        angular_velocity=float(rng.uniform(-0.15, 0.15)), depth=float(rng.uniform()),
        first_frame=first_frame, lookalike_member=index if index < num_lookalikes else -1))
  return objects


def _random_occluders(rng: np.random.Generator, size: int, muted: bool) -> List[Occluder]:
  def colour():
    rgb = rng.uniform(60, 200, 3)
    return rgb.mean() + 0.2 * (rgb - rgb.mean()) if muted else rgb
  occluders = []
  if rng.uniform() < 0.8:
    width = int(rng.uniform(0.3, 0.4) * size)
    x0 = int(rng.integers(size // 8, size - width - size // 8 + 1))
    occluders.append(Occluder(x0, 0, x0 + width, size, colour()))
  if rng.uniform() < 0.3:
    height = int(rng.uniform(0.15, 0.25) * size)
    y0 = int(rng.integers(0, size - height + 1))
    occluders.append(Occluder(0, y0, size, y0 + height, colour()))
  return occluders


def render_frame(objects: Sequence[ShapeObject], occluders: Sequence[Occluder], background: np.ndarray,
                 t: int):
  """Returns (image [S,S,3] uint8, label map [S,S] int32: k + 1 where object k is visible, else 0)."""
  size = background.shape[0]
  image = background.copy()
  label_map = np.zeros((size, size), np.int32)
  for k in sorted(range(len(objects)), key=lambda k: objects[k].depth):   # far to near.
    obj = objects[k]
    if t < obj.first_frame:
      continue
    cx, cy = _object_centre(obj, t, size)
    r = obj.radius
    x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, size)
    y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, size)
    if x0 >= x1 or y0 >= y1:
      continue
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    angle = obj.angle + obj.angular_velocity * t
    dx, dy = (xx + 0.5 - cx) / r, (yy + 0.5 - cy) / r
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    inside = _inside(obj, u, v)
    shade = _texture(obj, u, v)[..., None] * obj.colour
    window = image[y0:y1, x0:x1]
    window[inside] = shade[inside]
    label_map[y0:y1, x0:x1][inside] = k + 1
  for bar in occluders:
    yy, xx = np.mgrid[bar.y0:bar.y1, bar.x0:bar.x1]
    stripes = np.where(((xx + yy) // 6) % 2 == 0, 1.0, 0.8)[..., None]
    image[bar.y0:bar.y1, bar.x0:bar.x1] = stripes * bar.colour
    label_map[bar.y0:bar.y1, bar.x0:bar.x1] = 0
  return np.clip(image, 0, 255).astype(np.uint8), label_map


def _uncompressed_rle(mask: np.ndarray) -> dict:
  """Column-major run lengths starting with background, as in the official YouTube-VIS train json."""
  flat = mask.reshape(-1, order="F")
  boundaries = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
  counts = np.diff(boundaries).tolist()
  if flat.size and flat[0]:
    counts = [0] + counts
  return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _mask_stats(mask: np.ndarray):
  ys, xs = np.nonzero(mask)
  x0, y0 = int(xs.min()), int(ys.min())
  return int(mask.sum()), [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]


def _video_name(seed: int, split: str, index: int) -> str:
  digest = np.random.default_rng([seed, index, 7]).integers(0, 16, 10)
  return f"{split}_{''.join('%x' % d for d in digest)}_{index:05d}"


def generate(out_dir: str, split: str, num_videos: int, seed: int, size: int = 128, num_frames: int = 24,
             max_objects: int = 5, jpeg_quality: int = 92, first_video_id: int = 1,
             radius_range: Sequence[float] = RADIUS_RANGE, appearance: str = "class") -> str:
  """Writes `num_videos` videos of `num_frames` frames at `size` x `size`; returns the json path.
  `radius_range`: (min, max) object radius as a fraction of `size` (objects that cross an occluder are
  capped so that it hides them completely). `appearance`: 'class' (colour family and texture per class)
  or 'random' (only the shape tells the class)."""
  if num_videos < 1 or num_frames < 1 or size < 16 or max_objects < 2:
    raise ValueError(f"need videos >= 1, frames >= 1, size >= 16, max_objects >= 2; got {num_videos}, "
                     f"{num_frames}, {size}, {max_objects}")
  radius_range = tuple(float(r) for r in radius_range)
  if len(radius_range) != 2 or not 0.0 < radius_range[0] <= radius_range[1] <= 0.5:
    raise ValueError(f"radius_range must be (min, max) with 0 < min <= max <= 0.5, got {radius_range}")
  if appearance not in APPEARANCES:
    raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")
  muted = appearance == "class"
  image_root = os.path.join(out_dir, split, "JPEGImages")
  videos, annotations = [], []
  for index in range(num_videos):
    rng = np.random.default_rng([seed, index])
    name = _video_name(seed, split, index)
    video_id = first_video_id + index
    os.makedirs(os.path.join(image_root, name), exist_ok=True)
    background = _background(rng, size, muted)
    occluders = _random_occluders(rng, size, muted)
    objects = _random_objects(rng, size, num_frames, max_objects, occluders, radius_range, appearance)
    segmentations = [[] for _ in objects]
    areas = [[] for _ in objects]
    bboxes = [[] for _ in objects]
    file_names = []
    for t in range(num_frames):
      image, label_map = render_frame(objects, occluders, background, t)
      file_name = f"{name}/{t:05d}.jpg"
      Image.fromarray(image).save(os.path.join(image_root, file_name), quality=jpeg_quality)
      file_names.append(file_name)
      for k in range(len(objects)):
        mask = label_map == k + 1
        if mask.any():
          area, bbox = _mask_stats(mask)
          segmentations[k].append(_uncompressed_rle(mask))
          areas[k].append(area)
          bboxes[k].append(bbox)
        else:
          segmentations[k].append(None)
          areas[k].append(None)
          bboxes[k].append(None)
    videos.append({"id": video_id, "name": name, "width": size, "height": size, "length": num_frames,
                   "file_names": file_names})
    for k, obj in enumerate(objects):
      if all(s is None for s in segmentations[k]):
        continue    # never visible: the official data has no such annotations.
      annotations.append({
          "id": len(annotations) + 1, "video_id": video_id, "category_id": obj.category_id, "iscrowd": 0,
          "height": size, "width": size, "length": num_frames, "segmentations": segmentations[k],
          "areas": areas[k], "bboxes": bboxes[k]})
  dataset = {"info": {"description": f"o2vis-jax synthetic occlusion dataset, split {split}, seed {seed}"},
             "videos": videos, "annotations": annotations, "categories": [dict(c) for c in CATEGORIES]}
  json_path = os.path.join(out_dir, f"{split}.json")
  temp_path = json_path + ".tmp"
  with open(temp_path, "w") as f:
    json.dump(dataset, f)
  os.replace(temp_path, json_path)
  return json_path
