"""CAVIS's segmenter-stage contrastive losses (shared/reference/cavis.md section 4; `CAVIS_segmenter`,
criterion_cavis.py `loss_ctxs` L:174-209 and cavis.py `get_prototypical_contrastive_loss` A:667-725), each
with weight 2 for the loss and 2 for its `_aux` term (A:516-535), next to the per-frame Mask2Former losses.

Both are `loss_reid` over groups (`loss.group_terms`): every embedding of a group is an anchor, its group
the positives (itself included), every other embedding the negatives; a group without negatives is no item;
loss = sum over items / #items, aux likewise, both 0 without items.

- L_CTX (`context_contrastive_loss`): the ReID embeddings of the queries matched (last layer) at each frame,
  grouped by the GT's id AT THAT FRAME: a GT absent from the frame has id -1, so every query matched to an
  absent GT, whatever the GT, falls in one "-1" group.
- L_PCC (`prototype_contrastive_loss`): per GT and frame, the prototype = the mask features averaged under
  the GT mask resized bilinearly (align_corners False) to the mask features' size (soft weights; the code
  uses the GT masks, the paper says predicted ones), where that resized mask has any weight; grouped by GT.
  Skipped (0) for a clip with at most one instance.

The segmenter stage (`tasks.SegmenterTask` through `Method.segmenter_targets` / `segmenter_loss`):
- `clip_targets`: the per-frame set loss's targets as `CAVIS_segmenter` (MinVIS `prepare_targets` +
  `frame_decoder_loss_reshape`) builds them: every GT of the clip (present in some frame) is a target of
  EVERY frame, with its class and an empty mask where absent; num_masks counts them (G_clip per frame).
- `segmenter_terms`: the ReID head (this method's `reid_embed`, trained here with the segmenter) on each
  frame's segmenter outputs with gradient (only the masks are detached, D:233), L_CTX on the last layer's
  per-frame assignment of `clip_targets`, L_PCC on the mask features; weights `ctx_weight` /
  `proto_weight` (2) on each term and its `_aux`.
"""

from typing import Dict

import jax
import jax.numpy as jnp

from o2vis_jax.association.cavis import step as step_lib
from o2vis_jax.association.cavis.loss import group_terms
from o2vis_jax.losses.set_prediction import VideoTargets
from o2vis_jax.models.resize import resize_bilinear


def _reid_terms(total_contrastive, total_aux, items, name):
  items_or_one = jnp.maximum(items, 1.0)
  return {name: jnp.where(items > 0, total_contrastive / items_or_one, 0.0),
          name + "_aux": jnp.where(items > 0, total_aux / items_or_one, 0.0)}


def context_contrastive_loss(reid: jax.Array, query_of_gt: jax.Array,
                             targets: VideoTargets) -> Dict[str, jax.Array]:
  """L_CTX of one video -> loss_ctx, loss_ctx_aux. reid [T, N, C]; query_of_gt int [T, G]: the last layer's
  per-frame assignment of the clip's GTs (-1 = unmatched); a GT absent at t is in group -1 there."""
  num_frames, num_gts = query_of_gt.shape
  query = jnp.clip(query_of_gt, 0, reid.shape[1] - 1)
  embeddings = jnp.take_along_axis(reid, query[..., None], axis=1).reshape(num_frames * num_gts, -1)
  groups = jnp.where(targets.present, jnp.arange(num_gts)[None, :], -1).reshape(-1)
  valid = ((query_of_gt >= 0) & targets.frame_valid[:, None]).reshape(-1)
  return _reid_terms(*group_terms(embeddings, groups, valid), "loss_ctx")


def prototype_contrastive_loss(mask_features: jax.Array, targets: VideoTargets) -> Dict[str, jax.Array]:
  """L_PCC of one video -> loss_proto, loss_proto_aux. mask_features [T, h, w, C]; the clip's instances are
  the GTs present in some valid frame."""
  num_frames, height, width = mask_features.shape[:3]
  masks = resize_bilinear(targets.masks.astype(mask_features.dtype), height, width)   # [T, G, h, w]
  weight = jnp.sum(masks, axis=(-2, -1))                                               # [T, G]
  prototypes = jnp.einsum("tghw,thwc->tgc", masks, mask_features) / jnp.where(weight > 0, weight, 1.0)[..., None]
  instances = jnp.any(targets.present & targets.frame_valid[:, None], axis=0)        # [G]
  valid = (weight > 0) & instances[None, :] & targets.frame_valid[:, None]
  groups = jnp.broadcast_to(jnp.arange(masks.shape[1])[None, :], valid.shape)
  terms = _reid_terms(*group_terms(prototypes.reshape(-1, prototypes.shape[-1]), groups.reshape(-1),
                                   valid.reshape(-1)), "loss_proto")
  # Skipped for a clip with at most one instance, or with an instance whose GT mask is empty in every
  # frame (A:679-681: `masks.sum(dim=(1, 2, 3)).min() == 0`, on the masks before resizing).
  pixels = jnp.sum(jnp.where(targets.frame_valid[:, None], jnp.sum(targets.masks, axis=(-2, -1)), 0), axis=0)
  used = (jnp.sum(instances) > 1) & ~jnp.any(instances & (pixels == 0))
  return {k: jnp.where(used, v, 0.0) for k, v in terms.items()}


def clip_targets(targets: VideoTargets) -> VideoTargets:
  """One video's targets with every GT of the clip present at every valid frame (module docstring)."""
  in_clip = jnp.any(targets.present & targets.frame_valid[:, None], axis=0)
  return targets._replace(present=in_clip[None, :] & targets.frame_valid[:, None])


def segmenter_terms(model, filter_size: int, frames: Dict[str, jax.Array], targets: VideoTargets,
                    query_of_gt: jax.Array, *, ctx_weight: float, proto_weight: float):
  """L_CTX + L_PCC of one video -> (weighted total, {loss_ctx, loss_ctx_aux, loss_proto, loss_proto_aux}).

  model: a bound `models.cavis.CAVIS` (its `reid_embed` is used); frames: the segmenter's outputs [T, ...]
  (embeds [T, N, C] normed queries, masks [T, N, h, w] last-layer mask logits, mask_features
  [T, h, w, C]); query_of_gt [T, G]: the last layer's per-frame assignment of `clip_targets(targets)`."""
  float32 = lambda x: x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x
  reid = jax.vmap(lambda frame: step_lib.reid_features(model, filter_size, frame))(
      {k: frames[k] for k in ("embeds", "masks", "mask_features")})
  terms = dict(context_contrastive_loss(float32(reid), query_of_gt, targets))
  terms.update(prototype_contrastive_loss(float32(frames["mask_features"]), targets))
  total = (ctx_weight * (terms["loss_ctx"] + terms["loss_ctx_aux"])
           + proto_weight * (terms["loss_proto"] + terms["loss_proto_aux"]))
  return total, terms
