"""`config.train` and top-level training fields (SPEC sections 5-6)."""

import ml_collections

# `train.task`: one stage (tasks.TASKS) or both in turn (train.run_training; tests check they agree).
TASKS = ("tracker", "segmenter", "segmenter+tracker", "refiner")


def get() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      learning_rate=1e-4,
      weight_decay=0.05,
      warmup_steps=10,
      decay_steps=(112000,),
      decay_factor=0.1,
      clip_grad_norm=0.01,
      adam_eps=1e-8,
      warmup_factor=1.0,          # detectron2 WARMUP_FACTOR (1.0 in the reference = no warm-up ramp).
      backbone_lr_multiplier=0.1, # only matters when the segmenter trains.
      early_training_fraction=0.5,  # Eq. 9, 14: share of steps with early training when it is on.
      tracker_heads_from_segmenter=False,  # fresh trackers start with the segmenter's LN_d/class/mask heads.
      # tracker (segmenter frozen) | segmenter | segmenter+tracker (from scratch) | refiner (the offline
      # temporal refiner on a frozen segmenter + tracker from config.init_checkpoint).
      task="tracker",
      segmenter_steps=20000,      # segmenter stage of 'segmenter+tracker' (MinVIS_R50: 20k iterations).
      segmenter_learning_rate=1e-4,
      segmenter_decay_steps=(14000,),
      # task 'segmenter' with a method that trains there (CAVIS's ReID head): keep init_checkpoint's
      # segmenter fixed and train only the method's segmenter-stage params (a shared, trained segmenter).
      freeze_segmenter=False,
      # task 'refiner': share of the steps whose GT matching is made on the frozen online tracker's
      # outputs, reused by every refiner layer (LOMM_offline: iter < MAX_ITER / 2); then each layer is
      # matched on its own predictions.
      refiner_matching_switch=0.5,
  ))


def tiny(config: ml_collections.ConfigDict) -> None:
  del config
