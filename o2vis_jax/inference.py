"""Video inference on a video of any length (SPEC section 4, REFERENCE.md section 8).

The frames stream through fixed-size chunks (`config.inference.chunk_size`, the last chunk padded and
masked by `frame_valid`). One jitted function per (chunk, input size, output size) runs the segmenter
on the chunk as a batch, then `lax.scan` of the tracker frame step carrying the memory from the
previous chunk; so one compilation serves every video length and device memory does not grow with T.
Per chunk, only the slots' class logits and their binarised full-resolution masks (bit-packed) leave
the device; the host keeps a running sum of the logits and the masks as RLE (pycocotools), of every
slot, since any slot can still enter the top-k. After the last chunk, REFERENCE.md 8.3-8.4:

  mean logits over the video's frames -> softmax -> no-object dropped -> top-k over (slot x class).

Masks (REFERENCE.md 8.4): each slot's mask logits are resized bilinearly (PyTorch align_corners=False,
no antialiasing) to the padded input size, cropped to the resized image, resized bilinearly to the
original size and thresholded at 0. The three steps are linear per axis, so they are one matrix per
axis (`mask_resize_matrices`) applied on device: masks = (M_y @ logits @ M_x^T) > 0.

The same loop runs the training-free baselines of Table 3(a) (segmenter only,
`config.tracker.mode = 'baseline'`), whose scan re-orders the segmenter's outputs into slots.
"""

import dataclasses
import functools
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from pycocotools import mask as mask_util

from o2vis_jax import models, te_only, video_io, video_model
from o2vis_jax.evaluation import results as results_lib
from o2vis_jax.models import tracker as tracker_lib
from o2vis_jax.models.resize import interpolation_matrix

Array = Any


# --------------------------------------------------------------------------------------------------
# Mask geometry.

def mask_resize_matrices(mask_height: int, mask_width: int,
                         geometry: video_io.FrameGeometry) -> Tuple[np.ndarray, np.ndarray]:
  """(M_y [H, h], M_x [W, w]): mask logits [h, w] -> original-size logits M_y @ L @ M_x^T.

  Composition of resize to the padded input, crop to the resized image, resize to the original,
  each a PyTorch `interpolate(bilinear, align_corners=False)` matrix (`models.resize`).
  """
  g = geometry
  m_y = (interpolation_matrix(g.resized_height, g.height)
         @ interpolation_matrix(mask_height, g.padded_height)[:g.resized_height])
  m_x = (interpolation_matrix(g.resized_width, g.width)
         @ interpolation_matrix(mask_width, g.padded_width)[:g.resized_width])
  return m_y.astype(np.float32), m_x.astype(np.float32)


def binary_masks(mask_logits: Array, m_y: Array, m_x: Array) -> Array:
  """[T, N, h, w] mask logits -> bit-packed bool masks [T, N, H, ceil(W / 8)] (uint8) at original size.

  Frame by frame (lax.map) so the float intermediate is [N, H, W], not [T, N, H, W].
  """
  def one_frame(logits):
    full = jnp.einsum("yh,nhw,xw->nyx", m_y, logits.astype(jnp.float32), m_x,
                      precision=jax.lax.Precision.HIGHEST)
    return jnp.packbits(full > 0, axis=-1)
  return jax.lax.map(one_frame, mask_logits)


def unpack_masks(packed: np.ndarray, width: int) -> np.ndarray:
  """Inverse of the packing in `binary_masks`: uint8 [..., ceil(W / 8)] -> bool [..., W]."""
  return np.unpackbits(packed, axis=-1, count=width).astype(bool)


def encode_rle(masks: np.ndarray) -> List[dict]:
  """bool [M, H, W] -> M COCO RLEs with `counts` as str (JSON-ready)."""
  if masks.shape[0] == 0:
    return []
  return results_lib.encode_masks(masks)


def decode_rle(rle: dict) -> np.ndarray:
  """A COCO RLE (counts str or bytes) -> bool [H, W]."""
  return mask_util.decode(rle).astype(bool)


# --------------------------------------------------------------------------------------------------
# Video-level scores (REFERENCE.md 8.3-8.4).

def class_probabilities(mean_logits: np.ndarray) -> np.ndarray:
  """softmax over K+1 of the mean logits, the no-object column dropped: [N, K] (float64)."""
  logits = np.asarray(mean_logits, np.float64)
  probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
  probs /= probs.sum(axis=-1, keepdims=True)
  return probs[:, :-1]


def video_topk(mean_logits: np.ndarray, max_num: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Top-k (slot, class) pairs from the mean over frames of each slot's logits [N, K+1].

  P = softmax(mean_logits)[:, :K] (no-object dropped); flatten index = slot * K + class; the k
  largest, sorted by decreasing score (ties: lower flat index first). One slot may appear with
  several classes. Returns (scores [k], labels [k] in 0..K-1, slots [k]).
  """
  probs = class_probabilities(mean_logits)
  num_classes = probs.shape[-1]
  flat = probs.reshape(-1)
  k = min(max_num, flat.size)
  order = np.argsort(-flat, kind="stable")[:k]
  return flat[order], order % num_classes, order // num_classes


# --------------------------------------------------------------------------------------------------
# Results of one video.

@dataclasses.dataclass
class VideoPrediction:
  """What inference keeps of one video: O(N x classes) numbers plus the RLEs of every slot."""
  mean_logits: np.ndarray             # [N, K+1], mean over the video's frames
  slot_rles: List[List[dict]]         # [N][T] RLE of each slot's mask in each frame
  height: int
  width: int
  frame_logits: Optional[np.ndarray] = None        # [T, N, K+1] when asked for (tests, analysis)
  frame_mask_logits: Optional[np.ndarray] = None   # [T, N, h, w] when asked for

  @property
  def num_frames(self) -> int:
    return len(self.slot_rles[0]) if self.slot_rles else 0

  def instances(self, max_num: int) -> List[dict]:
    """Top-k instances: dicts score, label (0..K-1), identity (the slot), segmentations [T] RLE."""
    scores, labels, slots = video_topk(self.mean_logits, max_num)
    return [dict(score=float(s), label=int(l), identity=int(n), segmentations=self.slot_rles[n])
            for s, l, n in zip(scores, labels, slots)]

  def slot_instances(self) -> List[dict]:
    """Every slot as an instance (its best class), for visualising all tracks."""
    probs = class_probabilities(self.mean_logits)
    best = np.argmax(probs, axis=-1)
    return [dict(score=float(probs[n, best[n]]), label=int(best[n]), identity=n,
                 segmentations=self.slot_rles[n]) for n in range(len(self.slot_rles))]

  def slot_masks(self, frame_index: int) -> np.ndarray:
    """bool [N, H, W]: every slot's mask in one frame."""
    return np.stack([decode_rle(rles[frame_index]) for rles in self.slot_rles])


def to_results(instances: Sequence[dict], video_id: int,
               category_ids: Optional[Sequence[int]] = None) -> List[dict]:
  """YouTube-VIS result dicts (`evaluation.results`); label i -> category_ids[i], default i + 1."""
  return [results_lib.instance_to_result(
      video_id, category_ids[inst["label"]] if category_ids is not None else inst["label"] + 1,
      inst["score"], inst["segmentations"]) for inst in instances]


def dataset_videos(dataset: dict, frames_dir: str) -> Iterator[Tuple[dict, video_io.FrameFiles]]:
  """(video record, frame source) for each video of a YouTube-VIS / OVIS JSON (frames opened lazily)."""
  for video in dataset["videos"]:
    files = [os.path.join(frames_dir, name) for name in video["file_names"]]
    folder = os.path.dirname(video["file_names"][0]) if video["file_names"] else ""
    yield video, video_io.FrameFiles(files, name=f"{video['id']} ({folder or 'no frames'})")


def category_ids_of(dataset: dict) -> List[int]:
  """Contiguous label i -> dataset category id (categories sorted by id, as the dataset builders do)."""
  return [c["id"] for c in sorted(dataset["categories"], key=lambda c: c["id"])]


def predict_dataset(predictor: "VideoPredictor", dataset: dict, frames_dir: str,
                    max_num: Optional[int] = None, progress: bool = False) -> List[dict]:
  """YouTube-VIS results of every video of a split (`dataset`: its parsed JSON)."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  category_ids = category_ids_of(dataset)
  results = []
  for video, source in tqdm(dataset_videos(dataset, frames_dir), total=len(dataset["videos"]),
                            desc="videos", disable=not progress):
    prediction = predictor.predict_video(source)
    if prediction.num_frames != len(video["file_names"]):
      raise video_io.VideoReadError(f"video {source.name}: read {prediction.num_frames} frames, the "
                                    f"JSON lists {len(video['file_names'])}")
    results.extend(to_results(prediction.instances(max_num or predictor.max_num), video["id"],
                              category_ids))
  return results


# --------------------------------------------------------------------------------------------------
# The model of one chunk: segmenter on the chunk as a batch, then the scan of the tracker step.

def model_for_config(config, mask_padding: bool = False) -> Tuple[Callable, Callable]:
  """(chunk_model, init_carry) of `config`: O2VIS trackers, or a baseline (`config.tracker.mode`).

  params = {'segmenter': ..., 'tracker': ...} ('tracker' unused by the baselines).
  mask_padding: pass the padding mask to the segmenter (`Segmenter`'s `pixel_valid`); False, the
  default, is what the reference does (it pads to a multiple of 32 and ignores the padding).
  """
  segmenter = models.build_segmenter(config)
  options = video_model.resolve_options(config.tracker)
  baseline = options.mode == "baseline"
  segmenter_dtype = jnp.dtype(config.model.dtype)

  def carry_dtype(params):
    if baseline:
      return segmenter_dtype
    return video_model.carry_dtype(config, params["tracker"], segmenter_dtype)

  def chunk_model(params, carry, images, pixel_valid, frame_valid):
    out = segmenter.apply({"params": params["segmenter"]}, images,
                          pixel_valid if mask_padding else None)
    dtype = carry_dtype(params)
    frames = dict(embeds=out["pred_embds"].astype(dtype), valid=frame_valid)
    if baseline:
      frames.update(segmenter_logits=out["pred_logits"], segmenter_masks=out["pred_masks"])
      tracker_params = None
    else:
      frames.update(embeds_without_norm=out["pred_embds_without_norm"].astype(dtype),
                    mask_features=out["mask_features"].astype(dtype))
      tracker_params = params["tracker"]
    if options.mode == "te_only":   # T_E-only re-orders the segmenter's own predictions.
      frames.update(segmenter_logits=out["pred_logits"], segmenter_masks=out["pred_masks"])
    carry, tracked = video_model.run_chunk(config, tracker_params, carry, frames)
    return carry, dict(pred_logits=tracked["pred_logits"], pred_masks=tracked["pred_masks"])

  def init_carry(params, images, pixel_valid):
    del images, pixel_valid
    return video_model.init_carry(config.model.num_queries, config.model.hidden_dim,
                                  carry_dtype(params))

  return chunk_model, init_carry


def init_params(config, seed: int = 0) -> Dict[str, Any]:
  """Random {'segmenter', 'tracker'} parameters of `config`, for smoke tests and benchmarks.

  The tracker's own `init_params`. The segmenter's shapes come from its `init` under
  `jax.eval_shape` (traced, not compiled: its init program takes a minute to compile on a small
  CPU), the values are drawn with NumPy: kernels normal / sqrt(fan_in), embeddings standard normal,
  norm scales and variances near 1, biases small.
  """
  segmenter_key, tracker_key = jax.random.split(jax.random.PRNGKey(seed))
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  shapes = jax.eval_shape(models.build_segmenter(config).init, segmenter_key, images)["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = leaf.shape
    if name in ("scale", "var"):
      value = 1.0 + 0.1 * np.abs(rng.standard_normal(shape))
    elif name == "kernel":
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    elif len(shape) >= 2:            # embeddings (queries, levels)
      value = rng.standard_normal(shape)
    else:
      value = 0.1 * rng.standard_normal(shape)
    return jnp.asarray(value, leaf.dtype)

  return dict(segmenter=jax.tree_util.tree_map_with_path(draw, shapes),
              tracker=(te_only.init_params(config, tracker_key)
                       if config.tracker.get("mode", "trackers") == "te_only"
                       else tracker_lib.init_params(config, tracker_key)))


class VideoPredictor:
  """Runs a segmenter (+ trackers) over videos chunk by chunk.

  `chunk_model(params, carry, images, pixel_valid, frame_valid) -> (carry, outputs)` is the
  per-chunk model: outputs hold `pred_logits [T, N, K+1]` and `pred_masks [T, N, h, w]` in slot
  order; `init_carry(params, batch_template)` gives the carry of a fresh video. `model_for_config`
  builds both from a config (O2VIS trackers or a baseline). Compiled functions are cached per
  (chunk size, input size, output size).
  """

  def __init__(self, params, chunk_model: Callable, init_carry: Callable, chunk_size: int,
               min_size: int, size_divisibility: int, pad_value: Sequence[float],
               max_size: Optional[int] = None, max_num: int = 10):
    self.params = params
    self.max_num = int(max_num)
    self.chunk_model = chunk_model
    self.init_carry = init_carry
    self.chunk_size = int(chunk_size)
    self.min_size = int(min_size)
    self.size_divisibility = int(size_divisibility)
    self.max_size = max_size
    self.pad_value = tuple(float(v) for v in pad_value)
    self._compiled: Dict[Tuple, Callable] = {}
    self.num_compilations = 0      # traces of the chunk function (one per chunk / frame size)

  @classmethod
  def from_config(cls, config, params, chunk_size: Optional[int] = None,
                  mask_padding: bool = False) -> "VideoPredictor":
    """`max_num`: config.inference.max_num, or for the baselines config.tracker.baseline.top_k
    (REFERENCE.md section 11: MinVIS keeps 10 whatever MAX_NUM says)."""
    chunk_model, init_carry = model_for_config(config, mask_padding)
    inference = config.inference
    max_num = inference.max_num
    if config.tracker.get("mode", "trackers") == "baseline":
      max_num = config.tracker.baseline.get("top_k", max_num)
    return cls(params, chunk_model, init_carry,
               chunk_size=chunk_size or inference.chunk_size,
               min_size=inference.min_size_test,
               size_divisibility=inference.size_divisibility,
               pad_value=config.model.pixel_mean,
               max_size=inference.get("max_size_test", None), max_num=max_num)

  def geometry(self, height: int, width: int) -> video_io.FrameGeometry:
    return video_io.FrameGeometry.for_video(height, width, self.min_size, self.size_divisibility,
                                            self.max_size)

  def _step_fn(self, geometry: video_io.FrameGeometry, keep_mask_logits: bool = False) -> Callable:
    key = (self.chunk_size, geometry, keep_mask_logits)
    if key not in self._compiled:
      body = functools.partial(_chunk_step, self.chunk_model, geometry, keep_mask_logits)

      def counted(*args):
        self.num_compilations += 1   # runs at trace time only
        return body(*args)
      self._compiled[key] = jax.jit(counted)
    return self._compiled[key]

  def pixel_valid(self, geometry: video_io.FrameGeometry) -> np.ndarray:
    valid = np.zeros((self.chunk_size, geometry.padded_height, geometry.padded_width), bool)
    valid[:, :geometry.resized_height, :geometry.resized_width] = True
    return valid

  def compiled_memory_mb(self, height: int, width: int) -> float:
    """Device memory of one chunk call (arguments + outputs + temporaries, XLA's memory analysis);
    independent of the video length by construction."""
    geometry = self.geometry(height, width)
    images = jnp.zeros((self.chunk_size, geometry.padded_height, geometry.padded_width, 3))
    pixel_valid = jnp.asarray(self.pixel_valid(geometry))
    carry = self.init_carry(self.params, images, pixel_valid)
    compiled = self._step_fn(geometry).lower(self.params, carry, images, pixel_valid,
                                             jnp.ones((self.chunk_size,), bool)).compile()
    analysis = compiled.memory_analysis()
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
             + analysis.temp_size_in_bytes)
    return total / 2 ** 20

  def predict(self, frames: Iterable[np.ndarray], height: int, width: int,
              keep_frame_logits: bool = False, keep_mask_logits: bool = False,
              progress: Optional[Callable[[int], None]] = None) -> VideoPrediction:
    """Streams `frames` (uint8 [height, width, 3] each) through the model; returns the prediction.

    keep_frame_logits / keep_mask_logits: also return the per-frame class logits [T, N, K+1] / the
    low-resolution mask logits [T, N, h, w] (tests and analysis; host memory then grows with T).
    `progress(n)` is called after every chunk with the number of frames it held.
    """
    geometry = self.geometry(height, width)
    step = self._step_fn(geometry, keep_mask_logits)
    pixel_valid = jnp.asarray(self.pixel_valid(geometry))
    carry, logit_sum, slot_rles, count = None, None, None, 0
    kept_logits, kept_masks = [], []
    for chunk in video_io.iter_chunks(frames, geometry, self.chunk_size, self.pad_value):
      images = jnp.asarray(chunk.images)
      if carry is None:
        carry = self.init_carry(self.params, images, pixel_valid)
      carry, outputs = step(self.params, carry, images, pixel_valid, jnp.asarray(chunk.frame_valid))
      valid = chunk.num_valid
      logits = np.asarray(outputs["pred_logits"], np.float64)[:valid]
      packed = np.asarray(outputs["packed_masks"])[:valid]
      logit_sum = logits.sum(0) if logit_sum is None else logit_sum + logits.sum(0)
      if keep_frame_logits:
        kept_logits.append(logits)
      if keep_mask_logits:
        kept_masks.append(np.asarray(outputs["pred_masks"])[:valid])
      if slot_rles is None:
        slot_rles = [[] for _ in range(logits.shape[1])]
      for t in range(valid):
        for n, rle in enumerate(encode_rle(unpack_masks(packed[t], width))):
          slot_rles[n].append(rle)
      count += valid
      if progress is not None:
        progress(valid)
    if count == 0:
      raise video_io.VideoReadError("the video has no frames")
    return VideoPrediction(
        mean_logits=logit_sum / count, slot_rles=slot_rles, height=height, width=width,
        frame_logits=np.concatenate(kept_logits) if keep_frame_logits else None,
        frame_mask_logits=np.concatenate(kept_masks) if keep_mask_logits else None)

  def predict_video(self, source, **kwargs) -> VideoPrediction:
    """`source`: a `video_io` frame source (FrameFiles, VideoFile)."""
    return self.predict(iter(source), source.height, source.width, **kwargs)


def _chunk_step(chunk_model, geometry, keep_mask_logits, params, carry, images, pixel_valid,
                frame_valid):
  """The jitted body: the model on one chunk, then its masks at the original size, bit-packed."""
  carry, outputs = chunk_model(params, carry, images, pixel_valid, frame_valid)
  mask_h, mask_w = outputs["pred_masks"].shape[-2:]
  m_y, m_x = mask_resize_matrices(mask_h, mask_w, geometry)   # trace-time constants
  result = dict(pred_logits=outputs["pred_logits"].astype(jnp.float32),
                packed_masks=binary_masks(outputs["pred_masks"], jnp.asarray(m_y), jnp.asarray(m_x)))
  if keep_mask_logits:
    result["pred_masks"] = outputs["pred_masks"]
  return carry, result
