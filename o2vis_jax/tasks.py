"""Training tasks: the model, the loss and the data that `o2vis_jax.train` optimises (scenic's
"model wrapper owns the loss"; the Flax modules own only the forward).

- `TrackerTask` (SPEC 5): T_E / T_A trained on a frozen segmenter (stop-gradient, no optimiser state).
- `SegmenterTask` (SPEC 6): the per-frame Mask2Former loss with deep supervision + Eq. 13.

Both read training clips from `o2vis_jax.input_pipeline` in the batch format documented there.
"""

import os
from typing import Any, Dict, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from o2vis_jax import losses
from o2vis_jax import video_model
from o2vis_jax.models import build_segmenter
from o2vis_jax.models import tracker as tracker_lib
from o2vis_jax.train import DATA_AXIS


def init_segmenter_params(config, rng) -> Any:
  # No segmenter parameter depends on the image size; 64x64 is the smallest cheap multiple of 32.
  images = jnp.zeros((1, 64, 64, 3), jnp.float32)
  return build_segmenter(config).init(rng, images)["params"]


def init_tracker_params(config, rng) -> Any:
  if config.tracker.get("mode", "trackers") == "te_only":
    from o2vis_jax import te_only
    return te_only.init_params(config, rng)
  return tracker_lib.init_params(config, rng)


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


def load_init_params(path: str) -> Dict[str, Any]:
  """Params to start from: a converted checkpoint dir (scripts/convert_checkpoint.py, or the export of
  a training run) -> {'segmenter': ..., 'tracker': ...?}."""
  from o2vis_jax.checkpoint_conversion import load_converted
  if not os.path.isdir(path):
    raise FileNotFoundError(f"init checkpoint {path!r} is not a directory (expected the output of "
                            "scripts/convert_checkpoint.py or scripts/export_checkpoint.py)")
  _, params = load_converted(path)
  return params


def resolve_data_dir(config: ml_collections.ConfigDict, workdir: Optional[str]) -> str:
  """`config.data.data_dir`; for the synthetic dataset with no data_dir, generates and builds it (once)
  under WORKDIR/synthetic_data, so that `configs/synthetic_tiny.py` needs nothing but --workdir."""
  from o2vis_jax import input_pipeline
  data = config.data
  if data.data_dir:
    if not os.path.isdir(data.data_dir):
      raise FileNotFoundError(f"config.data.data_dir={data.data_dir!r} is not a directory (build the "
                              "dataset first: python -m data.build --help)")
    return data.data_dir
  if data.dataset != "synthetic":
    raise ValueError(f"config.data.data_dir is empty: set it to the built {data.dataset} dataset "
                     "(python -m data.build --help); only the synthetic dataset is generated on demand")
  if not workdir:
    raise ValueError("the synthetic dataset is generated into the workdir, but none was given")
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


def _segmenter_forward(config, params, frames, pixel_valid):
  """Runs the segmenter on a [B, T, H, W, 3] clip as one batch of B*T images -> outputs [B, T, ...]."""
  batch, num_frames = frames.shape[:2]
  flat = lambda x: x.reshape((batch * num_frames,) + x.shape[2:])
  outputs = build_segmenter(config).apply({"params": params}, flat(frames), flat(pixel_valid))
  unflat = lambda x: x.reshape((batch, num_frames) + x.shape[1:])
  return jax.tree.map(unflat, outputs)


class _Task:
  def __init__(self, config: ml_collections.ConfigDict, workdir: Optional[str] = None):
    self.config = config
    self.workdir = workdir
    self.loss_config = losses.loss_config_from(config)

  def train_iterator(self, seed: int):
    return make_train_iterator(self.config, seed, self.workdir)

  def _num_masks(self, counts):
    return losses.average_num_masks(counts, axis_name=DATA_AXIS)


class TrackerTask(_Task):
  """Only the trackers train; the segmenter runs under stop_gradient (SPEC 5)."""

  def init_params(self, rng):
    seg_rng, tracker_rng = jax.random.split(rng)
    init = self.config.get("init_checkpoint", "")
    if init:
      loaded = load_init_params(init)
      segmenter = loaded["segmenter"]
      tracker = loaded.get("tracker") if self.config.get("init_tracker", False) else None
      logging.info("segmenter from %s%s", init, "" if tracker is None else " (and tracker)")
    else:
      logging.warning("config.init_checkpoint is empty: the frozen segmenter is RANDOMLY initialised.")
      segmenter, tracker = init_segmenter_params(self.config, seg_rng), None
    if tracker is None:
      tracker = init_tracker_params(self.config, tracker_rng)
      if self.config.train.get("tracker_heads_from_segmenter", False):
        tracker = heads_from_segmenter(tracker, segmenter)
    return tracker, {"segmenter": segmenter}

  def _early_training(self) -> bool:
    return video_model.resolve_options(self.config.tracker).early_matching

  def phase(self, step: int) -> str:
    """'early' for the first `train.early_training_fraction` of the steps when early training is on
    (Eq. 9, 14; REFERENCE.md 7.4: the first half in the reference), else 'main'."""
    fraction = float(self.config.train.get("early_training_fraction", 0.5))
    if self._early_training() and step < fraction * self.config.num_train_steps:
      return "early"
    return "main"

  def loss(self, trainable, frozen, batch, rngs, step, phase="main"):
    config = self.config
    if self._early_training() and phase != "early":
      config = config.copy_and_resolve_references()
      config.tracker.early_matching = False
    seg = _segmenter_forward(config, frozen["segmenter"], batch["frames"], batch["pixel_valid"])
    seg = jax.lax.stop_gradient(seg)
    te_only = config.tracker.get("mode", "trackers") == "te_only"
    outputs = video_model.track(
        config, trainable, seg["pred_embds"], seg["pred_embds_without_norm"], seg["mask_features"],
        frame_valid=batch["frame_valid"], segmenter_logits=seg["pred_logits"],
        segmenter_masks=seg["pred_masks"] if te_only else None, train=True)
    targets = losses.targets_from_batch(batch)
    num_masks = self._num_masks(jax.vmap(losses.tracker_mask_count)(targets))
    criterion_outputs = losses.tracker_outputs_from_track(outputs)
    if te_only:
      # Table 3(a) row 6: always early matching, only the _E losses (REFERENCE.md section 12).
      per_video = jax.vmap(lambda k, o, t: losses.te_only_criterion(
          jax.random.wrap_key_data(k), o, t, num_masks, self.loss_config))
      totals, terms = per_video(rngs, criterion_outputs, targets)
    elif phase == "early":
      # Eq. 14: the GT assignment comes from the segmenter's predictions re-ordered by sigma_t.
      order = outputs["indices"]                                         # [B, T, N]
      take = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 3)), axis=2)
      matcher_outputs = dict(pred_logits=take(seg["pred_logits"]), pred_masks=take(seg["pred_masks"]))
      per_video = jax.vmap(lambda k, o, t, m: losses.tracker_criterion(
          jax.random.wrap_key_data(k), o, t, num_masks, self.loss_config, matcher_outputs=m))
      totals, terms = per_video(rngs, criterion_outputs, targets, matcher_outputs)
    else:
      per_video = jax.vmap(lambda k, o, t: losses.tracker_criterion(
          jax.random.wrap_key_data(k), o, t, num_masks, self.loss_config))
      totals, terms = per_video(rngs, criterion_outputs, targets)
    return jnp.mean(totals), jax.tree.map(jnp.mean, terms)



class SegmenterTask(_Task):
  """The segmenter trains (backbone lr x0.1, frozen BatchNorm), per frame, with Eq. 13 (SPEC 6)."""

  def init_params(self, rng):
    init = self.config.get("init_checkpoint", "")
    params = load_init_params(init)["segmenter"] if init else init_segmenter_params(self.config, rng)
    return params, {}

  def loss(self, trainable, frozen, batch, rngs, step):
    del frozen
    seg = _segmenter_forward(self.config, trainable, batch["frames"], batch["pixel_valid"])
    outputs = dict(pred_logits=seg["pred_logits"], pred_masks=seg["pred_masks"],
                   embeddings=seg["pred_embds"],
                   aux=[dict(pred_logits=a["pred_logits"], pred_masks=a["pred_masks"])
                        for a in seg["aux_outputs"]])
    targets = losses.targets_from_batch(batch)
    num_masks = self._num_masks(jax.vmap(losses.segmenter_mask_count)(targets))
    per_video = jax.vmap(lambda k, o, t: losses.segmenter_criterion(
        jax.random.wrap_key_data(k), o, t, num_masks, self.loss_config))
    totals, terms = per_video(rngs, outputs, targets)
    return jnp.mean(totals), jax.tree.map(jnp.mean, terms)


TASKS = {"tracker": TrackerTask, "segmenter": SegmenterTask}


def build_task(config: ml_collections.ConfigDict, workdir: Optional[str] = None):
  name = config.train.task
  if name not in TASKS:
    raise ValueError(f"config.train.task={name!r}; expected one of {sorted(TASKS)}")
  return TASKS[name](config, workdir)


def export(directory: str, config: ml_collections.ConfigDict, params: Dict[str, Any]) -> str:
  """Writes params ({'segmenter', 'tracker'?}) + config as a converted-checkpoint directory (the format
  of scripts/convert_checkpoint.py), replacing an older export only once the new one is complete."""
  import shutil
  from o2vis_jax.checkpoint_conversion import save_converted
  directory = os.path.abspath(directory)
  staging = directory + ".incomplete"
  shutil.rmtree(staging, ignore_errors=True)
  save_converted(staging, config, jax.device_get(params))
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.replace(staging, directory)
  return directory


def _stage_config(config, task: str, **train_overrides) -> ml_collections.ConfigDict:
  stage = config.copy_and_resolve_references()
  stage.train.task = task
  for key, value in train_overrides.items():
    if key == "num_train_steps":
      stage.num_train_steps = value
    else:
      stage.train[key] = value
  return stage


def run_training(config: ml_collections.ConfigDict, workdir: str, progress: bool = True) -> str:
  """Runs `config.train.task` in `workdir` and exports the result to WORKDIR/export; returns its path.

  'segmenter' / 'tracker': one stage. 'segmenter+tracker' (training from scratch, SPEC 6 then 5): the
  segmenter for `train.segmenter_steps` in WORKDIR/segmenter (exported to WORKDIR/segmenter/export), then
  the trackers on it for `num_train_steps` in WORKDIR/tracker. Each stage resumes from its checkpoints.
  """
  from o2vis_jax import train
  task_name = config.train.task
  if task_name == "segmenter+tracker":
    t = config.train
    seg_config = _stage_config(config, "segmenter", num_train_steps=t.segmenter_steps,
                               learning_rate=t.get("segmenter_learning_rate", t.learning_rate),
                               decay_steps=t.get("segmenter_decay_steps", t.decay_steps))
    seg_state = train.train_and_evaluate(seg_config, os.path.join(workdir, "segmenter"),
                                         SegmenterTask(seg_config, workdir), progress=progress)
    seg_export = export(os.path.join(workdir, "segmenter", "export"), seg_config,
                        {"segmenter": seg_state.params})
    tracker_config = _stage_config(config, "tracker")
    tracker_config.init_checkpoint = seg_export
    tracker_config.init_tracker = False
    state = train.train_and_evaluate(tracker_config, os.path.join(workdir, "tracker"),
                                     TrackerTask(tracker_config, workdir), progress=progress)
    params = {"segmenter": load_init_params(seg_export)["segmenter"], "tracker": state.params}
    return export(os.path.join(workdir, "export"), tracker_config, params)
  task = build_task(config, workdir)
  state = train.train_and_evaluate(config, workdir, task, progress=progress)
  if task_name == "segmenter":
    params = {"segmenter": state.params}
  else:
    frozen = task.init_params(jax.random.PRNGKey(config.seed))[1]
    params = {"segmenter": frozen["segmenter"], "tracker": state.params}
  return export(os.path.join(workdir, "export"), config, params)
