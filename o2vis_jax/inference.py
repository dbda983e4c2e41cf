"""Video inference on a video of any length (SPEC section 4, REFERENCE.md section 8).

The frames stream through fixed-size chunks (`config.inference.chunk_size`, the last chunk padded and
masked by `frame_valid`). One jitted function per (chunk, input size, output size) runs the segmenter
on the chunk as a batch, then `lax.scan` of the tracker frame step carrying the memory from the
previous chunk; so one compilation serves every video length and device memory does not grow with T.
Per chunk, only the slots' class logits and their binarised full-resolution masks (bit-packed) leave
the device; the host keeps the association method's video-level score accumulator (`Method.score_init`
/ `score_update`; O2VIS's: a running sum of the logits) and the masks as RLE (pycocotools), of every
slot, since any slot can still enter the top-k. After the last chunk the method scores the video
(`Method.score_instances`; O2VIS, REFERENCE.md 8.3-8.4: mean logits over the video's frames -> softmax
-> no-object dropped -> top-k over (slot x class)).

Masks (REFERENCE.md 8.4): each slot's mask logits are resized bilinearly (PyTorch align_corners=False,
no antialiasing) to the padded input size, cropped to the resized image, resized bilinearly to the
original size and thresholded at 0. The three steps are linear per axis, so they are one matrix per
axis (`mask_resize_matrices`) applied on device: masks = (M_y @ logits @ M_x^T) > 0.

The same loop runs every association method (`config.association.method`): the chunk gives the method
the segmenter outputs it declares in `required_inputs` and runs `association.run_chunk` on them.

Offline mode (`VideoPredictor.from_config(..., offline=True)`; LOMM / DVIS++ offline, reference/refiner.md
"Inference scoring") runs the same chunk loop, segmenter + online association method exactly as online,
but keeps per chunk only what the temporal refiner reads: the method's `pred_embeds` [T, N, C] (O2VIS:
LN_d of the tracker's output, the refiner's `instance_embeds`), the segmenter's `pred_embds_without_norm`
[T, N, C] (`frame_embeds`) and the online logits, plus the mask features, moved to the HOST (as LOMM
moves them to the CPU): device memory grows with T only by the T x N x C queries, host memory by the mask
features (T x h x w x C in the model dtype). Then ONE refiner call over the whole video
(`refiner.refine_queries`, compiled per video length: its attention spans every frame), then the masks
chunk by chunk (`refiner.masks_from_embeddings` on each chunk's mask features moved back to the device,
then the online path: resize, threshold, bit-pack, RLE). Scores: LOMM's max(softmax(refiner logits),
softmax(mean online logits)) per (slot, class), no-object dropped, top-k over slot x class
(`offline_class_scores`, `topk_instances`).
"""

import copy
import dataclasses
import functools
import json
import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from o2vis_jax import association, models, video_io
from o2vis_jax.evaluation import results as results_lib
from o2vis_jax.evaluation import rle as rle_lib
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


# Video-level scores: the association method's (`association.base`); O2VIS's default is REFERENCE.md 8.3.

class_probabilities = association.class_probabilities
video_topk = association.video_topk


def offline_class_scores(refiner_logits: np.ndarray, online_mean_logits: np.ndarray) -> np.ndarray:
  """LOMM's offline score of each (slot, class) [S, K] (float64): the larger of the refiner's and the
  online method's probability, max(softmax(refiner_logits)[:, :K], softmax(online_mean_logits)[:, :K]).
  refiner_logits: the refiner's video-level logits [S, K+1]; online_mean_logits: the online logits
  averaged over the video's frames [S, K+1] (reference/refiner.md "Inference scoring")."""
  return np.maximum(class_probabilities(refiner_logits), class_probabilities(online_mean_logits))


def topk_instances(scores: np.ndarray, max_num: int) -> List[dict]:
  """[{'score', 'label', 'slot'}] of the `max_num` best (slot, class) of `scores` [S, K], in
  `video_topk`'s order: flat index slot * K + class, decreasing score, ties by lower flat index."""
  values, labels, slots = association.score_topk(scores, max_num)
  return [dict(score=float(v), label=int(l), slot=int(n)) for v, l, n in zip(values, labels, slots)]


# --------------------------------------------------------------------------------------------------
# Results of one video.

@dataclasses.dataclass
class VideoPrediction:
  """What inference keeps of one video: the method's score accumulator plus the RLEs of every slot."""
  slot_rles: List[List[dict]]         # [S][T] RLE of each slot's mask in each frame
  height: int
  width: int
  score_instances: Callable[[int], List[dict]]      # max_num -> [{'score', 'label', 'slot'}]
  mean_logits: Optional[np.ndarray] = None         # [S, K+1], mean over the video's frames (if kept)
  frame_logits: Optional[np.ndarray] = None        # [T, S, K+1] when asked for (tests, analysis)
  frame_mask_logits: Optional[np.ndarray] = None   # [T, S, h, w] when asked for (offline: the refiner's)
  refiner_logits: Optional[np.ndarray] = None      # offline: the refiner's video-level logits [S, K+1]
  refiner_inputs: Optional[Dict[str, np.ndarray]] = None   # offline, when asked for: instance_embeds
  #   [T, S, C], frame_embeds [T, N, C], mask_features [T, h, w, C], as the refiner received them

  @property
  def num_frames(self) -> int:
    return len(self.slot_rles[0]) if self.slot_rles else 0

  def instances(self, max_num: int) -> List[dict]:
    """Top-k instances by the method's scoring: dicts score, label (0..K-1), identity (the slot),
    segmentations [T] RLE."""
    return [dict(score=inst["score"], label=inst["label"], identity=inst["slot"],
                 segmentations=self.slot_rles[inst["slot"]]) for inst in self.score_instances(max_num)]

  def slot_instances(self) -> List[dict]:
    """Every slot as an instance (its best class by the mean logits; offline by the offline scores),
    for visualising all tracks."""
    if self.mean_logits is None:
      raise ValueError("this association method keeps no per-slot mean logits")
    if self.refiner_logits is not None:
      probs = offline_class_scores(self.refiner_logits, self.mean_logits)
    else:
      probs = class_probabilities(self.mean_logits)
    best = np.argmax(probs, axis=-1)
    return [dict(score=float(probs[n, best[n]]), label=int(best[n]), identity=n,
                 segmentations=self.slot_rles[n]) for n in range(len(self.slot_rles))]

  def slot_masks(self, frame_index: int) -> np.ndarray:
    """bool [S, H, W]: every slot's mask in one frame."""
    return np.stack([rle_lib.decode_mask(rles[frame_index]) for rles in self.slot_rles])


def to_results(instances: Sequence[dict], video_id: int,
               category_ids: Optional[Sequence[int]] = None) -> List[dict]:
  """YouTube-VIS result dicts (`evaluation.results`); label i -> category_ids[i], default i + 1."""
  return [results_lib.instance_to_result(
      video_id, category_ids[inst["label"]] if category_ids is not None else inst["label"] + 1,
      inst["score"], inst["segmentations"]) for inst in instances]


def dataset_video_name(video: dict) -> str:
  """How a video of a YouTube-VIS / OVIS JSON is named in messages: its id and its frames' folder."""
  folder = os.path.dirname(video["file_names"][0]) if video.get("file_names") else ""
  return f"{video['id']} ({folder or 'no frames'})"


def open_dataset_video(video: dict, frames_dir: str) -> video_io.FrameFiles:
  """The frame source of one video record (its first frame read: a `VideoReadError` if it cannot be)."""
  files = [os.path.join(frames_dir, name) for name in video["file_names"]]
  return video_io.FrameFiles(files, name=dataset_video_name(video))


def dataset_videos(dataset: dict, frames_dir: str) -> Iterator[Tuple[dict, video_io.FrameFiles]]:
  """(video record, frame source) for each video of a YouTube-VIS / OVIS JSON (frames opened lazily)."""
  for video in dataset["videos"]:
    yield video, open_dataset_video(video, frames_dir)


def category_ids_of(dataset: dict) -> List[int]:
  """Contiguous label i -> dataset category id (categories sorted by id, as the dataset builders do)."""
  return [c["id"] for c in sorted(dataset["categories"], key=lambda c: c["id"])]


class FinishedVideos:
  """The videos of a dataset run already done, kept on disk as each one finishes.

  A JSON-lines file: a header line with the run's `settings` (what must not change between a run
  and its resumption: weights, config, max_num, ...), then one line per finished video,
  {"video_id": ..., "results": [...]}, each written with one `write` and fsync'ed. A crash can only
  cut the last line: reading drops a cut last line (that video is run again) and cuts it off the
  file before anything is appended. An interrupted or failing run so keeps every finished video,
  and `resume=True` picks them up.
  """

  HEADER_KEY = "o2vis_partial_results"

  def __init__(self, path: str, settings: dict, resume: bool = False):
    from o2vis_jax import cli  # pylint: disable=g-import-not-at-top  (InputError)
    self.path = path
    self.settings = json.loads(json.dumps(settings))   # as it reads back (tuples -> lists)
    self.results: Dict[Any, List[dict]] = {}
    self.resumed = 0          # videos found finished when the run started
    self.dropped_line = False  # a cut last line was dropped (its video runs again)
    if os.path.exists(path):
      if not resume:
        raise cli.InputError(
            f"{path!r} holds the finished videos of an earlier run that did not complete: rerun "
            "with --resume to continue it, or delete the file to start over")
      self._read(cli.InputError)
      self.resumed = len(self.results)
    else:
      self._append({self.HEADER_KEY: 1, "settings": self.settings})

  def _read(self, error):
    with open(self.path, "rb") as f:
      data = f.read()
    lines = data.split(b"\n")
    complete = len(data) if data.endswith(b"\n") else len(data) - len(lines[-1])
    if lines and lines[-1]:
      self.dropped_line = True   # the write of the last line was cut: that video runs again
    parsed = []
    for number, line in enumerate(lines[:-1], 1):
      try:
        parsed.append(json.loads(line))
      except ValueError as e:
        raise error(f"{self.path}: line {number} is not JSON ({e}); delete the file to start "
                    "over") from e
    if not parsed and self.dropped_line:   # cut while its header was written: nothing finished
      os.remove(self.path)
      self._append({self.HEADER_KEY: 1, "settings": self.settings})
      return
    if not parsed or not isinstance(parsed[0], dict) or self.HEADER_KEY not in parsed[0]:
      raise error(f"{self.path}: not a file of finished videos (no header line); delete it to "
                  "start over")
    before = parsed[0].get("settings", {})
    for key in sorted(set(before) | set(self.settings)):
      if before.get(key) != self.settings.get(key):
        raise error(f"--resume: {self.path} was written with {key}={before.get(key)!r}, this run "
                    f"has {key}={self.settings.get(key)!r}; rerun with the same settings, or delete "
                    "the file to start over")
    for number, record in enumerate(parsed[1:], 2):
      if not isinstance(record, dict) or not {"video_id", "results"} <= set(record):
        raise error(f"{self.path}: line {number} is not a finished video (video_id, results); "
                    "delete the file to start over")
      self.results[record["video_id"]] = record["results"]
    if complete != len(data):
      with open(self.path, "r+b") as f:
        f.truncate(complete)

  def _append(self, record: dict) -> None:
    line = (json.dumps(record) + "\n").encode("utf-8")
    with open(self.path, "ab") as f:
      f.write(line)
      f.flush()
      os.fsync(f.fileno())

  def __contains__(self, video_id) -> bool:
    return video_id in self.results

  def add(self, video_id, results: List[dict]) -> None:
    self._append({"video_id": video_id, "results": results})
    self.results[video_id] = results

  def remove(self) -> None:
    """Once the final results file holds every video: the record is no longer needed."""
    if os.path.exists(self.path):
      os.remove(self.path)


class DatasetResults(list):
  """The results of every finished video, in the dataset's order (a list, as before), with what the
  run did: `run` videos run now, `resumed` finished before, `skipped` [(video name, reason)]."""

  def __init__(self, results=(), run: int = 0, resumed: int = 0, skipped=()):
    super().__init__(results)
    self.run, self.resumed, self.skipped = run, resumed, list(skipped)


def predict_dataset(predictor: "VideoPredictor", dataset: dict, frames_dir: str,
                    max_num: Optional[int] = None, progress: bool = False,
                    finished: Optional[FinishedVideos] = None, skip_unreadable: bool = False,
                    on_video: Optional[Callable] = None) -> DatasetResults:
  """YouTube-VIS results of every video of a split (`dataset`: its parsed JSON).

  finished: where each video's results go as soon as it is done (and where the videos of an
    interrupted run are found and not run again).
  skip_unreadable: a video whose frames cannot be read (a corrupt or missing frame file, fewer
    frames than the JSON lists) is left out and listed in the result's `skipped`; otherwise its
    `VideoReadError` (naming the video, the frame and the file) ends the run, the videos finished
    before it kept in `finished`.
  on_video(video, source, prediction, instances): called for each video run, before it counts as
    finished (e.g. writing its masks and overlay: an interruption there runs the video again).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  category_ids = category_ids_of(dataset)
  max_num = max_num or predictor.max_num
  results: Dict[Any, List[dict]] = {}
  run, skipped = 0, []
  todo = [video for video in dataset["videos"] if finished is None or video["id"] not in finished]
  bar = tqdm(total=len(dataset["videos"]), initial=len(dataset["videos"]) - len(todo),
             desc="videos", disable=not progress)
  with bar:
    for video in todo:
      try:
        source = open_dataset_video(video, frames_dir)
        with tqdm(total=len(source), desc=f"video {source.name}", unit="frame", leave=False,
                  disable=not progress) as frames_bar:
          prediction = predictor.predict_video(source, progress=frames_bar.update)
        if prediction.num_frames != len(video["file_names"]):
          raise video_io.VideoReadError(f"video {source.name}: read {prediction.num_frames} frames, "
                                        f"the JSON lists {len(video['file_names'])}")
      except video_io.VideoReadError as e:
        if not skip_unreadable:
          raise
        skipped.append((dataset_video_name(video), str(e)))
        bar.update(1)
        continue
      instances = prediction.instances(max_num)
      if on_video is not None:
        on_video(video, source, prediction, instances)
      results[video["id"]] = to_results(instances, video["id"], category_ids)
      if finished is not None:
        finished.add(video["id"], results[video["id"]])
      run += 1
      bar.update(1)
  if finished is not None:   # it holds this run's videos too
    results = finished.results
  ordered = [r for video in dataset["videos"] for r in results.get(video["id"], [])]
  return DatasetResults(ordered, run=run, resumed=finished.resumed if finished else 0,
                        skipped=skipped)


# --------------------------------------------------------------------------------------------------
# The model of one chunk: segmenter on the chunk as a batch, then the scan of the association step.

class OfflineInferenceError(ValueError):
  """Offline inference cannot run with these weights or this association method (one line naming why)."""


def model_for_config(config, mask_padding: bool = False, offline: bool = False
                     ) -> Tuple[Callable, Callable]:
  """(chunk_model, init_state) of `config`'s association method (`config.association.method`).

  params = {'segmenter': ..., 'tracker': ...} ('tracker': the method's params; absent for a method
  without any). mask_padding: pass the padding mask to the segmenter (`Segmenter`'s `pixel_valid`);
  False, the default, is what the reference does (it pads to a multiple of 32 and ignores the padding).
  offline: the chunk outputs what the refiner reads instead of the online masks: pred_logits and
  pred_embeds [T, S, ...] (the method's), frame_embeds [T, N, C] (the segmenter's
  `pred_embds_without_norm`) and mask_features [T, h, w, C].
  """
  segmenter = models.build_segmenter(config)
  method = association.method_of(config)
  unknown = [k for k in method.required_inputs if k not in association.STANDARD_INPUTS]
  if unknown:
    raise ValueError(f"association method {method.name!r} needs inputs {unknown} that video inference "
                     f"does not produce (it gives {association.STANDARD_INPUTS})")
  segmenter_dtype = jnp.dtype(config.model.dtype)
  if offline:
    kept = ("pred_logits", "pred_embeds")
  else:
    kept = tuple(dict.fromkeys(("pred_logits", "pred_masks") + tuple(method.score_inputs)))

  def state_dtype(params):
    return method.state_dtype(config, params.get("tracker"), segmenter_dtype)

  def chunk_model(params, state, images, pixel_valid, frame_valid):
    out = segmenter.apply({"params": params["segmenter"]}, images,
                          pixel_valid if mask_padding else None)
    dtype = state_dtype(params)
    available = dict(embeds=lambda: out["pred_embds"].astype(dtype),
                     embeds_without_norm=lambda: out["pred_embds_without_norm"].astype(dtype),
                     mask_features=lambda: out["mask_features"].astype(dtype),
                     logits=lambda: out["pred_logits"], masks=lambda: out["pred_masks"])
    frames = {k: available[k]() for k in method.required_inputs}
    frames["valid"] = frame_valid
    state, tracked = association.run_chunk(config, params.get("tracker"), state, frames)
    if offline and "pred_embeds" not in tracked:
      raise OfflineInferenceError(_no_embeds_message(method))
    outputs = {k: tracked[k] for k in kept}
    if offline:
      outputs.update(frame_embeds=out["pred_embds_without_norm"], mask_features=out["mask_features"])
    return state, outputs

  def init_state(params, images, pixel_valid):
    del images, pixel_valid
    return method.init_state(config, num_queries=config.model.num_queries,
                             hidden_dim=config.model.hidden_dim, dtype=state_dtype(params))

  return chunk_model, init_state


def _no_embeds_message(method) -> str:
  return (f"offline inference: association method {method.name!r} outputs no per-frame 'pred_embeds' "
          "(the refiner's instance queries); run it online, or offline with a method that does "
          "(e.g. 'o2vis')")


def check_offline_method(config, params) -> None:
  """Raises `OfflineInferenceError` unless `config`'s association method outputs per-frame
  `pred_embeds` (traced on one frame of abstract inputs: no compilation, no computation)."""
  method = association.method_of(config)
  model = config.model
  num_queries, hidden_dim = model.num_queries, model.hidden_dim
  tracker = params.get("tracker")
  dtype = method.state_dtype(config, tracker, jnp.dtype(model.dtype))
  size = 4   # any mask size: the check is about which outputs exist
  shapes = dict(embeds=(num_queries, hidden_dim), embeds_without_norm=(num_queries, hidden_dim),
                logits=(num_queries, model.num_classes + 1), masks=(num_queries, size, size),
                mask_features=(size, size, hidden_dim))
  frames = {k: jax.ShapeDtypeStruct((1,) + shapes[k], dtype) for k in method.required_inputs}
  frames["valid"] = jax.ShapeDtypeStruct((1,), jnp.bool_)
  state = method.init_state(config, num_queries=num_queries, hidden_dim=hidden_dim, dtype=dtype)
  _, outputs = jax.eval_shape(
      lambda p, s, f: association.run_chunk(config, p, s, f), tracker, state, frames)
  if "pred_embeds" not in outputs:
    raise OfflineInferenceError(_no_embeds_message(method))


def refiner_config(config):
  """`config` with a `refiner` section (the refiner's defaults, `refiner.default_config()`, when it has
  none: a config written before the refiner, e.g. for random weights)."""
  from o2vis_jax import refiner as refiner_lib  # pylint: disable=g-import-not-at-top
  if config.get("refiner") is not None:
    return config
  config = copy.deepcopy(config)
  with config.unlocked():
    config.refiner = refiner_lib.default_config()
  return config


@dataclasses.dataclass(frozen=True)
class OfflineRefiner:
  """The temporal refiner as offline inference calls it (`refiner.refine_queries` and
  `refiner.masks_from_embeddings` with the config bound).

  refine_queries(params_refiner, instance_embeds [T, S, C], frame_embeds [T, N, C])
    -> {'pred_logits' [S, K+1] (video-level), 'mask_embeddings' [T, S, C]}
  masks_from_embeddings(mask_embeddings [t, S, C], mask_features [t, h, w, C]) -> [t, S, h, w]
  """
  refine_queries: Callable
  masks_from_embeddings: Callable


def refiner_for_config(config) -> OfflineRefiner:
  from o2vis_jax import refiner as refiner_lib  # pylint: disable=g-import-not-at-top
  config = refiner_config(config)
  return OfflineRefiner(
      refine_queries=functools.partial(refiner_lib.refine_queries, config),
      masks_from_embeddings=refiner_lib.masks_from_embeddings)


def init_params(config, seed: int = 0, offline: bool = False) -> Dict[str, Any]:
  """Random {'segmenter', 'tracker'} parameters of `config`, for smoke tests and benchmarks: the
  segmenter's `models.init_segmenter_params` and the association method's own `init_params` ({} for a
  training-free method); offline: also 'refiner' (`refiner.init_params` of `refiner_config(config)`)."""
  segmenter_key, tracker_key = jax.random.split(jax.random.PRNGKey(seed))
  method = association.method_of(config)
  params = dict(segmenter=models.init_segmenter_params(config, segmenter_key),
                tracker=method.init_params(config, tracker_key, num_classes=config.model.num_classes,
                                           hidden_dim=config.model.hidden_dim))
  if offline:   # its own key: the segmenter's and tracker's weights stay those of the online run
    from o2vis_jax import refiner as refiner_lib  # pylint: disable=g-import-not-at-top
    params["refiner"] = refiner_lib.init_params(
        refiner_config(config), jax.random.fold_in(jax.random.PRNGKey(seed), 2),
        num_classes=config.model.num_classes, hidden_dim=config.model.hidden_dim)
  return params


class VideoPredictor:
  """Runs a segmenter and an association method over videos chunk by chunk.

  `chunk_model(params, state, images, pixel_valid, frame_valid) -> (state, outputs)` is the
  per-chunk model: outputs hold `pred_logits [T, S, K+1]` and `pred_masks [T, S, h, w]` in slot
  order (and the method's `score_inputs`); `init_carry(params, images, pixel_valid)` gives the state
  of a fresh video. `model_for_config` builds both from a config. `method` scores the video
  (`association.Method`'s scoring hooks; default O2VIS's). Compiled functions are cached per
  (chunk size, input size, output size).

  Offline (`refiner` given, `from_config(..., offline=True)`): the chunk model's outputs are
  `model_for_config(offline=True)`'s (pred_logits, pred_embeds, frame_embeds, mask_features), the
  refiner's params are `params['refiner']`, and the module docstring says what runs.
  """

  def __init__(self, params, chunk_model: Callable, init_carry: Callable, chunk_size: int,
               min_size: int, size_divisibility: int, pad_value: Sequence[float],
               max_size: Optional[int] = None, max_num: int = 10, config=None,
               method: Optional[association.Method] = None,
               refiner: Optional[OfflineRefiner] = None):
    self.params = params
    self.max_num = int(max_num)
    self.config = config
    self.method = method if method is not None else association.get("o2vis")
    self.chunk_model = chunk_model
    self.init_carry = init_carry
    self.chunk_size = int(chunk_size)
    self.min_size = int(min_size)
    self.size_divisibility = int(size_divisibility)
    self.max_size = max_size
    self.pad_value = tuple(float(v) for v in pad_value)
    self.refiner = refiner
    if refiner is not None and "refiner" not in params:
      raise OfflineInferenceError(_no_refiner_message(params))
    self._compiled: Dict[Tuple, Callable] = {}
    self._refine = None if refiner is None else jax.jit(refiner.refine_queries)  # one per video length
    self.num_compilations = 0      # traces of the chunk functions (one per chunk / frame size)

  @property
  def offline(self) -> bool:
    return self.refiner is not None

  @classmethod
  def from_config(cls, config, params, chunk_size: Optional[int] = None,
                  mask_padding: bool = False, offline: bool = False) -> "VideoPredictor":
    """`max_num`: config.inference.max_num as the method adjusts it (`Method.max_num`; the training-free
    methods keep their `top_k`, REFERENCE.md section 11: MinVIS keeps 10 whatever MAX_NUM says);
    offline: config.inference.max_num (LOMM's MAX_NUM). offline: the refiner after the online method
    (`OfflineInferenceError` without params['refiner'] or with a method without `pred_embeds`)."""
    method = association.method_of(config)
    if method.trainable and "tracker" not in params:
      raise ValueError(f"association method {method.name!r} needs trained parameters, but the checkpoint "
                       f"holds only {sorted(params)}: run a training-free method instead "
                       f"(e.g. --method training_free)")
    from o2vis_jax.checkpoint_conversion import io as checkpoint_io
    if method.trainable and checkpoint_io.segmenter_stage_only(config, params):   # e.g. CAVIS_segmenter
      raise ValueError(checkpoint_io.segmenter_stage_message(config))
    inference = config.inference
    refiner = None
    if offline:
      if "refiner" not in params:
        raise OfflineInferenceError(_no_refiner_message(params))
      check_offline_method(config, params)
      refiner = refiner_for_config(config)
      max_num = inference.max_num
    else:
      max_num = method.max_num(config, inference.max_num)
    chunk_model, init_carry = model_for_config(config, mask_padding, offline=offline)
    return cls(params, chunk_model, init_carry, config=config, method=method,
               chunk_size=chunk_size or inference.chunk_size,
               min_size=inference.min_size_test,
               size_divisibility=inference.size_divisibility,
               pad_value=config.model.pixel_mean,
               max_size=inference.get("max_size_test", None), max_num=max_num, refiner=refiner)

  def geometry(self, height: int, width: int) -> video_io.FrameGeometry:
    return video_io.FrameGeometry.for_video(height, width, self.min_size, self.size_divisibility,
                                            self.max_size)

  def _jit(self, key: Tuple, body: Callable) -> Callable:
    if key not in self._compiled:
      def counted(*args):
        self.num_compilations += 1   # runs at trace time only
        return body(*args)
      self._compiled[key] = jax.jit(counted)
    return self._compiled[key]

  def _step_fn(self, geometry: video_io.FrameGeometry, keep_mask_logits: bool = False) -> Callable:
    """The chunk function: online, the model and its masks (`_chunk_step`); offline, the model only."""
    if self.offline:
      return self._jit(("offline", self.chunk_size, geometry), functools.partial(_offline_chunk_step,
                                                                                 self.chunk_model))
    return self._jit((self.chunk_size, geometry, keep_mask_logits),
                     functools.partial(_chunk_step, self.chunk_model, geometry, keep_mask_logits))

  def _masks_fn(self, geometry: video_io.FrameGeometry, keep_mask_logits: bool) -> Callable:
    """Offline: (mask_embeddings [chunk, S, C], mask_features [chunk, h, w, C]) -> bit-packed masks."""
    return self._jit(("masks", self.chunk_size, geometry, keep_mask_logits),
                     functools.partial(_refined_masks_step, self.refiner.masks_from_embeddings,
                                       geometry, keep_mask_logits))

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

  def _run_chunks(self, frames: Iterable[np.ndarray], geometry: video_io.FrameGeometry,
                  step: Callable, progress: Optional[Callable[[int], None]],
                  between: Optional[Callable[[Any], Any]] = None
                  ) -> Iterator[Tuple[int, Dict[str, Array]]]:
    """The chunk loop of both modes: (valid frames, the chunk function's outputs) per chunk, the
    association state carried from chunk to chunk (through `between(state) -> state` after the caller
    has used a chunk's outputs, when given); a video without frames is a `VideoReadError`."""
    pixel_valid = jnp.asarray(self.pixel_valid(geometry))
    carry, count = None, 0
    for chunk in video_io.iter_chunks(frames, geometry, self.chunk_size, self.pad_value):
      images = jnp.asarray(chunk.images)
      if carry is None:
        carry = self.init_carry(self.params, images, pixel_valid)
      carry, outputs = step(self.params, carry, images, pixel_valid, jnp.asarray(chunk.frame_valid))
      yield chunk.num_valid, outputs
      if between is not None:
        carry = between(carry)
      count += chunk.num_valid
      if progress is not None:
        progress(chunk.num_valid)
    if count == 0:
      raise video_io.VideoReadError("the video has no frames")

  def predict(self, frames: Iterable[np.ndarray], height: int, width: int,
              keep_frame_logits: bool = False, keep_mask_logits: bool = False,
              progress: Optional[Callable[[int], None]] = None,
              keep_refiner_inputs: bool = False) -> VideoPrediction:
    """Streams `frames` (uint8 [height, width, 3] each) through the model; returns the prediction.

    keep_frame_logits / keep_mask_logits: also return the per-frame class logits [T, N, K+1] (online
    ones, also offline) / the low-resolution mask logits [T, N, h, w] (offline: the refiner's) (tests
    and analysis; host memory then grows with T). keep_refiner_inputs (offline): also return what the
    refiner received (`VideoPrediction.refiner_inputs`).
    `progress(n)` is called after every chunk with the number of frames it held.
    """
    if self.offline:
      return self._predict_offline(frames, height, width, keep_frame_logits, keep_mask_logits,
                                   keep_refiner_inputs, progress)
    geometry = self.geometry(height, width)
    step = self._step_fn(geometry, keep_mask_logits)
    accumulator, slot_rles, count, logit_sum = None, None, 0, None
    kept_logits, kept_masks, released_rles = [], [], []
    empty_rle = encode_rle(np.zeros((1, height, width), bool))[0]

    def release(carry):
      # Sequences that finished (DVIS-DAQ's dead ones) leave their slots: scores and masks to the host.
      nonlocal accumulator
      carry, accumulator, freed = self.method.release(self.config, carry, accumulator)
      for n in freed:
        released_rles.append(slot_rles[n])
        slot_rles[n] = [empty_rle] * count
      return carry

    for valid, outputs in self._run_chunks(frames, geometry, step, progress, release):
      logits = np.asarray(outputs["pred_logits"], np.float64)[:valid]
      scored = {k: (logits if k == "pred_logits" else np.asarray(outputs[k])[:valid])
                for k in self.method.score_inputs}
      if accumulator is None:
        accumulator = self.method.score_init(self.config, logits.shape[1], logits.shape[2] - 1)
      accumulator = self.method.score_update(self.config, accumulator, scored)
      logit_sum = logits.sum(0) if logit_sum is None else logit_sum + logits.sum(0)
      if keep_frame_logits:
        kept_logits.append(logits)
      if keep_mask_logits:
        kept_masks.append(np.asarray(outputs["pred_masks"])[:valid])
      slot_rles = _add_rles(slot_rles, np.asarray(outputs["packed_masks"])[:valid], width)
      count += valid
    method, config, final = self.method, self.config, accumulator
    if released_rles:   # entries: the released sequences, then the slots (`Method.release`)
      slot_rles = [rles + [empty_rle] * (count - len(rles)) for rles in released_rles] + slot_rles
    mean_logits = method.mean_logits(final)     # the method's (per entry), else over every frame
    mean_logits = logit_sum / count if mean_logits is None else mean_logits
    return VideoPrediction(
        slot_rles=slot_rles, height=height, width=width,
        score_instances=lambda max_num: method.score_instances(config, final, max_num),
        mean_logits=mean_logits,
        frame_logits=np.concatenate(kept_logits) if keep_frame_logits else None,
        frame_mask_logits=np.concatenate(kept_masks) if keep_mask_logits else None)

  def _predict_offline(self, frames, height, width, keep_frame_logits, keep_mask_logits,
                       keep_refiner_inputs, progress) -> VideoPrediction:
    geometry = self.geometry(height, width)
    # 1. Segmenter + the online method, chunk by chunk: the queries and the online logits kept; the
    # mask features leave the device (host memory T x h x w x C, device memory independent of T).
    instance_embeds, frame_embeds, mask_features, kept_logits = [], [], [], []
    logit_sum, count = None, 0
    for valid, outputs in self._run_chunks(frames, geometry, self._step_fn(geometry), progress):
      logits = np.asarray(outputs["pred_logits"], np.float64)[:valid]
      logit_sum = logits.sum(0) if logit_sum is None else logit_sum + logits.sum(0)
      if keep_frame_logits:
        kept_logits.append(logits)
      instance_embeds.append(np.asarray(outputs["pred_embeds"])[:valid])
      frame_embeds.append(np.asarray(outputs["frame_embeds"])[:valid])
      mask_features.append(np.asarray(outputs["mask_features"])[:valid])
      count += valid
    instance_embeds, frame_embeds = np.concatenate(instance_embeds), np.concatenate(frame_embeds)
    kept_inputs = None
    if keep_refiner_inputs:
      kept_inputs = dict(instance_embeds=instance_embeds, frame_embeds=frame_embeds,
                         mask_features=np.concatenate(mask_features))
    # 2. One refiner call over the whole video (its attention along time spans every frame).
    refined = self._refine(self.params["refiner"], jnp.asarray(instance_embeds),
                           jnp.asarray(frame_embeds))
    refiner_logits = np.asarray(refined["pred_logits"], np.float64)
    mask_embeddings = np.asarray(refined["mask_embeddings"])
    del refined
    # 3. The refiner's masks chunk by chunk (each chunk's features back on the device), then the
    # online path: resize, threshold, bit-pack, RLE. The last chunk is padded to the chunk size.
    masks_step = self._masks_fn(geometry, keep_mask_logits)
    slot_rles, kept_masks, start = None, [], 0
    mask_features.reverse()
    while mask_features:
      features = mask_features.pop()   # freed chunk by chunk
      valid = features.shape[0]
      outputs = masks_step(jnp.asarray(_pad_frames(mask_embeddings[start:start + valid],
                                                   self.chunk_size)),
                           jnp.asarray(_pad_frames(features, self.chunk_size)))
      slot_rles = _add_rles(slot_rles, np.asarray(outputs["packed_masks"])[:valid], width)
      if keep_mask_logits:
        kept_masks.append(np.asarray(outputs["pred_masks"])[:valid])
      start += valid
    mean_logits = logit_sum / count
    scores = offline_class_scores(refiner_logits, mean_logits)
    return VideoPrediction(
        slot_rles=slot_rles, height=height, width=width,
        score_instances=lambda max_num: topk_instances(scores, max_num),
        mean_logits=mean_logits, refiner_logits=refiner_logits, refiner_inputs=kept_inputs,
        frame_logits=np.concatenate(kept_logits) if keep_frame_logits else None,
        frame_mask_logits=np.concatenate(kept_masks) if keep_mask_logits else None)

  def predict_video(self, source, **kwargs) -> VideoPrediction:
    """`source`: a `video_io` frame source (FrameFiles, VideoFile)."""
    return self.predict(iter(source), source.height, source.width, **kwargs)


def _no_refiner_message(params) -> str:
  return (f"offline inference needs the temporal refiner's weights (params['refiner']), but the "
          f"checkpoint holds only {sorted(params)}: give an offline checkpoint (a converted LOMM / "
          "DVIS++ offline model or a refiner training run's export), or run online")


def _pad_frames(x: np.ndarray, length: int) -> np.ndarray:
  """x [t, ...] padded with zeros to [length, ...] (the frames of a last, partial chunk)."""
  if x.shape[0] == length:
    return x
  return np.concatenate([x, np.zeros((length - x.shape[0],) + x.shape[1:], x.dtype)])


def _add_rles(slot_rles: Optional[List[List[dict]]], packed: np.ndarray, width: int
              ) -> List[List[dict]]:
  """Appends each valid frame's masks (bit-packed [t, S, H, ceil(W / 8)]) to the slots' RLE lists."""
  if slot_rles is None:
    slot_rles = [[] for _ in range(packed.shape[1])]
  for frame in packed:
    for n, rle in enumerate(encode_rle(unpack_masks(frame, width))):
      slot_rles[n].append(rle)
  return slot_rles


def _packed_outputs(mask_logits, geometry, keep_mask_logits) -> Dict[str, Array]:
  """Mask logits [T, S, h, w] -> {'packed_masks'} at the original size (+ 'pred_masks' if kept)."""
  mask_h, mask_w = mask_logits.shape[-2:]
  m_y, m_x = mask_resize_matrices(mask_h, mask_w, geometry)   # trace-time constants
  result = dict(packed_masks=binary_masks(mask_logits, jnp.asarray(m_y), jnp.asarray(m_x)))
  if keep_mask_logits:
    result["pred_masks"] = mask_logits
  return result


def _chunk_step(chunk_model, geometry, keep_mask_logits, params, carry, images, pixel_valid,
                frame_valid):
  """The jitted body: the model on one chunk, then its masks at the original size, bit-packed."""
  carry, outputs = chunk_model(params, carry, images, pixel_valid, frame_valid)
  result = {k: v for k, v in outputs.items() if k != "pred_masks"}
  result.update(pred_logits=outputs["pred_logits"].astype(jnp.float32),
                **_packed_outputs(outputs["pred_masks"], geometry, keep_mask_logits))
  return carry, result


def _offline_chunk_step(chunk_model, params, carry, images, pixel_valid, frame_valid):
  """The jitted body offline: the model on one chunk; what the refiner reads leaves the device."""
  carry, outputs = chunk_model(params, carry, images, pixel_valid, frame_valid)
  return carry, dict(outputs, pred_logits=outputs["pred_logits"].astype(jnp.float32))


def _refined_masks_step(masks_from_embeddings, geometry, keep_mask_logits, mask_embeddings,
                        mask_features):
  """The jitted body of the offline masks: the refiner's mask logits of one chunk, bit-packed."""
  return _packed_outputs(masks_from_embeddings(mask_embeddings, mask_features), geometry,
                         keep_mask_logits)
