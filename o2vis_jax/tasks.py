"""Training tasks: the model, the loss and the data that `o2vis_jax.train` optimises (scenic's
"model wrapper owns the loss"; the Flax modules own only the forward).

- `TrackingTask` (SPEC 5): the association method's parameters trained on a frozen segmenter
  (stop-gradient, no optimiser state): segmenter -> `association.track` over the clip -> `method.loss`.
  Its training phases are the method's (`Method.phases`, `Method.phase(config, step)`).
- `SegmenterTask` (SPEC 6): the per-frame Mask2Former loss with deep supervision + Eq. 13.
- `RefinerTask` (issue 13; shared/reference/refiner.md "Training"): the offline temporal refiner trained on
  a frozen segmenter + online association method, with Mask2Former-VIS's video set loss on the masks
  stacked over time and LOMM's switch of the matching from the tracker's outputs to the refiner's.

All read training clips from `o2vis_jax.input_pipeline` in the batch format documented there, and
average a per-video criterion over the local videos with `losses.mean_over_videos`.
"""

import dataclasses
import os
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from o2vis_jax import association
from o2vis_jax import losses
from o2vis_jax.checkpoint_conversion import io as checkpoint_io
from o2vis_jax.models import build_segmenter, init_segmenter_params
from o2vis_jax.train import DATA_AXIS


TRACKER_HEADS = ("decoder_norm", "class_embed", "mask_embed")


def heads_from_segmenter(tracker: Dict[str, Any], segmenter: Dict[str, Any]) -> Dict[str, Any]:
  """A fresh tracker whose shared heads (LN_d, class_embed, mask_embed) start as copies of the
  segmenter's (`train.tracker_heads_from_segmenter`, an initialisation choice of this project, off by
  default: the reference initialises them at random). Shapes must agree (same C, K and mask_dim)."""
  tracker = dict(tracker)
  predictor = segmenter["predictor"]
  for name in TRACKER_HEADS:
    mine, theirs = jax.tree.structure(tracker[name]), jax.tree.structure(predictor[name])
    shapes = [x.shape for x in jax.tree.leaves(tracker[name])]
    if mine != theirs or shapes != [x.shape for x in jax.tree.leaves(predictor[name])]:
      raise ValueError(f"train.tracker_heads_from_segmenter: the segmenter's {name} does not fit the "
                       f"tracker's ({theirs} vs {mine})")
    tracker[name] = jax.tree.map(jnp.array, predictor[name])
  return tracker


def with_segmenter_stage_params(method, tracker: Dict[str, Any], loaded: Dict[str, Any],
                                source: str) -> Dict[str, Any]:
  """A fresh tracker whose `method.segmenter_stage_params` (e.g. CAVIS's ReID head) are the ones the
  segmenter stage trained, read from the init checkpoint's association params `loaded` ({} if none)."""
  names = method.segmenter_stage_params
  if not names:
    return tracker
  missing = [name for name in names if name not in loaded]
  if missing:
    logging.warning("%s holds no trained %s of association method %r (the segmenter stage's): they are "
                    "RANDOMLY initialised", source, missing, method.name)
    return tracker
  tracker = dict(tracker)
  for name in names:
    mine = [(x.shape, x.dtype) for x in jax.tree.leaves(tracker[name])]
    theirs = [(np.shape(x), np.asarray(x).dtype) for x in jax.tree.leaves(loaded[name])]
    if (jax.tree.structure(tracker[name]) != jax.tree.structure(loaded[name])
        or [m[0] for m in mine] != [t[0] for t in theirs]):
      raise ValueError(f"config.init_checkpoint={source!r}: its tracker/{name} does not fit association "
                       f"method {method.name!r} of this config ({theirs} vs {mine})")
    tracker[name] = jax.tree.map(jnp.asarray, loaded[name])
  logging.info("%s of association method %r from %s (the segmenter stage's)", list(names), method.name,
               source)
  return tracker


def load_init_params(path: str, config: Optional[ml_collections.ConfigDict] = None,
                     parts: Tuple[str, ...] = ("segmenter",)) -> Dict[str, Any]:
  """Params to start from: a converted checkpoint dir (scripts/convert_checkpoint.py, or the export of
  a training run) -> {'segmenter': ..., 'tracker': ...?}, read by the one checkpoint reader
  (`checkpoint_conversion.load_converted`). With `config` (the run's), the params of `parts` must also
  have the shapes it implies: a checkpoint of another model fails here, naming the parameter, instead
  of inside the first compiled step."""
  from o2vis_jax.checkpoint_conversion.io import CheckpointError, load_converted
  try:
    _, params = load_converted(path, check_against=config, check_parts=parts)
  except CheckpointError as e:
    raise CheckpointError(f"config.init_checkpoint: {e}") from e
  return params


def check_data_dir(config: ml_collections.ConfigDict, workdir: Optional[str]) -> None:
  """What `resolve_data_dir` needs, checked without generating anything (scripts/train.py calls it
  before the run starts)."""
  from o2vis_jax.config_validation import ConfigError
  data = config.data
  if data.data_dir:
    if not os.path.isdir(data.data_dir):
      raise ConfigError(f"config.data.data_dir={data.data_dir!r} is not a directory (build the "
                        "dataset first: python -m data.build --help)")
  elif data.dataset != "synthetic":
    raise ConfigError(f"config.data.data_dir is empty: set it to the built {data.dataset} dataset "
                      "(python -m data.build --help); only the synthetic dataset is generated on demand")
  elif not workdir:
    raise ConfigError("config.data.data_dir is empty and the synthetic dataset is generated into the "
                      "workdir, but none was given")


def resolve_data_dir(config: ml_collections.ConfigDict, workdir: Optional[str]) -> str:
  """`config.data.data_dir`; for the synthetic dataset with no data_dir, generates and builds it (once)
  under WORKDIR/synthetic_data, so that `configs/synthetic_tiny.py` needs nothing but --workdir."""
  from o2vis_jax import input_pipeline
  check_data_dir(config, workdir)
  if config.data.data_dir:
    return config.data.data_dir
  return input_pipeline.prepare_synthetic(config, os.path.join(workdir, "synthetic_data"))


def make_train_iterator(config: ml_collections.ConfigDict, seed: int, workdir: Optional[str]):
  """This process's iterator of local training batches (config.batch_size / process_count clips)."""
  from o2vis_jax import input_pipeline
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.data_dir = resolve_data_dir(config, workdir)
  videos, coco, _ = input_pipeline.open_train_sources(config)
  local_batch = config.batch_size // jax.process_count()
  dataset = input_pipeline.train_dataset(config, videos, batch_size=local_batch, coco_source=coco,
                                         seed=seed)
  return iter(dataset)


def segmenter_forward(config, params, frames, pixel_valid):
  """Runs the segmenter on a [B, T, H, W, 3] clip as one batch of B*T images -> outputs [B, T, ...]."""
  batch, num_frames = frames.shape[:2]
  flat = lambda x: x.reshape((batch * num_frames,) + x.shape[2:])
  outputs = build_segmenter(config).apply({"params": params}, flat(frames), flat(pixel_valid))
  unflat = lambda x: x.reshape((batch, num_frames) + x.shape[1:])
  return jax.tree.map(unflat, outputs)


def association_frames(seg: Dict[str, Any], frame_valid) -> Dict[str, Any]:
  """The segmenter's outputs [B, T, ...] under the association methods' standard input names."""
  return dict(embeds=seg["pred_embds"], embeds_without_norm=seg["pred_embds_without_norm"],
              logits=seg["pred_logits"], masks=seg["pred_masks"], mask_features=seg["mask_features"],
              valid=frame_valid)


class _Task:
  phases: Tuple[str, ...] = ("main",)
  frozen_subtrees: Tuple[str, ...] = ()   # top-level trainable subtrees the optimiser keeps fixed

  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str] = None):
    self.config = config
    self.workdir = workdir

  def train_iterator(self, seed: int):
    return make_train_iterator(self.config, seed, self.workdir)

  def phase(self, step: int) -> str:
    del step
    return self.phases[-1]

  def _num_masks(self, counts):
    return losses.average_num_masks(counts, axis_name=DATA_AXIS)


class TrackingTask(_Task):
  """The association method `config.association.method` trains on a frozen segmenter (SPEC 5)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str] = None):
    super().__init__(config, workdir)
    self.method = association.method_of(config)
    if not self.method.trainable:
      raise ValueError(f"association method {self.method.name!r} is training-free: there is nothing to "
                       "train (config.train.task='tracker' needs a method with a loss)")
    self.phases = self.method.phases
    self.frozen_subtrees = self.method.frozen_in_training

  def init_params(self, rng):
    seg_rng, tracker_rng = jax.random.split(rng)
    init = self.config.get("init_checkpoint", "")
    if init:
      loaded = load_init_params(init, self.config, ("segmenter", "tracker")
                                if self.config.get("init_tracker", False) else ("segmenter",))
      segmenter = loaded["segmenter"]
      tracker = loaded.get("tracker") if self.config.get("init_tracker", False) else None
      if tracker is not None and checkpoint_io.segmenter_stage_only(self.config, loaded):
        tracker = None   # the segmenter stage's subtrees only: a fresh tracker takes them below
      logging.info("segmenter from %s%s", init, "" if tracker is None else " (and tracker)")
    else:
      logging.warning("config.init_checkpoint is empty: the frozen segmenter is RANDOMLY initialised.")
      segmenter, tracker = init_segmenter_params(self.config, seg_rng), None
    if tracker is None:
      model = self.config.model
      tracker = self.method.init_params(self.config, tracker_rng, num_classes=model.num_classes,
                                        hidden_dim=model.hidden_dim)
      if self.config.train.get("tracker_heads_from_segmenter", False):
        tracker = heads_from_segmenter(tracker, segmenter)
      tracker = self.method.params_from_segmenter(self.config, tracker, segmenter)
      if init:
        tracker = with_segmenter_stage_params(self.method, tracker, loaded.get("tracker", {}), init)
    return tracker, {"segmenter": segmenter}

  def phase(self, step: int) -> str:
    return self.method.phase(self.config, step)

  def loss(self, trainable, frozen, batch, rngs, step, phase):
    del step
    seg = segmenter_forward(self.config, frozen["segmenter"], batch["frames"], batch["pixel_valid"])
    seg = jax.lax.stop_gradient(seg)
    targets = losses.targets_from_batch(batch)
    frames = association_frames(seg, batch["frame_valid"])
    frames.update(self.method.training_inputs(self.config, targets, rngs))
    outputs = association.track(self.config, trainable, frames, train=True, phase=phase)
    num_masks = self._num_masks(jax.vmap(losses.tracker_mask_count)(targets))
    criterion = lambda key, o, t: self.method.loss(self.config, key, o, t, num_masks, phase=phase)
    return losses.mean_over_videos(criterion, rngs, outputs, targets)


class SegmenterTask(_Task):
  """The segmenter trains (backbone lr x0.1, frozen BatchNorm), per frame, with Eq. 13 (SPEC 6), and with
  the association method's segmenter-stage terms (`Method.segmenter_loss`; CAVIS's L_CTX and L_PCC).

  A method with `segmenter_stage_params` (CAVIS's ReID head) trains them here: the trainable params are
  then {'segmenter', 'tracker': the method's params}, the rest of the method's params kept fixed, and the
  export holds both (the tracker stage reads the trained subtrees from it). Otherwise they are the
  segmenter's params alone. `train.freeze_segmenter` (a method with `segmenter_stage_params` on a shared,
  already trained segmenter: e.g. CAVIS's ReID head on the demo's) keeps the init checkpoint's segmenter
  fixed, without gradient: only {'tracker': the method's params} train, the export holds both."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str] = None):
    super().__init__(config, workdir)
    self.method = association.method_of(config)
    # The per-frame Hungarian uses the association method's matcher (host / device), if it has one.
    method_section = self.method.section(config)
    self.loss_config = losses.loss_config_from(config, matcher=method_section.get("matcher", "host"))
    self.trains_method = bool(self.method.segmenter_stage_params)
    if self.trains_method:
      model = config.model
      shapes = self.method.param_shapes(config, num_classes=model.num_classes, hidden_dim=model.hidden_dim)
      self.frozen_subtrees = tuple(f"tracker/{name}" for name in shapes
                                   if name not in self.method.segmenter_stage_params)
    self.freeze_segmenter = bool(config.train.get("freeze_segmenter", False))
    if self.freeze_segmenter and not (self.trains_method and config.get("init_checkpoint", "")):
      raise ValueError("config.train.freeze_segmenter=True trains only the association method's segmenter-"
                       f"stage params on a trained segmenter: method {self.method.name!r} has "
                       f"{'none' if not self.trains_method else 'them'}"
                       + ("" if config.get("init_checkpoint", "") else ", and config.init_checkpoint is empty"))

  def init_params(self, rng):
    seg_rng, method_rng = jax.random.split(rng)
    init = self.config.get("init_checkpoint", "")
    loaded = load_init_params(init, self.config) if init else {}
    params = loaded["segmenter"] if init else init_segmenter_params(self.config, seg_rng)
    if not self.trains_method:
      return params, {}
    model = self.config.model
    if self.config.get("init_tracker", False) and "tracker" in loaded:
      tracker = loaded["tracker"]
      if checkpoint_io.segmenter_stage_only(self.config, loaded):   # e.g. CAVIS_segmenter: its ReID head only
        tracker = self.method.init_params(self.config, method_rng, num_classes=model.num_classes,
                                          hidden_dim=model.hidden_dim)
        tracker = with_segmenter_stage_params(self.method, tracker, loaded["tracker"], init)
    else:
      tracker = self.method.init_params(self.config, method_rng, num_classes=model.num_classes,
                                        hidden_dim=model.hidden_dim)
    if self.freeze_segmenter:
      return {"tracker": tracker}, {"segmenter": params}
    return {"segmenter": params, "tracker": tracker}, {}

  def export_params(self, params) -> Dict[str, Any]:
    """The trained params as an export ({'segmenter', 'tracker'?}, `train.export`): the tracker holds only
    the method's `segmenter_stage_params` (the rest is untrained; `io.segmenter_stage_only`)."""
    if not self.trains_method:
      return {"segmenter": params}
    if self.freeze_segmenter:   # the frozen segmenter as loaded
      params = dict(params, segmenter=load_init_params(self.config.init_checkpoint, self.config)["segmenter"])
    return {"segmenter": params["segmenter"],
            "tracker": {name: params["tracker"][name] for name in self.method.segmenter_stage_params}}

  def loss(self, trainable, frozen, batch, rngs, step, phase):
    del step, phase
    segmenter, method_params = (trainable.get("segmenter"), trainable["tracker"]) if self.trains_method \
        else (trainable, {})
    if self.freeze_segmenter:
      segmenter = frozen["segmenter"]
    seg = segmenter_forward(self.config, segmenter, batch["frames"], batch["pixel_valid"])
    if self.freeze_segmenter:
      seg = jax.lax.stop_gradient(seg)
    outputs = dict(pred_logits=seg["pred_logits"], pred_masks=seg["pred_masks"],
                   aux=[dict(pred_logits=a["pred_logits"], pred_masks=a["pred_masks"])
                        for a in seg["aux_outputs"]])
    if self.loss_config.contrastive_weight:
      outputs["embeddings"] = seg["pred_embds"]
    frames = association_frames(seg, batch["frame_valid"])
    targets = losses.targets_from_batch(batch)
    set_targets = jax.vmap(lambda t: self.method.segmenter_targets(self.config, t))(targets)
    num_masks = self._num_masks(jax.vmap(losses.segmenter_mask_count)(set_targets))

    def criterion(key, video_outputs, video_frames, video_set_targets, video_targets):
      total, terms, query_of_gt = losses.segmenter_criterion_and_assignment(
          key, video_outputs, video_set_targets, num_masks, self.loss_config)
      method_total, method_terms = self.method.segmenter_loss(
          self.config, jax.random.fold_in(key, 1), method_params, video_frames, video_targets, query_of_gt)
      return total + method_total, dict(terms, **method_terms)

    return losses.mean_over_videos(criterion, rngs, outputs, frames, set_targets, targets)


# --------------------------------------------------------------------------------------------------
# The offline temporal refiner (shared/reference/refiner.md, "Training").
#
# LOMM_offline's `frame_decoder_loss_reshape` turns a video into one image: the masks [T, N, h, w] are
# stacked vertically into [N, T*h, w], the GT masks [T, G, H, W] into [G, T*H, W], and the video-level
# logits [N, K+1] are that image's classes. The criterion is then Mask2Former's per-image set loss on that
# image (VideoHungarianMatcher = one Hungarian per video over all its frames; CE + BCE + dice on
# `loss.num_points * T` uncertainty-sampled points of the stacked mask). Here a stacked video is a
# `VideoTargets` of one "frame", so `losses.frame_assignment` and `losses.set_loss` are reused unchanged.
# Point sampling: like the reference, the points are drawn over the stacked [T*h, w] map (not per frame).
# Padded frames (frame_valid False; the training pipeline never pads) would count as frames of the image.

def stack_over_time(masks: jax.Array) -> jax.Array:
  """[T, N, h, w] -> [N, T*h, w]: frame t occupies rows t*h .. (t+1)*h - 1 (the reference's reshape)."""
  num_frames, num, height, width = masks.shape
  return jnp.transpose(masks, (1, 0, 2, 3)).reshape(num, num_frames * height, width)


def stacked_targets(targets: losses.VideoTargets) -> losses.VideoTargets:
  """The clip's GT as one image: labels [1, G], masks [1, G, T*H, W]. A GT is a target when it has a
  mask in some frame of the clip (Mask2Former-VIS `prepare_targets`: gt_ids != -1 somewhere)."""
  in_clip = jnp.any(targets.present, axis=0)
  return losses.VideoTargets(labels=targets.labels[:1], masks=stack_over_time(targets.masks)[None],
                             present=in_clip[None], frame_valid=jnp.ones((1,), bool))


def refiner_mask_count(targets: losses.VideoTargets) -> jax.Array:
  """The refiner criterion's num_masks of one clip: its GT instances (Mask2Former-VIS counts instances,
  not (frame, instance) pairs); `losses.average_num_masks` makes it global."""
  return jnp.sum(jnp.any(targets.present, axis=0)).astype(jnp.float32)


def refiner_layers(refined: Dict[str, Any]) -> List[Tuple[str, jax.Array, jax.Array]]:
  """(term suffix, video logits [N, K+1], masks [T, N, h, w]) of every refiner layer of one video: the
  last ('') then the aux layers 0..L-2 ('_0'..'_{L-2}'), as the reference's weight dict names them."""
  layers = [("", refined["pred_logits"], refined["pred_masks"])]
  layers += [(f"_{i}", aux["pred_logits"], aux["pred_masks"])
             for i, aux in enumerate(refined.get("aux_outputs", ()))]
  return layers


def refiner_assignments(key: jax.Array, refined: Dict[str, Any], tracker_outputs: Dict[str, Any],
                        targets: losses.VideoTargets, config: losses.LossConfig,
                        phase: str) -> List[jax.Array]:
  """The GT assignment (query_of_gt [G], -1 = unmatched) of every layer of `refiner_layers`.

  'early' (iterations < MAX_ITER / 2 in the reference): one matching on the frozen online tracker's
  outputs (its per-frame logits [T, N, K+1] averaged over T, its masks stacked), reused by every layer.
  'late': each layer is matched on its own predictions. `config.num_points` is the matcher's count for
  the stacked image (the caller's loss.num_points * T)."""
  image = stacked_targets(targets)

  def assign(layer_key, logits, masks):
    return losses.frame_assignment(layer_key, logits[None], stack_over_time(masks)[None], image, config)[0]

  layers = refiner_layers(refined)
  if phase == "early":
    shared = assign(key, jnp.mean(tracker_outputs["pred_logits"].astype(jnp.float32), axis=0),
                    tracker_outputs["pred_masks"])
    return [shared] * len(layers)
  if phase != "late":
    raise ValueError(f"refiner loss: phase must be 'early' or 'late', got {phase!r}")
  keys = jax.random.split(key, len(layers))
  return [assign(k, logits, masks) for k, (_, logits, masks) in zip(keys, layers)]


def refiner_criterion(key: jax.Array, refined: Dict[str, Any], tracker_outputs: Dict[str, Any],
                      targets: losses.VideoTargets, num_masks: jax.Array, config: losses.LossConfig,
                      phase: str) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """LOMM_offline's VideoSetCriterion of one video: loss_ce / loss_mask / loss_dice of every refiner
  layer (suffixes of `refiner_layers`), weighted by `config` (2 / 5 / 5). `config.num_points` is per
  frame (loss.num_points); the stacked image uses num_points * T for matching and for the losses."""
  num_frames = targets.masks.shape[0]
  config = dataclasses.replace(config, num_points=config.num_points * num_frames)
  match_key, loss_key = jax.random.split(key)
  assignments = refiner_assignments(match_key, refined, tracker_outputs, targets, config, phase)
  image = stacked_targets(targets)
  terms = {}
  layers = refiner_layers(refined)
  for layer_key, (suffix, logits, masks), query_of_gt in zip(
      jax.random.split(loss_key, len(layers)), layers, assignments):
    terms.update(losses.set_loss(layer_key, logits[None], stack_over_time(masks)[None], image,
                                 query_of_gt, num_masks, config, suffix=suffix))
  return losses.weighted_total(terms, config), terms


class RefinerTask(_Task):
  """The offline temporal refiner trains on a frozen segmenter + online association method
  (shared/reference/refiner.md "Training"): both run without gradient over the clip, the refiner
  refines the tracker's slot embeddings with the segmenter's queries and mask features,
  `refiner_criterion` scores every layer. Phases: 'early' (matching on the tracker's outputs) for the first
  `train.refiner_matching_switch` of the steps, then 'late' (matching on the refiner's own layers)."""
  phases = ("early", "late")

  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str] = None):
    super().__init__(config, workdir)
    from o2vis_jax import refiner as refiner_lib
    self.refiner_lib = refiner_lib
    self.method = association.method_of(config)
    if "refiner" not in config:
      raise ValueError("config.train.task='refiner' needs a config.refiner section "
                       "(o2vis_jax.defaults.base_config() has one)")
    method_section = self.method.section(config)
    self.loss_config = losses.loss_config_from(config, matcher=method_section.get("matcher", "host"))

  def init_params(self, rng):
    init = self.config.get("init_checkpoint", "")
    if not init:
      raise ValueError("config.train.task='refiner' trains on a frozen segmenter and online tracker: set "
                       "config.init_checkpoint to a checkpoint holding both (e.g. the export of a "
                       "'segmenter+tracker' or 'tracker' run)")
    init_refiner = bool(self.config.get("init_refiner", False))
    parts = ("segmenter", "tracker") + (("refiner",) if init_refiner else ())
    loaded = load_init_params(init, self.config, parts)
    expected_tracker = jax.tree.leaves(self.method.param_shapes(
        self.config, num_classes=self.config.model.num_classes, hidden_dim=self.config.model.hidden_dim))
    if checkpoint_io.segmenter_stage_only(self.config, loaded):
      raise ValueError("config.train.task='refiner' runs the frozen online model: "
                       + checkpoint_io.segmenter_stage_message(self.config, init))
    missing = [part for part in parts if part not in loaded
               and not (part == "tracker" and not expected_tracker)]
    if missing:
      raise ValueError(f"config.init_checkpoint={init!r} holds {sorted(loaded)}, not {missing}: "
                       "config.train.task='refiner' needs the frozen online model ('segmenter' and "
                       "'tracker': the export of a 'tracker' or 'segmenter+tracker' run)"
                       + ("; config.init_refiner=True also needs 'refiner'" if init_refiner else ""))
    if init_refiner:
      refiner = loaded["refiner"]
      logging.info("segmenter, tracker and refiner from %s", init)
    else:
      model = self.config.model
      refiner = self.refiner_lib.init_params(self.config, rng, num_classes=model.num_classes,
                                             hidden_dim=model.hidden_dim)
      logging.info("segmenter and tracker from %s; fresh refiner", init)
    return refiner, {"segmenter": loaded["segmenter"], "tracker": loaded.get("tracker", {})}

  def phase(self, step: int) -> str:
    fraction = float(self.config.train.get("refiner_matching_switch", 0.5))
    return "early" if step < fraction * self.config.num_train_steps else "late"

  def online(self, frozen, batch) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The frozen segmenter and online association method over the clip, without gradient (the
    reference runs them under torch.no_grad() in eval mode) -> (segmenter outputs, tracker outputs)."""
    seg = segmenter_forward(self.config, frozen["segmenter"], batch["frames"], batch["pixel_valid"])
    seg = jax.lax.stop_gradient(seg)
    online = association.track(self.config, frozen["tracker"],
                               association_frames(seg, batch["frame_valid"]), train=False)
    if "pred_embeds" not in online:
      raise ValueError(f"association method {self.method.name!r} returns no pred_embeds (the slot "
                       "embeddings the refiner refines); the refiner needs e.g. 'o2vis'")
    return seg, jax.lax.stop_gradient(online)

  def loss(self, trainable, frozen, batch, rngs, step, phase):
    del step
    seg, online = self.online(frozen, batch)
    refine = lambda instance, frame, features: self.refiner_lib.refine(
        self.config, trainable, instance, frame, features, train=True)
    refined = jax.vmap(refine)(online["pred_embeds"], seg["pred_embds_without_norm"], seg["mask_features"])
    tracker_outputs = dict(pred_logits=online["pred_logits"], pred_masks=online["pred_masks"])
    targets = losses.targets_from_batch(batch)
    num_masks = self._num_masks(jax.vmap(refiner_mask_count)(targets))
    criterion = lambda key, r, o, t: refiner_criterion(key, r, o, t, num_masks, self.loss_config, phase)
    return losses.mean_over_videos(criterion, rngs, refined, tracker_outputs, targets)


TASKS = {"tracker": TrackingTask, "segmenter": SegmenterTask, "refiner": RefinerTask}


def build_task(config: ml_collections.ConfigDict, workdir: Optional[str] = None):
  name = config.train.task
  if name not in TASKS:
    raise ValueError(f"config.train.task={name!r}; expected one of {sorted(TASKS)}")
  return TASKS[name](config, workdir)
