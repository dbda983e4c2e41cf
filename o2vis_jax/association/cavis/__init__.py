"""CAVIS (`cavis`): context-aware instance embeddings and the referring tracker CAIT (shared/reference/
cavis.md; Lee et al., "Context-Aware Video Instance Segmentation", code github Seung-Hun-Lee/CAVIS).

- `config.py`: the section `config.association.cavis` (context_filter_size 9, the tracker's sizes).
- `step.py`: the frame step: the ReID head on the frame's segmenter outputs, CAIT, the state.
- `segmenter_loss.py`: the segmenter stage's L_CTX and L_PCC (`Method.segmenter_loss`: the ReID head
  trains with the segmenter, `segmenter_stage_params`) and its per-frame targets (every clip GT at every
  frame, `Method.segmenter_targets`).
- `loss.py`: the tracker stage's criterion (consistent matching, segmenter-guided first half, deep
  supervision, the reference-query contrastive loss).
- `convert.py`: a CAVIS checkpoint's `tracker.*` and `sem_seg_head.predictor.reid_embed.*` weights.
The Flax module is `o2vis_jax.models.cavis.CAVIS`. Per frame it outputs pred_logits [N, K+1], pred_masks
[N, h, w] (tracker slots), reid [N, C] (in the segmenter's query order) and assignment [N] (slot s holds
segmenter query assignment[s]). Video-level scoring is the default (`Method.score_*`): the authors'
`post_processing` + `inference_video_vis` average the logits over all frames and keep the top-k (slot, class)
pairs of softmax(mean)[:, :K].
"""

import ml_collections

from o2vis_jax import losses
from o2vis_jax.association import base
from o2vis_jax.association.cavis import config as config_lib
from o2vis_jax.association.cavis import convert, loss as loss_lib, step as step_lib
from o2vis_jax.association.cavis import segmenter_loss as segmenter_loss_lib
from o2vis_jax.models import cavis as cavis_model
from o2vis_jax.models import tracker as tracker_lib


def num_classes_of(params) -> int:
  return params["class_embed"]["kernel"].shape[-1] - 1


class CAVIS(base.Method):
  name = "cavis"
  description = "CAVIS: context-aware ReID embeddings + the CAIT referring tracker (Lee et al.)"
  config_key = config_lib.SECTION
  required_inputs = ("embeds", "embeds_without_norm", "masks", "mask_features")
  phases = config_lib.PHASES
  # The ReID head trains in the segmenter stage (CAVIS_segmenter: L_CTX, L_PCC); CAVIS_online runs it
  # under no_grad.
  segmenter_stage_params = ("reid_embed",)
  frozen_in_training = segmenter_stage_params
  checkpoint_prefixes = convert.PREFIXES

  def default_config(self) -> ml_collections.ConfigDict:
    return config_lib.default_config()

  def tiny(self, section) -> None:
    config_lib.tiny(section)

  def validate_section(self, section, config) -> None:
    super().validate_section(section, config)
    config_lib.validate(section, config)

  def module(self, config, *, hidden_dim: int, num_classes: int) -> cavis_model.CAVIS:
    return cavis_model.CAVIS.from_section(self.section(config), hidden_dim=hidden_dim,
                                          num_classes=num_classes)

  def init_params(self, config, rng, *, num_classes, hidden_dim):
    """Xavier-uniform kernels, zero biases, unit norm scales (the authors' tracker reset; their ReID head's
    c2_xavier_fill draws its weights with another bound, an initialisation detail left out here)."""
    module = self.module(config, hidden_dim=hidden_dim, num_classes=num_classes)
    return tracker_lib.xavier_params(module, rng, hidden_dim)

  def init_state(self, config, *, num_queries, hidden_dim, dtype):
    return step_lib.init_state(num_queries, hidden_dim, dtype)

  def step(self, config, params, state, frame, *, train, phase=None):
    section = self.section(config)
    model = self.module(config, hidden_dim=frame["embeds_without_norm"].shape[-1],
                        num_classes=num_classes_of(params)).bind({"params": params})
    return step_lib.cavis_step(model, int(section.context_filter_size), section.get("matcher", "host"),
                               train, state, frame)

  def phase(self, config, step: int) -> str:
    fraction = float(self.section(config).get("segmenter_guided_fraction", 0.5))
    return "segmenter_guided" if step < fraction * config.num_train_steps else "main"

  def loss(self, config, key, outputs, targets, num_masks, *, phase):
    section = self.section(config)
    loss_config = losses.loss_config_from(config, matcher=section.get("matcher", "host"))
    return loss_lib.tracker_criterion(
        key, outputs, targets, num_masks, loss_config, segmenter_guided=phase == "segmenter_guided",
        reference_contrastive=bool(section.get("reference_contrastive", True)),
        reid_weight=float(section.get("reid_weight", 2.0)))

  def segmenter_targets(self, config, targets):
    return segmenter_loss_lib.clip_targets(targets)

  def segmenter_loss(self, config, key, params, frames, targets, query_of_gt):
    """L_CTX + L_PCC with their `_aux` terms (`segmenter_loss_lib.segmenter_terms`)."""
    del key
    section = self.section(config)
    model = self.module(config, hidden_dim=frames["embeds"].shape[-1],
                        num_classes=num_classes_of(params)).bind({"params": params})
    return segmenter_loss_lib.segmenter_terms(
        model, int(section.context_filter_size), frames, targets, query_of_gt,
        ctx_weight=float(section.get("ctx_weight", 2.0)), proto_weight=float(section.get("proto_weight", 2.0)))

  def claims(self, state_dict) -> bool:
    """CAVIS files share LOMM's `tracker.` prefix; they alone hold the ReID head."""
    return convert.SIGNATURE in state_dict

  def from_reference(self, state_dict, num_heads):
    return convert.cavis_from_reference(state_dict, num_heads)


METHOD = base.register(CAVIS())
