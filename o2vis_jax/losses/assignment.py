"""Ground-truth assignment for the losses: the Mask2Former matching cost, the per-frame matcher of the
segmenter and the first-appearance consistent video matcher of the trackers (Eq. 10, REFERENCE.md 7.1).

An assignment is `query_of_gt` (int32, -1 = unmatched): [G] for a clip (one query per GT track for every
frame), [T, G] per frame. The Hungarian itself is `association.ops.hungarian` (scipy on the host through
`jax.pure_callback`, or the exact device solver); everything here is stop-gradient.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

# From the submodule: `association.ops` re-exports the function `hungarian` under the module's name.
from o2vis_jax.association.ops.hungarian import hungarian, staged_hungarian
from o2vis_jax.losses import point_sampling
from o2vis_jax.losses.config import LossConfig
from o2vis_jax.losses.set_prediction import VideoTargets

_DEFAULTS = LossConfig()


class CostWeights(NamedTuple):
  """Weights of the matching cost (Mask2Former's cost_class / cost_mask / cost_dice): the loss weights,
  so the defaults are LossConfig's."""
  class_weight: float = _DEFAULTS.class_weight
  mask_weight: float = _DEFAULTS.mask_weight
  dice_weight: float = _DEFAULTS.dice_weight

  @classmethod
  def of(cls, config: LossConfig) -> "CostWeights":
    return cls(config.class_weight, config.mask_weight, config.dice_weight)


def match_cost(pred_logits: jax.Array, pred_masks: jax.Array, labels: jax.Array, gt_masks: jax.Array,
               point_coords: jax.Array, weights: CostWeights = CostWeights()) -> jax.Array:
  """Cost [G, N] of giving GT g to query n on one frame: `w_c * (-p_n[label_g]) + w_m * BCE + w_d * dice`.

  Args:
    pred_logits: [N, K+1] class logits; pred_masks: [N, h, w] mask logits.
    labels: int [G]; gt_masks: [G, H, W] (any resolution: sampled at normalised coordinates).
    point_coords: [P, 2] points in [0, 1]^2 shared by every mask (uniform, REFERENCE.md 7.1).
  BCE is averaged over the points; dice = 1 - (2 sum(s t) + 1) / (sum s + sum t + 1) with s = sigmoid.
  """
  probs = jax.nn.softmax(pred_logits.astype(jnp.float32), axis=-1)             # [N, K+1]
  class_cost = -jnp.take(probs, labels, axis=-1).T                            # [G, N]
  logits = point_sampling.point_sample(pred_masks.astype(jnp.float32), point_coords)   # [N, P]
  targets = point_sampling.point_sample(gt_masks.astype(jnp.float32), point_coords)    # [G, P]
  num_points = point_coords.shape[0]
  # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x), summed over points as two matmuls.
  bce_cost = (targets @ jax.nn.softplus(-logits).T
              + (1.0 - targets) @ jax.nn.softplus(logits).T) / num_points
  scores = jax.nn.sigmoid(logits)
  dice_cost = 1.0 - (2.0 * targets @ scores.T + 1.0) / (
      targets.sum(-1)[:, None] + scores.sum(-1)[None, :] + 1.0)
  return (weights.class_weight * class_cost + weights.mask_weight * bce_cost
          + weights.dice_weight * dice_cost)


def clip_match_costs(key: jax.Array, pred_logits: jax.Array, pred_masks: jax.Array, labels: jax.Array,
                     gt_masks: jax.Array, num_points: int,
                     weights: CostWeights = CostWeights()) -> jax.Array:
  """`match_cost` at every frame of a clip -> [T, G, N]; frame t uses its own uniform points.

  pred_logits [T, N, K+1], pred_masks [T, N, h, w], labels [T, G], gt_masks [T, G, H, W]. Randomness:
  frame t's points are `uniform(jax.random.split(key, T)[t], (num_points, 2))`.
  """
  num_frames = pred_logits.shape[0]
  frame_keys = jax.random.split(key, num_frames)
  coords = jax.vmap(lambda k: point_sampling.uniform_point_coords(k, (num_points,)))(frame_keys)
  costs = jax.vmap(match_cost, in_axes=(0, 0, 0, 0, 0, None))(
      jax.lax.stop_gradient(pred_logits), jax.lax.stop_gradient(pred_masks), labels, gt_masks,
      coords, weights)
  return costs


def first_appearance(present: jax.Array) -> jax.Array:
  """Each GT's first frame with a mask, f(n) of Eq. 10: int32 [G] from present [T, G]; -1 if never."""
  seen = jnp.any(present, axis=0)
  return jnp.where(seen, jnp.argmax(present, axis=0), -1).astype(jnp.int32)


def consistent_video_matching(costs: jax.Array, present: jax.Array, matcher: str = "host") -> jax.Array:
  """The first-appearance consistent assignment of Eq. 10 (REFERENCE.md 7.1) from per-frame costs.

  Frames in increasing order; at frame f the GTs whose first frame f(n) is f are matched by Hungarian to
  the queries that no earlier frame took (the reference prices taken queries at 1e6; here they are simply
  not candidates, which is the same unless there are more GTs than free queries, where surplus GTs stay
  unmatched instead of sharing a query). GTs that never appear stay unmatched.

  Args:
    costs: [..., T, G, N] (from `clip_match_costs`; leading axes: several prediction sets, matched in
      one call); present: bool [T, G] (already and-ed with the validity of GT and frame).
  Returns: query_of_gt int32 [..., G], -1 = unmatched.
  """
  num_frames = costs.shape[-3]
  # One stage per frame (its first-appearing GTs), sharing the queries: one host call per clip.
  stages = first_appearance(present)[None, :] == jnp.arange(num_frames)[:, None]   # [T, G]
  return staged_hungarian(costs, stages, matcher=matcher)


def per_frame_matching(costs: jax.Array, present: jax.Array, matcher: str = "host") -> jax.Array:
  """Mask2Former's per-image Hungarian at every frame: GTs present at t vs all queries -> int32 [T, G]."""
  return hungarian(costs, present, None, matcher=matcher)


def video_assignment(key: jax.Array, pred_logits: jax.Array, pred_masks: jax.Array,
                     targets: VideoTargets, config: LossConfig) -> jax.Array:
  """The first-appearance consistent assignment (Eq. 10) of one prediction set -> query_of_gt [G]."""
  costs = clip_match_costs(key, pred_logits, pred_masks, targets.labels, targets.masks,
                           config.num_points, CostWeights.of(config))
  return consistent_video_matching(costs, targets.present, config.matcher)


def video_assignments(keys, prediction_sets, targets: VideoTargets, config: LossConfig) -> jax.Array:
  """`video_assignment` of several prediction sets against the same targets -> query_of_gt [S, G], with
  one matcher call for all of them (with the host matcher: one host callback instead of S)."""
  costs = jnp.stack([clip_match_costs(key, preds["pred_logits"], preds["pred_masks"], targets.labels,
                                      targets.masks, config.num_points, CostWeights.of(config))
                     for key, preds in zip(keys, prediction_sets)])
  return consistent_video_matching(costs, targets.present, config.matcher)


def frame_assignment(key: jax.Array, pred_logits: jax.Array, pred_masks: jax.Array,
                     targets: VideoTargets, config: LossConfig) -> jax.Array:
  """Mask2Former's per-image assignment at every frame -> query_of_gt [T, G]."""
  costs = clip_match_costs(key, pred_logits, pred_masks, targets.labels, targets.masks,
                           config.num_points, CostWeights.of(config))
  return per_frame_matching(costs, targets.present, config.matcher)
