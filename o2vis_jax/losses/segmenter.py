"""The segmenter's per-frame criterion: Mask2Former's set loss with deep supervision, and the contrastive
loss between the frames of a clip (Eq. 13, SPEC section 6)."""

from typing import Dict, Tuple

import jax
import jax.numpy as jnp

from o2vis_jax.losses import assignment
from o2vis_jax.losses.config import LossConfig
from o2vis_jax.losses.set_prediction import Outputs, VideoTargets, set_loss, weighted_total


def _gather_rows(values: jax.Array, query_of_gt: jax.Array) -> jax.Array:
  """values [T, N, C] at query_of_gt [T, G] -> [T, G, C] (unmatched read row 0; mask them)."""
  query = jnp.clip(query_of_gt, 0, values.shape[1] - 1)
  return jnp.take_along_axis(values, query[..., None], axis=1)


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


def segmenter_criterion(key: jax.Array, outputs: Outputs, targets: VideoTargets, num_masks: jax.Array,
                        config: LossConfig) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """The segmenter's per-frame Mask2Former loss with deep supervision and Eq. 13 (SPEC section 6).

  outputs (per video): pred_logits [T, N, K+1], pred_masks [T, N, h, w] (last layer), aux: list of dicts of
  the earlier predictions (each re-matched per frame), optional embeddings [T, N, C] for the contrastive
  loss (anchors and positives from the last layer's assignment).
  Terms: loss_{ce,mask,dice}[_i], loss_contrastive (when embeddings are given).
  """
  total, terms, _ = segmenter_criterion_and_assignment(key, outputs, targets, num_masks, config)
  return total, terms


def segmenter_criterion_and_assignment(key: jax.Array, outputs: Outputs, targets: VideoTargets,
                                       num_masks: jax.Array, config: LossConfig
                                       ) -> Tuple[jax.Array, Dict[str, jax.Array], jax.Array]:
  """`segmenter_criterion` and the last layer's per-frame assignment query_of_gt [T, G] (what an
  association method's segmenter-stage terms are computed on)."""
  aux = outputs.get("aux", [])
  keys = jax.random.split(key, len(aux) + 1)
  terms = {}
  query_of_gt = None
  for i, preds in enumerate([outputs] + list(aux)):
    match_key, loss_key = jax.random.split(keys[i])
    query = assignment.frame_assignment(match_key, preds["pred_logits"], preds["pred_masks"], targets,
                                        config)
    if i == 0:
      query_of_gt = query
    terms.update(set_loss(loss_key, preds["pred_logits"], preds["pred_masks"], targets, query,
                          num_masks, config, "" if i == 0 else f"_{i - 1}"))
  if outputs.get("embeddings") is not None:
    terms["loss_contrastive"] = contrastive_loss(outputs["embeddings"], query_of_gt,
                                                 targets.frame_valid)
  return weighted_total(terms, config), terms, query_of_gt
