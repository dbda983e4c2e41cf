"""The Mask2Former set loss of one video (CE, BCE and dice on points) and its targets and normalisation.

One video, static shapes: G padded GT tracks with validity, T frames with validity. An assignment is
`query_of_gt` (int32, -1 = unmatched), [G] for a clip or [T, G] per frame (`losses.assignment`).
"""

from typing import Any, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from o2vis_jax.losses import point_sampling
from o2vis_jax.losses.config import LossConfig

Outputs = Dict[str, Any]   # a criterion's predictions of one video (pred_logits, pred_masks, aux, ...).


# ------------------------------------------------------------------------------------------------
# Targets of one video.

class VideoTargets(NamedTuple):
  """Ground truth of one clip, padded to G tracks.

  labels: int32 [T, G] class per frame (the clip label at every frame; the paper's T_E rule edits frames).
  masks: [T, G, H, W] bool or float at padded image resolution, all zero where absent.
  present: bool [T, G], the GT has a mask at t ("id_t != -1"), already and-ed with GT and frame validity.
  frame_valid: bool [T].
  """
  labels: jax.Array
  masks: jax.Array
  present: jax.Array
  frame_valid: jax.Array


def video_targets(labels, instance_valid, masks, present, frame_valid) -> VideoTargets:
  """VideoTargets from the input pipeline's fields of one video: labels [G], instance_valid [G],
  masks [T, G, H, W], present [T, G], frame_valid [T]."""
  num_frames = masks.shape[0]
  present = present & instance_valid[None, :] & frame_valid[:, None]
  labels = jnp.broadcast_to(labels.astype(jnp.int32)[None, :], (num_frames,) + labels.shape)
  return VideoTargets(labels, masks, present, frame_valid)


def targets_from_batch(batch: Dict[str, jax.Array]) -> VideoTargets:
  """Batched VideoTargets [B, ...] from a training batch (labels, instance_valid, masks, present,
  frame_valid; see the data contract in the input pipeline)."""
  for field in ("labels", "instance_valid", "masks", "present", "frame_valid"):
    if field not in batch:
      raise KeyError(f"losses.targets_from_batch: the training batch has no field {field!r} "
                     f"(has {sorted(batch)})")
  return jax.vmap(video_targets)(batch["labels"], batch["instance_valid"], batch["masks"],
                                 batch["present"], batch["frame_valid"])


def tracker_mask_count(targets: VideoTargets) -> jax.Array:
  """The reference's num_masks of one clip: every GT appearing in the clip counts at every valid frame."""
  in_clip = jnp.any(targets.present, axis=0)
  return jnp.sum(targets.frame_valid).astype(jnp.float32) * jnp.sum(in_clip).astype(jnp.float32)


def segmenter_mask_count(targets: VideoTargets) -> jax.Array:
  """Mask2Former's num_masks of one clip seen as T images: the GTs present at each frame."""
  return jnp.sum(targets.present).astype(jnp.float32)


def average_num_masks(counts: jax.Array, axis_name: Optional[str] = None) -> jax.Array:
  """Global mean per video of `counts` [B] (over the devices of `axis_name` too), at least 1."""
  total, videos = jnp.sum(counts), jnp.asarray(counts.size, jnp.float32)
  if axis_name is not None:
    total, videos = jax.lax.psum(total, axis_name), jax.lax.psum(videos, axis_name)
  return jnp.maximum(total / videos, 1.0)


# ------------------------------------------------------------------------------------------------
# The set loss of one prediction set.

def target_classes(query_of_gt: jax.Array, pair_valid: jax.Array, labels: jax.Array,
                   num_queries: int, no_object: int) -> jax.Array:
  """Per-frame class target of every query [T, N]: the matched GT's label, else no-object.

  query_of_gt int [T, G]; pair_valid bool [T, G]; labels int [T, G]."""
  hit = (query_of_gt[..., None] == jnp.arange(num_queries)) & pair_valid[..., None]   # [T, G, N]
  label = jnp.sum(jnp.where(hit, labels[..., None], 0), axis=-2)
  return jnp.where(jnp.any(hit, axis=-2), label, no_object).astype(jnp.int32)


def classification_loss(pred_logits: jax.Array, classes: jax.Array, frame_valid: jax.Array,
                        no_object_weight: float) -> jax.Array:
  """Weighted cross-entropy over all valid (frame, query) pairs: sum w_y nll / sum w_y, w = 1 for
  classes and `no_object_weight` for no-object (the last class); logits in float32."""
  logits = pred_logits.astype(jnp.float32)
  no_object = logits.shape[-1] - 1
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, classes[..., None], axis=-1)[..., 0]
  weight = jnp.where(classes == no_object, no_object_weight, 1.0) * frame_valid[:, None]
  total = jnp.sum(weight)
  return jnp.where(total > 0, jnp.sum(weight * nll) / jnp.where(total > 0, total, 1.0), 0.0)


def point_mask_losses(point_logits: jax.Array, point_labels: jax.Array,
                      pair_weight: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Sums over pairs of sigmoid BCE (mean over points) and dice (+1 smoothing).

  point_logits, point_labels: [M, P]; pair_weight: [M] (0 for padding pairs)."""
  bce = jnp.mean(jax.nn.softplus(point_logits) - point_logits * point_labels, axis=-1)
  scores = jax.nn.sigmoid(point_logits)
  dice = 1.0 - (2.0 * jnp.sum(scores * point_labels, -1) + 1.0) / (
      jnp.sum(scores, -1) + jnp.sum(point_labels, -1) + 1.0)
  return jnp.sum(pair_weight * bce), jnp.sum(pair_weight * dice)


def mask_losses(key: jax.Array, pred_masks: jax.Array, gt_masks: jax.Array, query_of_gt: jax.Array,
                pair_valid: jax.Array, num_masks: jax.Array,
                config: LossConfig) -> Tuple[jax.Array, jax.Array]:
  """BCE and dice of the matched pairs on uncertainty-sampled points, each / num_masks.

  pred_masks [T, N, h, w] logits; gt_masks [T, G, H, W]; query_of_gt int [T, G]; pair_valid bool [T, G].
  Pair (t, g)'s points: row t * G + g of `uncertain_point_coords(key, ...)` over the gathered logits.
  """
  num_frames, num_gts = query_of_gt.shape
  query = jnp.clip(query_of_gt, 0, pred_masks.shape[1] - 1)
  src = jnp.take_along_axis(pred_masks, query[:, :, None, None], axis=1).astype(jnp.float32)
  src = src.reshape((num_frames * num_gts,) + src.shape[2:])
  tgt = gt_masks.reshape((num_frames * num_gts,) + gt_masks.shape[2:])
  coords = point_sampling.uncertain_point_coords(
      key, src, config.num_points, config.oversample_ratio, config.importance_sample_ratio)
  point_labels = jax.lax.stop_gradient(point_sampling.point_sample(tgt.astype(jnp.float32), coords))
  point_logits = point_sampling.point_sample(src, coords)
  bce, dice = point_mask_losses(point_logits, point_labels, pair_valid.reshape(-1).astype(jnp.float32))
  return bce / num_masks, dice / num_masks


def set_loss(key: jax.Array, pred_logits: jax.Array, pred_masks: jax.Array, targets: VideoTargets,
             query_of_gt: jax.Array, num_masks: jax.Array, config: LossConfig,
             suffix: str = "") -> Dict[str, jax.Array]:
  """loss_ce / loss_mask / loss_dice (+ suffix) of one prediction set [T, N, ...] and an assignment.

  query_of_gt: [G] (clip-level, the pair holds at every valid frame, also where the GT is absent and its
  target mask is empty) or [T, G] (per frame)."""
  num_frames, num_queries = pred_logits.shape[:2]
  query_of_gt = jnp.broadcast_to(query_of_gt, (num_frames, targets.labels.shape[-1]))
  pair_valid = (query_of_gt >= 0) & targets.frame_valid[:, None]
  classes = target_classes(query_of_gt, pair_valid, targets.labels, num_queries,
                           pred_logits.shape[-1] - 1)
  bce, dice = mask_losses(key, pred_masks, targets.masks, query_of_gt, pair_valid, num_masks, config)
  return {"loss_ce" + suffix: classification_loss(pred_logits, classes, targets.frame_valid,
                                                   config.no_object_weight),
          "loss_mask" + suffix: bce, "loss_dice" + suffix: dice}


def weighted_total(terms: Dict[str, jax.Array], config: LossConfig) -> jax.Array:
  """A criterion's total: the sum of its terms, each times `config.weight_of(name)`."""
  return sum(config.weight_of(name) * value for name, value in terms.items())
