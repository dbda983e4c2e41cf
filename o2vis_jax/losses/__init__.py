"""The training pieces shared by the segmenter and every association method.

- `config.py`: `LossConfig` (the one place the loss weights and options are written), `loss_config_from`
  and the experiment config's `loss` section (`default_config`, `tiny`).
- `point_sampling.py`: bilinear point sampling and PointRend's uncertain points (Mask2Former).
- `assignment.py`: ground-truth assignment: the matching cost, the per-frame matcher and the
  first-appearance consistent video matcher (Eq. 10, REFERENCE.md 7.1).
- `set_prediction.py`: the Mask2Former set loss of one video (CE, BCE and dice on points), its targets and
  the mask counts that normalise it.
- `segmenter.py`: the segmenter's per-frame criterion with the contrastive loss (Eq. 13, SPEC section 6).
- `batch.py`: `mean_over_videos`, any per-video criterion averaged over a batch.
Each association method's own criterion lives beside it (the trackers': `association/o2vis/loss.py`).

Everything works on one video with static shapes: G padded GT tracks with validity, T frames with
validity. An assignment is `query_of_gt` (int32, -1 = unmatched), [G] for a clip or [T, G] per frame.

Normalisation (REFERENCE.md 7.2): mask and dice losses are sums over matched (frame, GT) pairs divided by
`num_masks`, which the caller makes global: the mean over every video of every device of the per-video
count (`tracker_mask_count` / `segmenter_mask_count`, reduced by `average_num_masks`), at least 1. With
the per-video losses averaged over the batch by `mean_over_videos` and `pmean` over devices, this is the
reference's `sum / (all_reduce(num_masks) / world_size)` with one clip per GPU.
"""

# Order matters: `assignment` imports the association package, whose methods import this package back;
# every name they need at import time (LossConfig, VideoTargets, ...) is bound before that.
from o2vis_jax.losses.config import RULES, LossConfig, default_config, loss_config_from, tiny
from o2vis_jax.losses.set_prediction import (Outputs, VideoTargets, average_num_masks,
                                             classification_loss, mask_losses, point_mask_losses,
                                             segmenter_mask_count, set_loss, target_classes,
                                             targets_from_batch, tracker_mask_count, video_targets,
                                             weighted_total)
from o2vis_jax.losses.batch import mean_over_videos
from o2vis_jax.losses.assignment import (CostWeights, clip_match_costs, consistent_video_matching,
                                         first_appearance, frame_assignment, match_cost,
                                         per_frame_matching, video_assignment)
from o2vis_jax.losses.segmenter import (contrastive_loss, segmenter_criterion,
                                        segmenter_criterion_and_assignment)
