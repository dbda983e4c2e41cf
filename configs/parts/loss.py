"""`config.loss`: loss weights and point sampling (REFERENCE.md sections 7 and 10; o2vis_jax/losses.py).

`target_rule` / `sim_rule` default to `config.tracker.semantics` (None here = follow it)."""

import ml_collections


def get() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      class_weight=2.0,
      mask_weight=5.0,
      dice_weight=5.0,
      no_object_weight=0.1,
      sim_weight=1.0,
      contrastive_weight=1.0,     # Eq. 13 (segmenter training only).
      num_points=12544,
      oversample_ratio=3.0,
      importance_sample_ratio=0.75,
  ))


def tiny(config: ml_collections.ConfigDict) -> None:
  config.loss.num_points = 64
