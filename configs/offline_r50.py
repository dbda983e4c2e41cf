"""R50 offline O2VIS (O2VIS*: LOMM offline): the temporal refiner trained on a frozen R50 segmenter + online
O2VIS tracker (shared/reference/refiner.md "Training").

  python scripts/train.py --config configs/offline_r50.py:DATASET --workdir DIR
      --config.init_checkpoint=ONLINE_EXPORT --config.data.data_dir=BUILT_DATASET   (one command line)

DATASET: ytvis19 (default) | ytvis21 | ytvis22 | ovis (configs/r50_common.py: classes, top-k, instances
per clip, COCO pseudo-clips as the online setting). `tiny` is the unit tests' variant (every section
shrunk, 4-frame clips).

ONLINE_EXPORT holds the frozen segmenter and tracker ('segmenter' + 'tracker' params: the export of a
'tracker' or 'segmenter+tracker' run, or converted LOMM online weights); the run exports
{'segmenter', 'tracker', 'refiner'} to DIR/export for `scripts/infer.py --offline`.

LOMM offline settings (LOMM_Offline_R50.yaml over the online ones): 40k iterations with the lr x0.1 at 28k,
clips of 15 frames drawn from a range of 7 around the reference frame, random time reversal
(REVERSE_AGU, probability 0.5), a refiner of 6 layers; the matching is made on the frozen online tracker's
outputs for the first half of the steps (MAX_ITER / 2), then on the refiner's own layers.
"""

from configs import base, r50_common


def offline_training_fields(config):
  """The refiner-training fields shared by every offline config (R50 here, ViT-L in offline_vitl.py)."""
  config.train.task = "refiner"
  config.train.decay_steps = (28000,)
  config.train.refiner_matching_switch = 0.5
  config.num_train_steps = 40000
  config.data.num_frames = 15
  config.data.sampling_frame_range = 7
  config.data.reverse_prob = 0.5
  config.refiner.num_layers = 6
  return config


def get_config(arg: str = "ytvis19"):
  if arg == "tiny":
    config = base.make_tiny(base.get_base_config())
    config.train.task = "refiner"
    config.data.num_frames = 4
    config.data.sampling_frame_range = 2
    config.data.reverse_prob = 0.5
    config.train.refiner_matching_switch = 0.5
    return config
  return offline_training_fields(r50_common.tracker_training_config(arg))
