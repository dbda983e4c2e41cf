"""Input pipeline (grain): training clips with per-clip augmentation, COCO pseudo-clips, padding to a small
set of static shapes, per-host sharding and a checkpointable iterator (SPEC sections 4, 5 and 7;
REFERENCE.md section 10 "Input"). Evaluation reads whole videos at test size in fixed-size chunks through
`video_io.iter_chunks`, the path inference takes.

Training batch (per host; every engineer codes against exactly this):
  frames         [B, T, H, W, 3] float32  RGB 0..255; padding holds `config.data.pad_value` (the pixel mean,
                                          i.e. 0 after normalisation, as detectron2 pads)
  pixel_valid    [B, T, H, W]    bool     inside the augmented image
  frame_valid    [B, T]          bool     (all True: short videos repeat frames, as the reference samples)
  labels         [B, G]          int32    contiguous class 0..K-1, 0 where padded
  instance_valid [B, G]          bool     a real instance: annotated in a sampled frame (it may have been
                                          cropped out of every frame, as in the reference's clip targets)
  masks          [B, T, G, H, W] bool     at the padded image resolution, all False where absent
  present        [B, T, G]       bool     annotated and visible in that frame after augmentation
                                          (the reference's track id != -1); masks[b, t, g].any() == present
  track_ids      [B, G]          int32    annotation id, -1 where padded
G = `config.data.max_instances`; (H, W) is the smallest of `config.data.pad_buckets` holding every clip of
the batch, so a training step compiles once per bucket.

Augmentation per clip (Mask2Former-video / DVIS order): one random crop (side lengths uniform in
[crop_min, crop_max], clipped to the image), one shorter-side resize to a size from `min_size_train` (step
`min_size_train_step`) with the longer side at most `max_size_train`, and one horizontal flip, all shared
by the clip's frames. Images are resized bilinearly and masks by nearest neighbour on the same grid. Clip
frames: a reference frame and T-1 others from the 2 * `sampling_frame_range` + 1 frames around it
(`sample_frame_indices`); with range 2 and T = 5 that is 5 consecutive frames. A COCO image becomes a pseudo-clip: T copies, each
under a small random rotation / scale / shift, then the same per-clip augmentation. With `reverse_prob` > 0
(the offline refiner's REVERSE_AGU) a clip's frame order is then reversed with that probability.

Determinism: the order is a seeded per-epoch shuffle and each clip's randomness is grain's per-index
generator, so the stream is a function of (seed, position); `iterator.get_state()` / `set_state()` resume
exactly. Sharding: each process reads the slice `[shard_index::shard_count]` of every source
(`grain.sharding.ShardByJaxProcess` by default), so hosts see disjoint videos.
"""

import dataclasses
import functools
import io
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import grain
import ml_collections
import numpy as np
from PIL import Image

from o2vis_jax import video_io
from o2vis_jax.evaluation import rle as rle_lib


# --------------------------------------------------------------------------------------------------
# Records.

def decode_frame(jpeg: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(jpeg)) as image:
    return np.asarray(image.convert("RGB"))


def _as_str(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------------------------------
# Training clips.

@dataclasses.dataclass(frozen=True)
class ClipOptions:
  """The fields of `config.data` the clip transform reads (a frozen, picklable copy)."""
  num_frames: int
  sampling_frame_range: int
  min_sizes: Tuple[int, ...]
  max_size: int
  crop: Optional[Tuple[int, int]]
  flip_prob: float
  max_instances: int
  pseudo_rotation_degrees: float
  pseudo_scale: float
  pseudo_shift: float
  reverse_prob: float = 0.0

  @classmethod
  def from_config(cls, data: ml_collections.ConfigDict) -> "ClipOptions":
    low, high = data.min_size_train
    return cls(num_frames=data.num_frames, sampling_frame_range=data.sampling_frame_range,
               min_sizes=tuple(range(low, high + 1, data.min_size_train_step)),
               max_size=data.max_size_train,
               crop=(data.crop_min, data.crop_max) if data.crop_enabled else None,
               flip_prob=data.flip_prob, max_instances=data.max_instances,
               pseudo_rotation_degrees=data.pseudo_clip_rotation_degrees,
               pseudo_scale=data.pseudo_clip_scale, pseudo_shift=data.pseudo_clip_shift,
               reverse_prob=float(data.get("reverse_prob", 0.0)))


def sample_frame_indices(length: int, num_frames: int, frame_range: int,
                         rng: np.random.Generator) -> np.ndarray:
  """Sorted frame indices of a training clip: a random reference frame and T-1 others drawn without
  replacement from the 2 * range + 1 frames around it (the window shifted to stay inside the video, so
  range 2 and T = 5 give 5 consecutive frames), with replacement when the video is too short."""
  reference = int(rng.integers(length))
  window = 2 * frame_range + 1
  start = min(max(reference - frame_range, 0), max(length - window, 0))
  others = [i for i in range(start, min(length, start + window)) if i != reference] or [reference]
  chosen = rng.choice(others, num_frames - 1, replace=len(others) < num_frames - 1)
  return np.sort(np.concatenate([[reference], chosen])).astype(np.int64)


def _resized_size(height: int, width: int, short: int, max_size: int) -> Tuple[int, int]:
  """detectron2 ResizeShortestEdge: shorter side to `short`, longer side at most `max_size`."""
  return video_io.resized_shape(height, width, short, max_size)


def _nearest_indices(out_size: int, in_size: int) -> np.ndarray:
  """Source index of every output pixel for a nearest-neighbour resize (pixel centres)."""
  return np.minimum(((np.arange(out_size) + 0.5) * in_size / out_size).astype(np.int64), in_size - 1)


def _affine_inverse(rng: np.random.Generator, height: int, width: int,
                    options: ClipOptions) -> np.ndarray:
  """2x3 matrix mapping output pixel centres to source coordinates: a small rotation, scale and shift
  about the image centre (one pseudo-clip frame)."""
  angle = np.deg2rad(rng.uniform(-options.pseudo_rotation_degrees, options.pseudo_rotation_degrees))
  scale = rng.uniform(1 - options.pseudo_scale, 1 + options.pseudo_scale)
  shift = rng.uniform(-options.pseudo_shift, options.pseudo_shift, 2) * np.array([width, height])
  centre = np.array([width / 2, height / 2])
  rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]]) / scale
  offset = centre - rotation @ (centre + shift)
  return np.concatenate([rotation, offset[:, None]], axis=1)


def _warp(image: np.ndarray, masks: np.ndarray, inverse: np.ndarray, fill: Sequence[float]):
  """Applies the affine `inverse` (output -> source) to an image (bilinear) and masks (nearest)."""
  height, width = image.shape[:2]
  warped = Image.fromarray(image).transform(
      (width, height), Image.AFFINE, data=tuple(inverse.reshape(-1)), resample=Image.BILINEAR,
      fillcolor=tuple(int(v) for v in fill))
  xx = np.arange(width, dtype=np.float32)[None, :] + 0.5
  yy = np.arange(height, dtype=np.float32)[:, None] + 0.5
  src_x = inverse[0, 0] * xx + inverse[0, 1] * yy + np.float32(inverse[0, 2])
  src_y = inverse[1, 0] * xx + inverse[1, 1] * yy + np.float32(inverse[1, 2])
  inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
  sx = np.clip(src_x.astype(np.int32), 0, width - 1)     # >= 0 where inside, so truncation = floor.
  sy = np.clip(src_y.astype(np.int32), 0, height - 1)
  return np.asarray(warped), masks[:, sy, sx] & inside[None]


def make_training_clip(record: Dict[str, Any], rng: np.random.Generator, *, options: ClipOptions,
                       pseudo_clip: bool, pad_value: Sequence[float]) -> Dict[str, np.ndarray]:
  """One record -> one augmented clip at its own size (padding happens per batch)."""
  length, height, width = int(record["length"]), int(record["height"]), int(record["width"])
  num_frames = options.num_frames
  num_annotations = len(record["annotation_ids"])
  rles = np.asarray(record["rles"], dtype=object).reshape(num_annotations, length)
  keep = np.flatnonzero(np.asarray(record["iscrowd"]) == 0)
  if pseudo_clip:
    indices = np.zeros((num_frames,), np.int64)
  else:
    indices = sample_frame_indices(length, num_frames, options.sampling_frame_range, rng)
  annotated = np.array([any(len(rles[g, i]) for i in indices) for g in keep], bool).reshape(-1)
  decoded = {i: decode_frame(record["frames"][i]) for i in np.unique(indices)}
  frames, masks = [], []
  for t, index in enumerate(indices):
    frame = decoded[index]
    if frame.shape[:2] != (height, width):
      raise ValueError(f"video {record['video_id']} ({_as_str(record['name'])!r}) frame {index} is "
                       f"{frame.shape[0]}x{frame.shape[1]}, the record says {height}x{width}")
    frame_masks = rle_lib.masks_from_counts(rles[keep, index], height, width)
    if pseudo_clip:
      frame, frame_masks = _warp(frame, frame_masks, _affine_inverse(rng, height, width, options),
                                 pad_value)
    frames.append(frame)
    masks.append(frame_masks)
  frames = np.stack(frames)                       # [T, h, w, 3] uint8
  masks = np.stack(masks)                         # [T, G', h, w]

  if options.crop is not None:                    # one crop for the clip.
    crop_h = int(rng.integers(min(height, options.crop[0]), min(height, options.crop[1]) + 1))
    crop_w = int(rng.integers(min(width, options.crop[0]), min(width, options.crop[1]) + 1))
    y0 = int(rng.integers(0, height - crop_h + 1))
    x0 = int(rng.integers(0, width - crop_w + 1))
    frames = frames[:, y0:y0 + crop_h, x0:x0 + crop_w]
    masks = masks[:, :, y0:y0 + crop_h, x0:x0 + crop_w]
  short = int(options.min_sizes[int(rng.integers(len(options.min_sizes)))])
  out_h, out_w = _resized_size(frames.shape[1], frames.shape[2], short, options.max_size)
  if (out_h, out_w) != frames.shape[1:3]:
    frames = np.stack([video_io.resize_frame(f, out_h, out_w) for f in frames])
    rows = _nearest_indices(out_h, masks.shape[2])
    cols = _nearest_indices(out_w, masks.shape[3])
    masks = masks[:, :, rows][:, :, :, cols]
  if rng.uniform() < options.flip_prob:           # one flip for the clip.
    frames = frames[:, :, ::-1]
    masks = masks[..., ::-1]

  present = masks.any(axis=(2, 3))                # [T, G'] visible after augmentation.
  chosen = _choose_instances(annotated, present.any(axis=0), options.max_instances, rng)
  # Time reversal of the whole clip (DVIS / LOMM offline REVERSE_AGU), drawn last and only when enabled,
  # so that a config without it draws exactly the clips it drew before.
  if options.reverse_prob > 0 and rng.uniform() < options.reverse_prob:
    frames, masks, present = frames[::-1], masks[::-1], present[::-1]
  return {
      "frames": np.ascontiguousarray(frames),
      "masks": np.ascontiguousarray(masks[:, chosen]),
      "present": present[:, chosen],
      "labels": np.asarray(record["labels"], np.int32)[keep][chosen],
      "track_ids": np.asarray(record["annotation_ids"], np.int64)[keep][chosen].astype(np.int32),
  }


def _choose_instances(annotated: np.ndarray, visible: np.ndarray, max_instances: int,
                      rng: np.random.Generator) -> np.ndarray:
  """Indices of the clip's instances: those annotated in a sampled frame (the reference keeps an instance
  the crop removed, with id -1 in every frame; it counts in the loss normalisation). Beyond
  `max_instances`, visible ones are kept first, each group subsampled at random."""
  visible_ids = np.flatnonzero(annotated & visible)
  hidden_ids = np.flatnonzero(annotated & ~visible)
  if len(visible_ids) + len(hidden_ids) <= max_instances:
    return np.flatnonzero(annotated)
  chosen = rng.permutation(visible_ids)[:max_instances]
  chosen = np.concatenate([chosen, rng.permutation(hidden_ids)[:max_instances - len(chosen)]])
  return np.sort(chosen).astype(np.int64)


def pad_batch(clips: Sequence[Dict[str, np.ndarray]], *, buckets: Sequence[Tuple[int, int]],
              max_instances: int, pad_value: Sequence[float]) -> Dict[str, np.ndarray]:
  """Stacks clips into the training batch format, padded to the smallest bucket holding them all."""
  need_h = max(c["frames"].shape[1] for c in clips)
  need_w = max(c["frames"].shape[2] for c in clips)
  fitting = [b for b in buckets if b[0] >= need_h and b[1] >= need_w]
  if not fitting:
    raise ValueError(f"a {need_h}x{need_w} clip fits none of config.data.pad_buckets {list(buckets)}; "
                     "add a larger bucket or lower max_size_train / crop_max")
  height, width = min(fitting, key=lambda b: (b[0] * b[1], b))
  batch, num_frames = len(clips), clips[0]["frames"].shape[0]
  out = {
      "frames": np.empty((batch, num_frames, height, width, 3), np.float32),
      "pixel_valid": np.zeros((batch, num_frames, height, width), bool),
      "frame_valid": np.ones((batch, num_frames), bool),
      "labels": np.zeros((batch, max_instances), np.int32),
      "instance_valid": np.zeros((batch, max_instances), bool),
      "masks": np.zeros((batch, num_frames, max_instances, height, width), bool),
      "present": np.zeros((batch, num_frames, max_instances), bool),
      "track_ids": np.full((batch, max_instances), -1, np.int32),
  }
  pad = np.asarray(pad_value, np.float32)
  for b, clip in enumerate(clips):
    h, w = clip["frames"].shape[1:3]
    g = clip["labels"].shape[0]
    out["frames"][b, :, :h, :w] = clip["frames"]
    out["frames"][b, :, h:] = pad
    out["frames"][b, :, :h, w:] = pad
    out["pixel_valid"][b, :, :h, :w] = True
    out["labels"][b, :g] = clip["labels"]
    out["instance_valid"][b, :g] = True
    out["masks"][b, :, :g, :h, :w] = clip["masks"]
    out["present"][b, :, :g] = clip["present"]
    out["track_ids"][b, :g] = clip["track_ids"]
  return out


def _shard(dataset: grain.MapDataset, shard_options) -> grain.MapDataset:
  if shard_options is None or shard_options.shard_count == 1:
    return dataset
  if len(dataset) < shard_options.shard_count:
    raise ValueError(f"{len(dataset)} records cannot be split over {shard_options.shard_count} processes")
  return dataset[shard_options.shard_index::shard_options.shard_count]


def _tag(record, pseudo_clip):
  return record, pseudo_clip


def _clip_from_tagged(tagged, rng, options, pad_value):
  record, pseudo_clip = tagged
  return make_training_clip(record, rng, options=options, pseudo_clip=pseudo_clip, pad_value=pad_value)


def train_dataset(config: ml_collections.ConfigDict, video_source, *, batch_size: int,
                  coco_source=None, shard_options=None, seed: Optional[int] = None) -> grain.IterDataset:
  """The training stream: an IterDataset of batches (module doc); iterate it and checkpoint the
  iterator's `get_state()`. `config.data.num_workers > 0` starts grain worker processes, which read absl
  flags: run under `absl.app` (or parse / mark them parsed first). `batch_size` is per process; `shard_options` defaults to
  `grain.sharding.ShardByJaxProcess(drop_remainder=True)`."""
  data = config.data
  seed = config.seed if seed is None else seed
  if shard_options is None:
    shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  options = ClipOptions.from_config(data)
  pad_value = tuple(data.pad_value)
  seed = (int(seed) * 1000 + shard_options.shard_index) % (2**32 - 8)   # hosts draw different clips.

  def prepare(source, pseudo_clip, stream_seed):
    dataset = _shard(grain.MapDataset.source(source), shard_options)
    dataset = dataset.shuffle(seed=stream_seed).repeat()
    return dataset.map(functools.partial(_tag, pseudo_clip=pseudo_clip))

  dataset = prepare(video_source, pseudo_clip=False, stream_seed=seed)
  if coco_source is not None and data.coco_ratio > 0:
    dataset = grain.MapDataset.mix([dataset, prepare(coco_source, True, seed + 1)],
                                   weights=[1.0, float(data.coco_ratio)])
  dataset = dataset.random_map(
      functools.partial(_clip_from_tagged, options=options, pad_value=pad_value), seed=seed + 2)
  dataset = dataset.batch(batch_size, drop_remainder=True, batch_fn=functools.partial(
      pad_batch, buckets=[tuple(b) for b in data.pad_buckets], max_instances=data.max_instances,
      pad_value=pad_value))
  iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=data.read_threads,
                                                           prefetch_buffer_size=data.prefetch))
  if data.num_workers > 0:
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers))
  return iter_dataset


def open_train_sources(config: ml_collections.ConfigDict):
  """(video source, coco source or None, categories) from `config.data.data_dir` / `coco_data_dir`
  (directories written by `python -m data.build`)."""
  from o2vis_jax.datasets import builders  # pylint: disable=g-import-not-at-top  (imports TFDS)
  videos, categories = builders.open_split(config.data.data_dir, config.data.train_split)
  coco = None
  if config.data.coco_data_dir and config.data.coco_ratio > 0:
    coco, coco_categories = builders.open_split(config.data.coco_data_dir, "train")
    if [c["id"] for c in coco_categories] != [c["id"] for c in categories]:
      raise ValueError(f"{config.data.coco_data_dir}: COCO categories are not the video dataset's; build "
                       "it with --coco_target_json pointing at the video dataset's train JSON")
  return videos, coco, categories


# --------------------------------------------------------------------------------------------------
# The built-in synthetic dataset.

def prepare_synthetic(config: ml_collections.ConfigDict, root: str) -> str:
  """Generates (once) and builds the synthetic dataset under `root`; returns the built directory for
  `config.data.data_dir`. Train uses `config.seed`, the labelled `valid` split another seed."""
  from o2vis_jax.datasets import builders, synthetic  # pylint: disable=g-import-not-at-top  (imports TFDS)
  data = config.data
  raw = os.path.join(root, "raw")
  built = builders.find_built(os.path.join(root, "built"), "synthetic", data.holdout_videos,
                              data.holdout_seed)
  if built:
    return built
  common = dict(size=data.synthetic_size, num_frames=data.synthetic_frames,
                radius_range=tuple(data.get("synthetic_radius_range", synthetic.RADIUS_RANGE)),
                appearance=data.get("synthetic_appearance", synthetic.APPEARANCES[0]))
  synthetic.generate(raw, "train", data.synthetic_videos, seed=config.seed, **common)
  synthetic.generate(raw, "valid", data.synthetic_valid_videos, seed=config.seed + 10_000, **common)
  return builders.build("synthetic", raw, os.path.join(root, "built"), data.holdout_videos,
                        data.holdout_seed)
