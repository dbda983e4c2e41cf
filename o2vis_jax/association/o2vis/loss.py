"""The O2VIS trackers' criterion of one clip: T_A's set loss on the first-appearance consistent
assignment (Eq. 10), T_E's set loss on the modified targets (Eq. 10, REFERENCE.md 7.3) and L_sim (Eq. 11),
weighted into Eq. 12 (REFERENCE.md 7.2-7.4), with early training's assignment (Eq. 14, REFERENCE.md 7.4).

The shared pieces (set loss, assignment, targets, normalisation) are `o2vis_jax.losses`; batching is
`losses.mean_over_videos`.
"""

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from o2vis_jax.losses import assignment
from o2vis_jax.losses.config import RULES, LossConfig
from o2vis_jax.losses.set_prediction import Outputs, VideoTargets, set_loss, weighted_total


# ------------------------------------------------------------------------------------------------
# T_E's targets and L_sim.

def _exclusive_cumulative_any(flags: jax.Array) -> jax.Array:
  """[T, ...] -> [T, ...]: whether any earlier frame (tau < t) has the flag."""
  counts = jnp.cumsum(flags.astype(jnp.int32), axis=0) - flags.astype(jnp.int32)
  return counts > 0


def reference_sim_targets(targets: VideoTargets, query_of_gt: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """The reference's per-frame similarity targets (REFERENCE.md 7.3) -> (positive, judged) bool [T, G].

  judged: matched pairs at valid frames t >= 1. A judged pair is positive when its id at t occurred
  among the ids of the matched GTs at earlier frames; ids are unique per track, so a present GT is
  positive iff it was present before, and an absent one (id -1) iff any matched GT was absent before.
  """
  num_frames = targets.present.shape[0]
  matched = query_of_gt >= 0
  present = targets.present
  judged = (matched[None, :] & targets.frame_valid[:, None]
            & (jnp.arange(num_frames) >= 1)[:, None])
  seen_before = _exclusive_cumulative_any(present)
  matched_absent = jnp.any(matched[None, :] & ~present & targets.frame_valid[:, None], axis=1)
  absent_before = _exclusive_cumulative_any(matched_absent)
  positive = jnp.where(present, seen_before, absent_before[:, None])
  return positive & judged, judged


def modified_targets(targets: VideoTargets, query_of_gt: jax.Array, no_object: int,
                     rule: str = "reference") -> VideoTargets:
  """T_E's targets y-ring of Eq. 10.

  'reference' (REFERENCE.md 7.3): for every negative pair (k, t) of `reference_sim_targets`, every GT
  with the same id at t (the GT itself, or every GT absent at t when the id is -1) gets the no-object
  label at every frame of the clip, and its mask zeroed at frame t only.
  'paper' (Eq. 10 text): a GT that first appears at frame f >= 1 is no-object with a zero mask at f only.
  """
  present = targets.present
  num_frames = present.shape[0]
  if rule == "reference":
    positive, judged = reference_sim_targets(targets, query_of_gt)
    negative = judged & ~positive
    negative_absent_frame = jnp.any(negative & ~present, axis=1)                # id -1 is negative at t
    cleared = (negative & present) | (negative_absent_frame[:, None] & ~present)  # [T, G]
    relabel = jnp.any(cleared, axis=0)[None, :]                                 # clip-wide
  elif rule == "paper":
    first = assignment.first_appearance(present)
    cleared = (first[None, :] == jnp.arange(num_frames)[:, None]) & (first[None, :] >= 1)
    relabel = cleared                                                           # that frame only
  else:
    raise ValueError(f"association.o2vis.loss.modified_targets: rule must be one of {RULES}, "
                     f"got {rule!r}")
  labels = jnp.where(relabel, no_object, targets.labels).astype(jnp.int32)
  masks = jnp.where(cleared[:, :, None, None], jnp.zeros((), targets.masks.dtype), targets.masks)
  return targets._replace(labels=labels, masks=masks)


def _gather_slots(values: jax.Array, query_of_gt: jax.Array) -> jax.Array:
  """values [T, N] at each GT's query -> [T, G] (unmatched GTs read slot 0; mask them)."""
  query = jnp.clip(query_of_gt, 0, values.shape[1] - 1)
  return jnp.take(values, query, axis=1)


def similarity_loss_reference(similarity: jax.Array, targets: VideoTargets,
                              query_of_gt: jax.Array) -> jax.Array:
  """L_sim as the reference computes it (REFERENCE.md 7.3):
  (1/T) sum_{t>=1} [mean_{pos} (s_t[q_k] - 1)^2 + mean_{neg} s_t[q_k]^2], each mean only if non-empty;
  a result of exactly 0 or NaN becomes 0. similarity: [T, N], the anchor weight s of every slot."""
  positive, judged = reference_sim_targets(targets, query_of_gt)
  negative = judged & ~positive
  s = _gather_slots(similarity.astype(jnp.float32), query_of_gt)
  def masked_mean(values, mask):
    count = jnp.sum(mask, axis=1)
    return jnp.where(count > 0, jnp.sum(jnp.where(mask, values, 0.0), axis=1) / jnp.maximum(count, 1), 0.0)
  per_frame = masked_mean((s - 1.0) ** 2, positive) + masked_mean(s ** 2, negative)
  loss = jnp.sum(per_frame) / jnp.maximum(jnp.sum(targets.frame_valid), 1)
  return jnp.where((loss == 0) | jnp.isnan(loss), 0.0, loss)


def similarity_loss_paper(similarity: jax.Array, prev_occupied: jax.Array, targets: VideoTargets,
                          query_of_gt: jax.Array) -> jax.Array:
  """L_sim of Eq. 11: (1/(T N_GT)) sum_{t>=1} sum_n (sim_t[phi(n)] - O_{t-1}[phi(n)])^2 over the matched
  GTs n. similarity [T, N]; prev_occupied bool [T, N], the occupancy of each slot before frame t."""
  num_frames = similarity.shape[0]
  matched = query_of_gt >= 0
  counted = (matched[None, :] & targets.frame_valid[:, None]
             & (jnp.arange(num_frames) >= 1)[:, None])
  s = _gather_slots(similarity.astype(jnp.float32), query_of_gt)
  occupied = _gather_slots(prev_occupied.astype(jnp.float32), query_of_gt)
  total = jnp.sum(jnp.where(counted, (s - occupied) ** 2, 0.0))
  norm = jnp.maximum(jnp.sum(targets.frame_valid), 1) * jnp.maximum(jnp.sum(matched), 1)
  return total / norm


# ------------------------------------------------------------------------------------------------
# The criterion.

def tracker_criterion(key: jax.Array, outputs: Outputs, targets: VideoTargets, num_masks: jax.Array,
                      config: LossConfig,
                      matcher_outputs: Optional[Outputs] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """The trackers' loss of one clip, Eq. 10-12 (REFERENCE.md 7.2-7.4) -> (total, terms).

  outputs (per video): pred_logits [T, N, K+1] and pred_masks [T, N, h, w] of T_A's last block; aux: list
  of dicts {pred_logits, pred_masks} of T_A's earlier blocks; pred_logits_E, pred_masks_E, aux_E likewise
  for T_E; similarity [T, N] (the anchor's s; frame 0 unused); prev_occupied bool [T, N] (the slot
  occupancy before frame t; only for config.sim_rule == 'paper').
  matcher_outputs: early training (Eq. 14, REFERENCE.md 7.4): {pred_logits, pred_masks} of the segmenter
  re-ordered by the tracker's sigma; the main assignment is made on them and reused, without re-matching,
  for every prediction set. None: T_A's last block makes it and each aux set is re-matched.
  Terms: loss_{ce,mask,dice}[_i] (T_A), loss_{ce,mask,dice}_E[_i] (T_E), loss_sim.
  """
  if config.sim_rule == "paper" and "prev_occupied" not in outputs:
    raise KeyError("association.o2vis.loss.tracker_criterion: sim_rule 'paper' (Eq. 11) needs "
                   "outputs['prev_occupied'] [T, N], the slot occupancy before each frame")
  no_object = outputs["pred_logits"].shape[-1] - 1
  aux, aux_e = outputs.get("aux", []), outputs.get("aux_E", [])
  key_main, key_e, key_aux = jax.random.split(key, 3)
  aux_keys = jax.random.split(key_aux, max(len(aux) + len(aux_e), 1))

  split = lambda index: jax.random.split(aux_keys[index])      # (match key, loss key) of aux set index

  def assignments(indices, main, set_targets, fixed):
    """query_of_gt of the aux sets `indices` (and of `main` first, when given): `fixed` reused (early
    training), or all of them matched in one matcher call (one host callback per group, issue 18)."""
    if fixed is not None:
      return [fixed] * len(indices)
    sets = ([main] if main is not None else []) + [all_aux[i] for i in indices]
    keys = ([main_match_key] if main is not None else []) + [split(i)[0] for i in indices]
    queries = assignment.video_assignments(keys, sets, set_targets, config)
    return [queries[j] for j in range(queries.shape[0])]

  all_aux = list(aux) + list(aux_e)
  main_match_key, loss_key = jax.random.split(key_main)
  aux_indices, aux_e_indices = list(range(len(aux))), list(range(len(aux), len(aux) + len(aux_e)))
  if matcher_outputs is not None:
    query_of_gt = assignment.video_assignment(main_match_key, matcher_outputs["pred_logits"],
                                              matcher_outputs["pred_masks"], targets, config)
    fixed = query_of_gt
    aux_queries = assignments(aux_indices, None, targets, fixed)
  else:
    fixed = None
    query_of_gt, *aux_queries = assignments(aux_indices, outputs, targets, None)

  terms = set_loss(loss_key, outputs["pred_logits"], outputs["pred_masks"], targets, query_of_gt,
                   num_masks, config)
  for i, (preds, query) in enumerate(zip(aux, aux_queries)):
    terms.update(set_loss(split(i)[1], preds["pred_logits"], preds["pred_masks"], targets, query,
                          num_masks, config, f"_{i}"))

  targets_e = modified_targets(targets, query_of_gt, no_object, config.target_rule)
  terms.update(set_loss(key_e, outputs["pred_logits_E"], outputs["pred_masks_E"], targets_e,
                        query_of_gt, num_masks, config, "_E"))
  aux_e_queries = assignments(aux_e_indices, None, targets_e, fixed) if aux_e_indices else []
  for i, (preds, query) in enumerate(zip(aux_e, aux_e_queries)):
    terms.update(set_loss(split(len(aux) + i)[1], preds["pred_logits"], preds["pred_masks"], targets_e,
                          query, num_masks, config, f"_E_{i}"))

  if config.sim_rule == "reference":
    terms["loss_sim"] = similarity_loss_reference(outputs["similarity"], targets, query_of_gt)
  else:
    terms["loss_sim"] = similarity_loss_paper(outputs["similarity"], outputs["prev_occupied"], targets,
                                              query_of_gt)
  return weighted_total(terms, config), terms


def tracker_outputs_from_track(track_outputs: Outputs) -> Outputs:
  """`tracker_criterion`'s `outputs` from the per-frame outputs of the association driver,
  `association.track(..., train=True)`, of the o2vis method.

  aux_logits [(B,) T, L-1, N, K+1] / aux_masks [(B,) T, L-1, N, h, w] (and the _E ones) become the lists
  `aux` / `aux_E` of L-1 dicts; prev_occupied [(B,) T, N] is `occupied` shifted one frame (False at 0).
  """
  def layers(logits, masks):
    return [{"pred_logits": jnp.take(logits, i, axis=-3), "pred_masks": jnp.take(masks, i, axis=-4)}
            for i in range(logits.shape[-3])]
  out = {name: track_outputs[name] for name in ("pred_logits", "pred_masks", "pred_logits_E",
                                                 "pred_masks_E", "similarity") if name in track_outputs}
  if "aux_logits" in track_outputs:
    out["aux"] = layers(track_outputs["aux_logits"], track_outputs["aux_masks"])
  out["aux_E"] = layers(track_outputs["aux_logits_E"], track_outputs["aux_masks_E"])
  if "occupied" in track_outputs:
    occupied = track_outputs["occupied"]
    out["prev_occupied"] = jnp.concatenate(
        [jnp.zeros_like(occupied[..., :1, :]), occupied[..., :-1, :]], axis=-2)
  return out
