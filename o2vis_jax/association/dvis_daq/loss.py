"""DVIS-DAQ's criterion (reference/dvis_daq.md "Training"; CR `DAQCriterion`, MA:135-160 and 329-340):
CE (no-object 0.1) / BCE / dice on uncertainty-sampled points, weights 2 / 5 / 5, on every prediction set
of tracker 1 (the input rows and the L layers, all frames) and of the slot branch (the L layers, frames
>= 1, the previous frame's (track, GT) pairs as targets). CE averages over the rows of all frames (the
reference concatenates the frames' rows); the masks are summed over the matched pairs / num_masks.
Stage 2 trains on the first `using_frame_num[0]` frames of the clip (2-frame clips).
"""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from o2vis_jax import losses
from o2vis_jax.losses import set_prediction


def _set_terms(key, logits, masks, row_valid, row_of_gt, pair_valid, targets, frame_valid, num_masks,
               config: losses.LossConfig, suffix: str) -> Dict[str, jax.Array]:
  """One prediction set over the clip: logits [T, R, K+1], masks [T, R, h, w], row_valid [T, R],
  row_of_gt / pair_valid [T, G]."""
  pair_valid = pair_valid & frame_valid[:, None]
  num_rows = logits.shape[1]
  classes = set_prediction.target_classes(row_of_gt, pair_valid, targets.labels, num_rows, logits.shape[-1] - 1)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, classes[..., None], axis=-1)[..., 0]
  weight = (jnp.where(classes == logits.shape[-1] - 1, config.no_object_weight, 1.0)
            * (row_valid & frame_valid[:, None]))
  total = jnp.sum(weight)
  ce = jnp.where(total > 0, jnp.sum(weight * nll) / jnp.where(total > 0, total, 1.0), 0.0)
  bce, dice = set_prediction.mask_losses(key, masks, targets.masks, row_of_gt, pair_valid, num_masks, config)
  return {"loss_ce" + suffix: ce, "loss_mask" + suffix: bce, "loss_dice" + suffix: dice}


def daq_criterion(key, outputs, targets, num_masks, config: losses.LossConfig, clip_frames: int
                  ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """The loss of one clip from `train_step.training_step`'s outputs stacked over time [T, ...]."""
  num_frames = outputs["row_valid"].shape[0]
  frame_valid = targets.frame_valid & (jnp.arange(num_frames) < clip_frames)
  terms = {}
  row_sets = outputs["rows_logits_all"].shape[1]          # [T, L+1, R, ...]
  slot_sets = outputs["slot_logits_all"].shape[1]         # [T, L, S+B, ...]
  keys = jax.random.split(key, row_sets + slot_sets)
  for i in range(row_sets):
    suffix = "" if i == row_sets - 1 else f"_{i}"
    terms.update(_set_terms(keys[i], outputs["rows_logits_all"][:, i], outputs["rows_masks_all"][:, i],
                            outputs["row_valid"], outputs["row_of_gt"], outputs["pair_valid"], targets,
                            frame_valid, num_masks, config, suffix))
  for i in range(slot_sets):
    suffix = "_slot" if i == slot_sets - 1 else f"_slot_{i}"
    terms.update(_set_terms(keys[row_sets + i], outputs["slot_logits_all"][:, i], outputs["slot_masks_all"][:, i],
                            outputs["slot_row_valid"], outputs["slot_of_gt"], outputs["slot_pair_valid"],
                            targets, frame_valid, num_masks, config, suffix))
  return set_prediction.weighted_total(terms, config), terms
