"""A small O2VIS trained from scratch on the built-in synthetic occlusion dataset on a 2-core CPU.

  python scripts/train.py --config configs/synthetic_tiny.py --workdir /tmp/o2vis_synthetic

needs nothing else: the synthetic dataset is generated into WORKDIR/synthetic_data on first use, then the
two stages of `train.task='segmenter+tracker'` run: the segmenter (per-frame Mask2Former loss + Eq. 13)
for `train.segmenter_steps`, then the trackers on the frozen segmenter for `num_train_steps`; the result is
exported to WORKDIR/export (a converted-checkpoint directory for scripts/infer.py and scripts/demo.py).
Variants: `configs/synthetic_tiny.py:segmenter` or `:tracker` run one stage. On 2 cores the segmenter runs
at about 3.5 steps/s and the trackers at about 5.5 steps/s (batch 4): about an hour in all.
`:refiner` trains the offline temporal refiner on the shipped model (assets/synthetic_tiny as
`init_checkpoint`, frozen) with the offline clip settings (15 frames from a range of 7, time reversal) at a
CPU-sized schedule.
assets/synthetic_tiny/README.md has the exact commands that produced the shipped demo checkpoint.
"""

import os

from configs import base

# The shipped synthetic model (segmenter + O2VIS tracker): the frozen online model of the 'refiner' variant.
SHIPPED_CHECKPOINT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                                  "synthetic_tiny")


def get_config(variant: str = "segmenter+tracker"):
  config = base.get_base_config()
  m = config.model
  m.num_classes = 5
  m.num_queries = 10
  m.hidden_dim = 64
  m.num_heads = 4
  m.backbone.depth = 18
  m.backbone.width = 16
  m.pixel_decoder.conv_dim = 64
  m.pixel_decoder.mask_dim = 64
  m.pixel_decoder.num_encoder_layers = 2
  m.pixel_decoder.encoder_ffn_dim = 128
  m.pixel_decoder.num_heads = 4
  m.pixel_decoder.num_points = 2
  m.pixel_decoder.num_groups = 8
  m.transformer_decoder.num_layers = 3
  m.transformer_decoder.ffn_dim = 128

  config.tracker.ffn_dim = 128
  config.tracker.num_heads = 4
  # Two choices that make the small trackers learn in minutes on a CPU (both measured on this data):
  # early training for the first half of the tracker stage (Eq. 9, 14; the paper's rule, off in the
  # reference configs), and the shared heads starting as copies of the trained segmenter's.
  config.tracker.early_matching = True

  d = config.data
  d.dataset = "synthetic"
  d.num_frames = 4
  d.sampling_frame_range = 2
  d.min_size_train = (96, 96)
  d.max_size_train = 96
  d.crop_enabled = False
  d.pad_buckets = ((96, 96),)
  d.max_instances = 6
  d.coco_ratio = 0.0
  d.synthetic_videos = 2000
  d.synthetic_valid_videos = 20
  d.synthetic_frames = 24
  d.synthetic_size = 96
  d.synthetic_radius_range = (0.15, 0.25)   # larger shapes than the default: 96 px frames.
  d.read_threads = 1
  d.prefetch = 2

  config.loss.num_points = 256

  t = config.train
  t.task = variant
  t.learning_rate = 5e-4
  t.decay_steps = (4000,)
  t.segmenter_steps = 8000
  t.segmenter_learning_rate = 5e-4
  t.segmenter_decay_steps = (7000,)
  t.backbone_lr_multiplier = 1.0   # from scratch: the backbone learns at the full rate.
  t.tracker_heads_from_segmenter = True
  config.num_train_steps = 5000    # tracker stage (the first half with early training).
  config.batch_size = 4
  config.checkpoint_every_steps = 200
  config.log_every_steps = 20

  if variant == "segmenter":
    # The segmenter stage on its own runs with the schedule it has inside 'segmenter+tracker'.
    config.num_train_steps = t.segmenter_steps
    t.learning_rate = t.segmenter_learning_rate
    t.decay_steps = t.segmenter_decay_steps

  if variant == "refiner":
    # The offline refiner (configs/offline_r50.py's clip settings) on the frozen shipped model. A smaller
    # refiner than the reference's (C = 64 as the model; 3 layers, FFN 128) and a schedule for a 2-core CPU.
    config.init_checkpoint = SHIPPED_CHECKPOINT
    d.num_frames = 15
    d.sampling_frame_range = 7
    d.reverse_prob = 0.5
    r = config.refiner
    r.num_layers = 3
    r.ffn_dim = 128
    r.num_heads = 4
    # About 4 steps/s on 2 cores (batch 4): ~8 minutes. The lr step at 70% of the steps, as 28k of 40k.
    config.batch_size = 4
    config.num_train_steps = 2000
    t.learning_rate = 2e-4
    t.decay_steps = (1400,)
    t.refiner_matching_switch = 0.5
    config.checkpoint_every_steps = 250
    config.log_every_steps = 20

  config.inference.chunk_size = 8
  config.inference.min_size_test = 96
  config.inference.max_num = 10
  return config
