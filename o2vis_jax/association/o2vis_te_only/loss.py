"""The T_E-only model's criterion of one clip (Table 3(a) row 6; REFERENCE.md section 12): T_E's set loss
on O2VIS's modified targets (`association.o2vis.loss.modified_targets`, REFERENCE.md 7.3 or Eq. 10 by
`target_rule`), always with early matching (Eq. 14). The shared pieces are `o2vis_jax.losses`."""

from typing import Dict, Tuple

import jax

from o2vis_jax.association.o2vis import loss as o2vis_loss
from o2vis_jax.losses import assignment
from o2vis_jax.losses.config import LossConfig
from o2vis_jax.losses.set_prediction import Outputs, VideoTargets, set_loss, weighted_total


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
  query_of_gt = assignment.video_assignment(match_key, outputs["pred_logits"], outputs["pred_masks"],
                                            targets, config)
  targets_e = o2vis_loss.modified_targets(targets, query_of_gt, no_object, config.target_rule)
  terms = set_loss(main_key, outputs["pred_logits_E"], outputs["pred_masks_E"], targets_e, query_of_gt,
                   num_masks, config, "_E")
  aux_e = outputs.get("aux_E", [])
  for i, (preds, k) in enumerate(zip(aux_e, jax.random.split(aux_key, max(len(aux_e), 1)))):
    terms.update(set_loss(k, preds["pred_logits"], preds["pred_masks"], targets_e, query_of_gt,
                          num_masks, config, f"_E_{i}"))
  return weighted_total(terms, config), terms
