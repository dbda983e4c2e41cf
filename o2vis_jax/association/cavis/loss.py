"""CAVIS's losses (shared/reference/cavis.md section 4).

Tracker stage (`CAVIS_online`): the first-appearance consistent assignment (`losses.video_assignment`), on
the segmenter's predictions re-ordered by sigma_t for the first half of training (then reused for every
layer) or on the tracker's own last layer (each aux layer re-matched); CE / BCE / dice with deep supervision;
and the reference-query contrastive loss `get_cl_loss_ref` (A:1528-1612) on the assignment the criterion
returns: the segmenter-guided one, or else the LAST AUX layer's (criterion_cavis.py L:335-345).

`contrastive_items` is the authors' `loss_reid` (L:90-138) on one anchor per item: with d = anchor . key,
  loss_reid     = (1 / #items) sum_items log(1 + sum_{neg} exp(d_neg - d_pos)),
  loss_reid_aux = (1 / #items) sum_items mean_{keys} (cos(anchor, key) - label)^2,
both 0 without items. The segmenter stage's L_CTX / L_PCC use the same form (`segmenter_loss.py`).
"""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from o2vis_jax import losses
from o2vis_jax.losses.set_prediction import Outputs, VideoTargets


def _normalize(x):
  """torch.nn.functional.normalize: x / max(||x||, 1e-12), written as x / sqrt(max(||x||^2, 1e-24)) (the
  same value) so that a zero vector (L_PCC's absent prototypes) has a finite gradient, not 0 * NaN."""
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def _masked_logsumexp(values, mask):
  """logsumexp over the masked entries; a finite stand-in for -inf keeps the gradient finite (0) when the
  mask is empty (an anchor without negatives), where -inf would give NaN through the masked-out branch."""
  fill = jnp.asarray(-0.25 * jnp.finfo(values.dtype).max, values.dtype)
  return jax.nn.logsumexp(jnp.where(mask, values, fill))


def anchor_terms(anchor: jax.Array, keys: jax.Array, positive: jax.Array, valid: jax.Array):
  """One anchor of `loss_reid` -> (contrastive, squared cosine error summed over keys, number of keys).

  anchor [C]; keys [M, C]; positive bool [M] (labels 1); valid bool [M] (the keys that exist). Contrastive:
  log(1 + sum_{p pos, n neg} exp(d_n - d_p)) = softplus(LSE_n d_n + LSE_p (-d_p)) (0 without negatives);
  the aux sums (cos(anchor, key) - label)^2 over the valid keys."""
  dots = keys @ anchor
  negative, positive = valid & ~positive, valid & positive
  contrastive = jax.nn.softplus(_masked_logsumexp(dots, negative) + _masked_logsumexp(-dots, positive))
  cosine = _normalize(keys) @ _normalize(anchor)
  squared = jnp.where(valid, (cosine - positive.astype(cosine.dtype)) ** 2, 0.0)
  return contrastive, jnp.sum(squared), jnp.sum(valid)


def item_terms(anchor: jax.Array, keys: jax.Array, positive: jax.Array, valid: jax.Array):
  """One item with one anchor -> (contrastive, aux = the mean over the valid keys of (cos - label)^2)."""
  contrastive, squared, count = anchor_terms(anchor, keys, positive, valid)
  return contrastive, squared / jnp.maximum(count, 1)


def group_terms(embeddings: jax.Array, groups: jax.Array, valid: jax.Array):
  """The items of L_CTX / L_PCC: one per group (the embeddings of one id) that has negatives; every member
  is an anchor, the positives are its group (itself included), the negatives every other valid embedding.
  -> (sum over items of the contrastive sums, sum over items of the aux means, number of items).

  embeddings [M, C]; groups int [M]; valid bool [M]. The aux of an item is the mean over its anchors x all
  valid keys (the authors' (cos - label)^2 .mean() over the item's [anchors, keys] matrix)."""
  same = groups[:, None] == groups[None, :]
  contrastive, squared, count = jax.vmap(anchor_terms, in_axes=(0, None, 0, None))(
      embeddings, embeddings, same, valid)
  members = jnp.sum(same & valid[None, :], axis=1)                        # the anchor's group size
  has_negative = jnp.any(~same & valid[None, :], axis=1)
  used = valid & has_negative
  weight = jnp.where(used, 1.0 / jnp.maximum(members, 1), 0.0)
  aux = jnp.sum(weight * squared / jnp.maximum(count, 1))
  return jnp.sum(jnp.where(used, contrastive, 0.0)), aux, jnp.sum(weight)


def reference_contrastive_loss(references: jax.Array, query_of_gt: jax.Array,
                               frame_valid: jax.Array) -> Dict[str, jax.Array]:
  """`get_cl_loss_ref` of one video (one video per device, as the authors train) -> loss_reid, loss_reid_aux.

  references [T, N, C]: the tracker's reference query E(last_ctx_aware_query) of each frame (frame 0 has
  none: the authors' list starts at frame 1). Their loop runs over that list's indices i >= 1, i.e. anchor
  frames f = i + 1 in 2..T-1: for every matched GT (query q = query_of_gt[g], whether or not g is present at
  f), anchor = R_f[q]; one item with positive R_{f-1}[q] and negatives the other queries of R_{f-1}; one with
  R_{f+1} when f + 1 < T. Items on padded frames are dropped.
  """
  num_frames, num_queries = references.shape[:2]
  refs = references.astype(jnp.float32) if references.dtype == jnp.bfloat16 else references
  matched = query_of_gt >= 0
  query = jnp.clip(query_of_gt, 0, num_queries - 1)
  positive = query[:, None] == jnp.arange(num_queries)[None, :]                 # [G, N]
  all_keys = jnp.ones((num_queries,), bool)
  total_c, total_a, count = 0.0, 0.0, 0
  for anchor_frame in range(2, num_frames):      # T is small and static
    anchors = jnp.take(refs[anchor_frame], query, axis=0)                       # [G, C]
    for key_frame in (anchor_frame - 1, anchor_frame + 1):
      if key_frame >= num_frames:
        continue
      terms = jax.vmap(item_terms, in_axes=(0, None, 0, None))(anchors, refs[key_frame], positive, all_keys)
      used = matched & frame_valid[anchor_frame] & frame_valid[key_frame]
      total_c = total_c + jnp.sum(jnp.where(used, terms[0], 0.0))
      total_a = total_a + jnp.sum(jnp.where(used, terms[1], 0.0))
      count = count + jnp.sum(used)
  count = jnp.maximum(count, 1)
  return {"loss_reid": total_c / count, "loss_reid_aux": total_a / count}


def tracker_criterion(key: jax.Array, outputs: Outputs, targets: VideoTargets, num_masks: jax.Array,
                      config: losses.LossConfig, *, segmenter_guided: bool, reference_contrastive: bool,
                      reid_weight: float) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """CAVIS_online's loss of one clip -> (total, terms).

  outputs (per video, from `association.track(..., train=True)`): pred_logits [T, N, K+1], pred_masks
  [T, N, h, w], aux_logits [T, L-1, N, K+1], aux_masks [T, L-1, N, h, w], references [T, N, C], and with
  segmenter_guided matcher_logits / matcher_masks (the segmenter's predictions re-ordered by sigma_t).
  Terms: loss_{ce,mask,dice} (last layer), loss_{ce,mask,dice}_i (layers 1..L-1), loss_reid[_aux].
  """
  num_aux = outputs["aux_logits"].shape[-3]
  keys = jax.random.split(key, 2 * num_aux + 2)
  if segmenter_guided:
    fixed = losses.video_assignment(keys[0], outputs["matcher_logits"], outputs["matcher_masks"], targets,
                                    config)
    query_of_gt = fixed
  else:
    fixed = None
    query_of_gt = losses.video_assignment(keys[0], outputs["pred_logits"], outputs["pred_masks"], targets,
                                          config)
  terms = losses.set_loss(keys[1], outputs["pred_logits"], outputs["pred_masks"], targets, query_of_gt,
                          num_masks, config)
  returned = query_of_gt
  for i in range(num_aux):
    logits, masks = outputs["aux_logits"][:, i], outputs["aux_masks"][:, i]
    query = fixed if fixed is not None else losses.video_assignment(keys[2 + 2 * i], logits, masks, targets,
                                                                    config)
    terms.update(losses.set_loss(keys[3 + 2 * i], logits, masks, targets, query, num_masks, config, f"_{i}"))
    returned = query
  total = losses.weighted_total(terms, config)
  if reference_contrastive:
    reid_terms = reference_contrastive_loss(outputs["references"], returned, targets.frame_valid)
    terms.update(reid_terms)
    total = total + reid_weight * (reid_terms["loss_reid"] + reid_terms["loss_reid_aux"])
  return total, terms
