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
- the authors' OVIS setting (training and inference thresholds 0.1, OVIS_INFER: the slot branch gates the
  tracks): the synthetic data are OVIS-like (full occlusions, exits and re-entries), and with the
  YouTube-VIS thresholds (0.02 / 0.01) the first model trained here (same recipe otherwise) kept EVERY
  emergence row as a new sequence at every frame (fg > 0.01 for all of them: 10 new sequences a frame, none
  ever kicked out, 240 per 24-frame video); the same model at 0.1 created 19 per video on average.
- the video keeps the top `inference.max_num` (10, the other rows' budget) instead of DAQ's 20, so that the
  rows of the demo table are scored on the same footing (a video has at most 6 objects).
- 1500 steps: measured ~2.8 steps/s on 2 cores shared with another training run (nice 10; ~1.2 steps/s with
  two others), 11 minutes with the compilations.

`num_slots` (the sequence table S) = 256, chosen from a measurement on this data: scripts/measure_daq_slots.py
ran the trained model (assets/synthetic_tiny_dvis_daq: this recipe on the 128 px demo segmenter) with a table of
256 (nothing dropped) over the demo's held-out split (20 videos x 24 frames, seed 20000) and one 500-frame
video (seed 20001), streamed as the demo and scripts/infer.py do (track calls of inference.chunk_size = 8
frames, dead sequences released between calls):
                                              held-out 20 x 24     500 frames
  slots one track call occupied (max)                 97              147
    (the live sequences at its start + those it created)
  sequences created by one call (max)                 43               61
  sequences live after a call (max)                   88              129
  sequences created per video (max / mean)       110 / 58.7          1401
A whole 24-frame video as one call needs at most 110. The need per call is bounded by the live set, not by
the video's length (147 at 500 frames: spurious sequences above the 0.1 threshold live for 8 invalid frames
before the kick-out), so S = 256 is that maximum with a margin of 1.74 (the measuring table itself). An
earlier DAQ model on the earlier 96 px segmenter needed at most 88 (same measurement): the need follows the
model's calibration, so it is measured again whenever the model changes. Training needs less: a 5-frame
clip has at most 5 x N = 50 tracks (at most N = 10 births a frame), so with S >= 50 no training birth is
dropped and the trained weights do not depend on S (the run behind the shipped weights used S = 128; this
value only changes inference). A full table at inference is a one-line error naming this field
(on_overflow='error').
Whether the default 100 covers the published settings: not as a guarantee. A frame can create one sequence
per emergence row whose score passes the threshold, so a call of c frames may need (live sequences) + c x N
slots, with N = 100 (R50) or 200 (Swin-L / ViT-L); frame 0 alone can take N (the segmenter's queries above
0.01). Every sequence lives at least 9 frames (1 valid + 8 invalid before the kick-out). How many rows pass
0.01 (YouTube-VIS) or 0.1 (OVIS) is the model's calibration: a weak model here passed ALL of them at 0.01 (10
a frame, 240 per 24-frame video). 100 is a typical-case value for well-calibrated published models, not a
bound; the overflow error says when it is not enough (then raise num_slots; memory is linear in S).
"""

from configs import synthetic_tiny
from o2vis_jax import association

# The most slots one track call occupied in the measurement (module docstring), and the value chosen from it.
NUM_SLOTS_MEASURED = 147
NUM_SLOTS = 256


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
  d.training_select_threshold = 0.1
  d.inference_select_threshold = 0.1
  d.ovis_infer = True
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
