"""DVIS-DAQ's training frame step (reference/dvis_daq.md "Training"; TM:304-476 `VideoInstanceCutter.forward`,
MT:65-165 `NewInsHungarianMatcher`) on the same slot table as inference.

The ground truth of the frame comes in the frame (`Method.training_inputs`): gt_labels [G], gt_masks
[G, H, W], gt_present [G] and train_key (raw key data).

Per frame: tracker 1 on [S slot rows; N emergence rows] (frame 0: the segmenter's queries); the assignment
of the GT to rows (`historical_matching`: the tracks keep their GT, new GT are matched by Hungarian to the
emergence rows only; frame 0: the Hungarian of the SEGMENTER's predictions, MA's `frames_info['indices']`);
the slot branch on [tracks; background slots] with the previous frame's (track, GT) pairs as its targets and,
in stage 3 with more than 3 tracked GT, one of them hidden from its cross-attention (disappearance
simulation); then the next frame's tracks: stage 2, the matched rows minus the lower-scoring half
(emergence simulation); stage 3, the rows with fg > training_select_threshold. Rows that do not become
tracks are dropped (no invalid-frame counting in training). A dead slot is free again at once (training
clips have no video-level output); births beyond S are counted in `num_dropped`.

Deviations, all static-shape choices: the matcher's points are uniform from the frame's key (the reference
draws torch.rand); the disappearance simulation masks the segmenter queries whose lowest-cost GT is the
hidden one among the queries with fg > aux threshold (the reference's `aux_indices` of its FrameMatcher).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from o2vis_jax.association.dvis_daq import config as config_lib
from o2vis_jax.association.dvis_daq import step as step_lib
from o2vis_jax.association.ops import hungarian as hungarian_lib
from o2vis_jax.losses import assignment, point_sampling

def historical_matching(cost, track_gt, track_live, gt_present, row_is_emergence, matcher="host"):
  """NewInsHungarianMatcher (MT:65-165): the GT of every row.

  cost [G, R] (GT x rows); track_gt int [S] (the GT each slot row tracks, -1 none) and track_live [S] for
  the first S rows; gt_present [G]; row_is_emergence [R]. Tracked GT keep their row (historical matching,
  also when absent from this frame); the present GT no track holds are Hungarian-matched to emergence
  rows only. Returns row_of_gt int [G] (-1: unmatched)."""
  num_slots = track_gt.shape[0]
  num_gt = cost.shape[0]
  held = track_live[None, :] & (track_gt[None, :] == jnp.arange(num_gt)[:, None])      # [G, S]
  tracked = jnp.any(held, axis=1)
  tracked_row = jnp.argmax(held, axis=1)
  new_gt = gt_present & ~tracked
  assigned = hungarian_lib.hungarian(jax.lax.stop_gradient(cost), new_gt, row_is_emergence, matcher=matcher)
  del num_slots
  return jnp.where(tracked, tracked_row, jnp.where(new_gt, assigned, -1)).astype(jnp.int32)


def _match_cost(key, logits, masks, frame, weights):
  """Cost [G, R] of the matcher (CE / BCE / dice on the same uniform points for every mask)."""
  points = point_sampling.uniform_point_coords(key, (weights.num_points,))
  return assignment.match_cost(logits, masks, frame["gt_labels"], frame["gt_masks"], points,
                               weights.costs)


def training_step(module, options: config_lib.Options, section, stage: int, query_feat, state, frame,
                  weights):
  """One training frame -> (state, outputs for `loss.daq_criterion`)."""
  num_slots = state.live.shape[0]
  started = state.started
  match_key, disappear_key = jax.random.split(jax.random.wrap_key_data(frame["train_key"]))
  layers, row_valid = step_lib.tracker_layers(module, state, frame)
  # Predictions of the input rows too (ms_outputs[0] is the input, TM:327/343): L + 1 sets.
  inputs = jnp.concatenate([state.track_queries, jnp.where(
      started, jnp.broadcast_to(module.emergence_query(), frame["embeds"].shape), frame["embeds"])])
  all_rows = jnp.concatenate([inputs[None], layers])
  projected = module.project_features(frame["mask_features"])
  logits, masks = module.predict(all_rows, projected)                     # [L+1, R, ...]
  last_logits, last_masks = logits[-1], masks[-1]
  num_rows = last_logits.shape[0]
  row_is_emergence = jnp.arange(num_rows) >= num_slots
  row_valid = row_valid & (started | row_is_emergence)

  # Assignment: frame 0 the segmenter's predictions (its rows are the emergence rows), later the tracker's.
  pad = lambda x: jnp.concatenate([jnp.zeros((num_slots,) + x.shape[1:], x.dtype), x])
  cost = jnp.where(started, _match_cost(match_key, last_logits, last_masks, frame, weights),
                   _match_cost(match_key, pad(frame["logits"]), pad(frame["masks"]), frame, weights))
  live = state.live & started
  row_of_gt = historical_matching(cost, state.track_gt, live, frame["gt_present"], row_is_emergence,
                                  options.matcher)
  pair_valid = (row_of_gt >= 0) & frame["gt_present"]

  # Slot branch (frames >= 1) with the previous frame's pairs; disappearance simulation in stage 3.
  prev_pairs = live & (state.track_gt >= 0)
  num_prev = jnp.sum(prev_pairs)
  pick = jax.random.randint(disappear_key, (), 0, jnp.maximum(num_prev, 1))
  chosen_slot = jnp.argmax(jnp.cumsum(prev_pairs) == pick + 1)
  hidden_gt = jnp.where((stage == 3) & (num_prev > 3), state.track_gt[chosen_slot], -1)
  segmenter_cost = _match_cost(match_key, frame["logits"], frame["masks"], frame, weights)   # [G, N]
  segmenter_cost = jnp.where(frame["gt_present"][:, None], segmenter_cost, jnp.inf)
  aux_gt = jnp.where(step_lib.foreground_score(frame["logits"]) > options.aux_inference_select_threshold,
                     jnp.argmin(segmenter_cost, axis=0), -1)
  keys_visible = (aux_gt != hidden_gt) | (hidden_gt < 0)
  slot_layers = step_lib.run_slot_branch(module, options, state, frame, query_feat,
                                         memory_mask=keys_visible[None, None, :])
  slot_logits, slot_masks = module.predict(slot_layers, projected)          # [L, S+B, ...]
  num_gt = row_of_gt.shape[0]
  slot_held = prev_pairs[None, :] & (state.track_gt[None, :] == jnp.arange(num_gt)[:, None])
  slot_of_gt = jnp.where(jnp.any(slot_held, axis=1), jnp.argmax(slot_held, axis=1), -1).astype(jnp.int32)
  slot_pair_valid = (slot_of_gt >= 0) & frame["gt_present"] & (jnp.arange(num_gt) != hidden_gt)
  slot_row_valid = jnp.concatenate([live, jnp.ones((slot_logits.shape[1] - num_slots,), bool)])

  # The next frame's tracks (TM:409-441).
  gt_of_row = jnp.full((num_rows,), -1, jnp.int32).at[jnp.where(row_of_gt >= 0, row_of_gt, num_rows)].set(
      jnp.arange(num_gt, dtype=jnp.int32), mode="drop")
  foreground = step_lib.foreground_score(jax.lax.stop_gradient(last_logits))
  if stage == 2:
    matched = (gt_of_row >= 0) & row_valid
    num_matched = jnp.sum(matched)
    # rank among the matched rows by score (ascending, ties by row): the lower half is kicked out
    score_key = jnp.where(matched, foreground, jnp.inf)
    order = jnp.argsort(score_key, stable=True)
    rank = jnp.zeros((num_rows,), jnp.int32).at[order].set(jnp.arange(num_rows, dtype=jnp.int32))
    activated = matched & (rank >= num_matched // 2)
  else:
    activated = (foreground > section.training_select_threshold) & row_valid
  new_state = _next_tracks(module, state, frame, activated, gt_of_row, layers[-1], last_masks)
  outputs = dict(rows_logits_all=logits, rows_masks_all=masks, row_valid=row_valid, row_of_gt=row_of_gt,
                 pair_valid=pair_valid, slot_logits_all=slot_logits, slot_masks_all=slot_masks,
                 slot_row_valid=slot_row_valid & started, slot_of_gt=slot_of_gt,
                 slot_pair_valid=slot_pair_valid & started)
  return new_state, outputs


def _next_tracks(module, state, frame, activated, gt_of_row, last, last_masks):
  """Activated slot rows stay; activated emergence rows take free slots (dead ones are free again in
  training); the rest die. Positions updated for every activated row (TM:443-456)."""
  num_slots = state.live.shape[0]
  stays = activated[:num_slots] & state.live & state.started
  new_rows = activated[num_slots:]
  free = ~stays
  rank = jnp.cumsum(new_rows.astype(jnp.int32)) - 1
  free_slots = jnp.argsort(jnp.where(free, 0, num_slots) + jnp.arange(num_slots))
  placed = new_rows & (rank < jnp.sum(free))
  target = jnp.where(placed, free_slots[jnp.clip(rank, 0, num_slots - 1)], num_slots)
  source = jnp.full((num_slots,), -1, jnp.int32).at[target].set(
      jnp.arange(new_rows.shape[0], dtype=jnp.int32), mode="drop")
  born = source >= 0
  row = jnp.where(born, num_slots + source, jnp.arange(num_slots))
  positions = module.position(last_masks, frame["mask_features"])
  keep = stays | born
  pos_count = jnp.where(born, 0, state.pos_count)
  fused_pos, pos_history, pos_count = step_lib.update_positions(
      state.fused_pos, state.pos_history, pos_count, jnp.take(positions, row, axis=0), keep)
  return state._replace(
      track_queries=jnp.where(keep[:, None], jnp.take(last, row, axis=0), state.track_queries),
      fused_pos=fused_pos, pos_history=pos_history, pos_count=pos_count, live=keep,
      occupied=keep, invalid_frames=jnp.zeros_like(state.invalid_frames),
      track_gt=jnp.where(keep, jnp.take(gt_of_row, row), -1),
      num_dropped=state.num_dropped + jnp.sum(new_rows & ~placed, dtype=jnp.int32),
      started=jnp.ones_like(state.started))


TRAINING_INPUTS = ("gt_labels", "gt_masks", "gt_present", "train_key")


class MatcherOptions(NamedTuple):
  # A string annotation: `losses.assignment` may still be initialising when this package is imported
  # (it imports `association.ops`, whose package imports the methods).
  costs: "assignment.CostWeights"
  num_points: int


def cost_weights(config) -> MatcherOptions:
  """The matcher's cost weights (the loss weights 2 / 5 / 5) and points (TRAIN_NUM_POINTS)."""
  return MatcherOptions(assignment.CostWeights.of(config), int(config.num_points))


def training_inputs(targets, keys):
  """The per-frame ground truth the training step reads, from batched `losses.VideoTargets` [B, T, ...]
  and the videos' keys [B] (raw key data or typed): gt_labels, gt_masks, gt_present, train_key [B, T, ...]."""
  if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.wrap_key_data(keys)
  num_frames = targets.labels.shape[1]
  frame_keys = jax.vmap(lambda k: jax.random.key_data(jax.random.split(jax.random.fold_in(k, 7), num_frames)))(keys)
  return dict(gt_labels=targets.labels, gt_masks=targets.masks, gt_present=targets.present,
              train_key=frame_keys)
