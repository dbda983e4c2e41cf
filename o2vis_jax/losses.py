"""Training losses: the Mask2Former set loss (CE, BCE, dice on points), the trackers' criterion
(Eq. 10-12, REFERENCE.md section 7) and the segmenter's per-frame criterion with the contrastive loss
(Eq. 13, SPEC section 6).

Everything works on one video (`jax.vmap` over the batch; `tracker_loss` / `segmenter_loss` do it) with
static shapes: G padded GT tracks with validity, T frames with validity. An assignment is `query_of_gt`
(int32, -1 = unmatched), [G] for a clip or [T, G] per frame (`video_matcher`).

Normalisation (REFERENCE.md 7.2): mask and dice losses are sums over matched (frame, GT) pairs divided by
`num_masks`, which the caller makes global: the mean over every video of every device of the per-video
count (`tracker_mask_count` / `segmenter_mask_count`, reduced by `average_num_masks`), at least 1. With
the per-video losses averaged over the batch and `pmean` over devices, this is the reference's
`sum / (all_reduce(num_masks) / world_size)` with one clip per GPU.
"""

import dataclasses
from typing import Any, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from o2vis_jax import point_sampling
from o2vis_jax import video_matcher

Outputs = Dict[str, Any]

RULES = ("reference", "paper")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss weights and options (REFERENCE.md section 10; SPEC sections 5, 6)."""
  class_weight: float = 2.0
  mask_weight: float = 5.0
  dice_weight: float = 5.0
  no_object_weight: float = 0.1
  sim_weight: float = 1.0
  contrastive_weight: float = 1.0
  num_points: int = 12544
  oversample_ratio: float = 3.0
  importance_sample_ratio: float = 0.75
  target_rule: str = "reference"   # T_E's modified targets: reference (REFERENCE.md 7.3) | paper (Eq. 10).
  sim_rule: str = "reference"      # L_sim: reference (REFERENCE.md 7.3) | paper (Eq. 11).
  matcher: str = "host"            # matching.hungarian: host | device.

  def __post_init__(self):
    for field in ("target_rule", "sim_rule"):
      if getattr(self, field) not in RULES:
        raise ValueError(f"LossConfig.{field} must be one of {RULES}, got {getattr(self, field)!r}")

  @property
  def cost_weights(self) -> video_matcher.CostWeights:
    return video_matcher.CostWeights(self.class_weight, self.mask_weight, self.dice_weight)

  def weight_of(self, name: str) -> float:
    """The weight of a named term: loss_ce* / loss_mask* / loss_dice* / loss_sim / loss_contrastive."""
    for prefix, weight in (("loss_ce", self.class_weight), ("loss_mask", self.mask_weight),
                           ("loss_dice", self.dice_weight), ("loss_sim", self.sim_weight),
                           ("loss_contrastive", self.contrastive_weight)):
      if name.startswith(prefix):
        return weight
    raise KeyError(f"losses: no weight for term {name!r}")


def loss_config_from(config) -> LossConfig:
  """LossConfig from an experiment config: `config.tracker.semantics` / `.matcher` and, when present, the
  fields of `config.loss` (same names as LossConfig) overriding them."""
  fields = {}
  tracker = config.get("tracker", None) if hasattr(config, "get") else None
  if tracker is not None:
    semantics = tracker.get("semantics", "reference")
    fields.update(target_rule=semantics, sim_rule=semantics, matcher=tracker.get("matcher", "host"))
  loss = config.get("loss", None) if hasattr(config, "get") else None
  if loss is not None:
    names = {f.name for f in dataclasses.fields(LossConfig)}
    fields.update({k: v for k, v in loss.items() if k in names})
  return LossConfig(**fields)


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


def video_assignment(key: jax.Array, pred_logits: jax.Array, pred_masks: jax.Array,
                     targets: VideoTargets, config: LossConfig) -> jax.Array:
  """The first-appearance consistent assignment (Eq. 10) of one prediction set -> query_of_gt [G]."""
  costs = video_matcher.clip_match_costs(key, pred_logits, pred_masks, targets.labels, targets.masks,
                                         config.num_points, config.cost_weights)
  return video_matcher.consistent_video_matching(costs, targets.present, config.matcher)


def frame_assignment(key: jax.Array, pred_logits: jax.Array, pred_masks: jax.Array,
                     targets: VideoTargets, config: LossConfig) -> jax.Array:
  """Mask2Former's per-image assignment at every frame -> query_of_gt [T, G]."""
  costs = video_matcher.clip_match_costs(key, pred_logits, pred_masks, targets.labels, targets.masks,
                                         config.num_points, config.cost_weights)
  return video_matcher.per_frame_matching(costs, targets.present, config.matcher)


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
    first = video_matcher.first_appearance(present)
    cleared = (first[None, :] == jnp.arange(num_frames)[:, None]) & (first[None, :] >= 1)
    relabel = cleared                                                           # that frame only
  else:
    raise ValueError(f"losses.modified_targets: rule must be one of {RULES}, got {rule!r}")
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
# Criteria.

def weighted_total(terms: Dict[str, jax.Array], config: LossConfig) -> jax.Array:
  return sum(config.weight_of(name) * value for name, value in terms.items())


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
    raise KeyError("losses.tracker_criterion: sim_rule 'paper' (Eq. 11) needs outputs['prev_occupied'] "
                   "[T, N], the slot occupancy before each frame")
  no_object = outputs["pred_logits"].shape[-1] - 1
  aux, aux_e = outputs.get("aux", []), outputs.get("aux_E", [])
  key_main, key_e, key_aux = jax.random.split(key, 3)
  aux_keys = jax.random.split(key_aux, max(len(aux) + len(aux_e), 1))

  def match_and_loss(index, preds, set_targets, fixed, suffix):
    match_key, loss_key = jax.random.split(aux_keys[index])
    query = fixed if fixed is not None else video_assignment(
        match_key, preds["pred_logits"], preds["pred_masks"], set_targets, config)
    return set_loss(loss_key, preds["pred_logits"], preds["pred_masks"], set_targets, query,
                    num_masks, config, suffix)

  match_key, loss_key = jax.random.split(key_main)
  source = matcher_outputs if matcher_outputs is not None else outputs
  query_of_gt = video_assignment(match_key, source["pred_logits"], source["pred_masks"], targets, config)
  fixed = query_of_gt if matcher_outputs is not None else None

  terms = set_loss(loss_key, outputs["pred_logits"], outputs["pred_masks"], targets, query_of_gt,
                   num_masks, config)
  for i, preds in enumerate(aux):
    terms.update(match_and_loss(i, preds, targets, fixed, f"_{i}"))

  targets_e = modified_targets(targets, query_of_gt, no_object, config.target_rule)
  terms.update(set_loss(key_e, outputs["pred_logits_E"], outputs["pred_masks_E"], targets_e,
                        query_of_gt, num_masks, config, "_E"))
  for i, preds in enumerate(aux_e):
    terms.update(match_and_loss(len(aux) + i, preds, targets_e, fixed, f"_E_{i}"))

  if config.sim_rule == "reference":
    terms["loss_sim"] = similarity_loss_reference(outputs["similarity"], targets, query_of_gt)
  else:
    terms["loss_sim"] = similarity_loss_paper(outputs["similarity"], outputs["prev_occupied"], targets,
                                              query_of_gt)
  return weighted_total(terms, config), terms


def te_only_criterion(key: jax.Array, outputs: Outputs, targets: VideoTargets, num_masks: jax.Array,
                      config: LossConfig) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """The T_E-only model's loss of one clip (Table 3(a) row 6; REFERENCE.md section 12).

  It always trains with early matching: the assignment is made once on `pred_logits` / `pred_masks` (the
  segmenter's predictions re-ordered by sigma, which are that model's outputs) and reused without
  re-matching for T_E's last block (`pred_logits_E`, `pred_masks_E`) and its earlier blocks (`aux_E`),
  all against the modified targets of REFERENCE.md 7.3. Terms: loss_{ce,mask,dice}_E[_i]; no T_A terms,
  no L_sim.
  """
  no_object = outputs["pred_logits"].shape[-1] - 1
  match_key, main_key, aux_key = jax.random.split(key, 3)
  query_of_gt = video_assignment(match_key, outputs["pred_logits"], outputs["pred_masks"], targets, config)
  targets_e = modified_targets(targets, query_of_gt, no_object, config.target_rule)
  terms = set_loss(main_key, outputs["pred_logits_E"], outputs["pred_masks_E"], targets_e, query_of_gt,
                   num_masks, config, "_E")
  aux_e = outputs.get("aux_E", [])
  for i, (preds, k) in enumerate(zip(aux_e, jax.random.split(aux_key, max(len(aux_e), 1)))):
    terms.update(set_loss(k, preds["pred_logits"], preds["pred_masks"], targets_e, query_of_gt,
                          num_masks, config, f"_E_{i}"))
  return weighted_total(terms, config), terms


def contrastive_loss(embeddings: jax.Array, query_of_gt: jax.Array,
                     frame_valid: jax.Array) -> jax.Array:
  """Eq. 13 between the frames of a clip: log(1 + sum_{k-} exp(v.k- - v.k+)), averaged over anchors.

  embeddings [T, N, C]; query_of_gt int [T, G] (per-frame assignment). Anchor v = the query matched to
  GT g at frame t; for every other valid frame u where g is matched, k+ = g's query at u and k- = the
  queries of the other GTs matched at u. No anchor: 0.
  """
  emb = _gather_rows(embeddings.astype(jnp.float32), query_of_gt)           # [T, G, C]
  matched = (query_of_gt >= 0) & frame_valid[:, None]                        # [T, G]
  dots = jnp.einsum("tgc,uhc->tguh", emb, emb)                               # v(t, g) . k(u, h)
  num_frames, num_gts = matched.shape
  positive = jnp.einsum("tgc,ugc->tgu", emb, emb)                             # k+ : h = g
  other_frame = ~jnp.eye(num_frames, dtype=bool)
  anchor = matched[:, :, None] & matched.T[None, :, :] & other_frame[:, None, :]   # [t, g, u]
  negative = matched[None, None, :, :] & ~jnp.eye(num_gts, dtype=bool)[None, :, None, :]   # [1, g, u, h]
  logits = jnp.where(negative, dots - positive[..., None], -jnp.inf)
  with_one = jnp.concatenate([jnp.zeros(logits.shape[:-1] + (1,)), logits], axis=-1)   # the "1 +"
  per_anchor = jax.nn.logsumexp(with_one, axis=-1)
  count = jnp.sum(anchor)
  return jnp.sum(jnp.where(anchor, per_anchor, 0.0)) / jnp.maximum(count, 1)


def _gather_rows(values: jax.Array, query_of_gt: jax.Array) -> jax.Array:
  """values [T, N, C] at query_of_gt [T, G] -> [T, G, C] (unmatched read row 0; mask them)."""
  query = jnp.clip(query_of_gt, 0, values.shape[1] - 1)
  return jnp.take_along_axis(values, query[..., None], axis=1)


def segmenter_criterion(key: jax.Array, outputs: Outputs, targets: VideoTargets, num_masks: jax.Array,
                        config: LossConfig) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """The segmenter's per-frame Mask2Former loss with deep supervision and Eq. 13 (SPEC section 6).

  outputs (per video): pred_logits [T, N, K+1], pred_masks [T, N, h, w] (last layer), aux: list of dicts of
  the earlier predictions (each re-matched per frame), optional embeddings [T, N, C] for the contrastive
  loss (anchors and positives from the last layer's assignment).
  Terms: loss_{ce,mask,dice}[_i], loss_contrastive (when embeddings are given).
  """
  aux = outputs.get("aux", [])
  keys = jax.random.split(key, len(aux) + 1)
  terms = {}
  query_of_gt = None
  for i, preds in enumerate([outputs] + list(aux)):
    match_key, loss_key = jax.random.split(keys[i])
    query = frame_assignment(match_key, preds["pred_logits"], preds["pred_masks"], targets, config)
    if i == 0:
      query_of_gt = query
    terms.update(set_loss(loss_key, preds["pred_logits"], preds["pred_masks"], targets, query,
                          num_masks, config, "" if i == 0 else f"_{i - 1}"))
  if outputs.get("embeddings") is not None:
    terms["loss_contrastive"] = contrastive_loss(outputs["embeddings"], query_of_gt,
                                                 targets.frame_valid)
  return weighted_total(terms, config), terms


def tracker_outputs_from_track(track_outputs: Outputs) -> Outputs:
  """The criterion's `outputs` from `video_model.track(..., train=True)`'s per-frame arrays.

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


# ------------------------------------------------------------------------------------------------
# Batch level: one call per device, inside shard_map.

def _mean_over_videos(criterion, key, outputs, targets, num_masks, config, **extra):
  batch_size = targets.present.shape[0]
  keys = jax.random.split(key, batch_size)
  per_video = jax.vmap(lambda k, o, t, e: criterion(k, o, t, num_masks, config, **e))
  totals, terms = per_video(keys, outputs, targets, extra)
  return jnp.mean(totals), jax.tree.map(jnp.mean, terms)


def tracker_loss(key: jax.Array, outputs: Outputs, targets: VideoTargets, num_masks: jax.Array,
                 config: LossConfig,
                 matcher_outputs: Optional[Outputs] = None) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """`tracker_criterion` averaged over the videos of a batch (outputs and targets with a leading B)."""
  extra = {} if matcher_outputs is None else {"matcher_outputs": matcher_outputs}
  return _mean_over_videos(tracker_criterion, key, outputs, targets, num_masks, config, **extra)


def segmenter_loss(key: jax.Array, outputs: Outputs, targets: VideoTargets, num_masks: jax.Array,
                   config: LossConfig) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """`segmenter_criterion` averaged over the videos of a batch."""
  return _mean_over_videos(segmenter_criterion, key, outputs, targets, num_masks, config)
