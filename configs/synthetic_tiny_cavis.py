"""CAVIS trained on the demo's frozen synthetic segmenter (assets/synthetic_tiny), on a 2-core CPU: one run.

  python scripts/train.py --config configs/synthetic_tiny_cavis.py --workdir DIR

The segmenter is the shipped checkpoint's, read at run time (`config.init_checkpoint` = assets/synthetic_tiny;
its model and data sizes come from its config.json, as configs/synthetic_tiny.py's 'refiner' variant does),
so that the same command trains CAVIS on whichever segmenter is shipped. The export (DIR/export) is what
`scripts/demo.py --methods ...,cavis` reads from assets/synthetic_tiny_cavis/.

CAVIS's ReID head belongs to its segmenter stage (CAVIS_segmenter: L_CTX and L_PCC next to the Mask2Former
losses). The segmenter here is shared with the demo's other rows and stays as shipped, so the run is
`train.task='segmenter+tracker'` with `train.freeze_segmenter=True`:
1. the ReID head alone, on the frozen segmenter (its outputs without gradient; the per-frame Hungarian still
   assigns queries to GT for L_CTX), for `train.segmenter_steps` (DIR/segmenter, exported with the
   segmenter to DIR/segmenter/export). L_CTX trains the head; L_PCC (prototypes of the mask features) only
   trains the segmenter's pixel decoder, so here it is logged but moves nothing;
2. the CAIT tracker on it (the head frozen, as CAVIS_online runs it), for `num_train_steps` (DIR/tracker).
The authors' recipe (configs/cavis_common.py) scaled to the CPU:
- a smaller head and tracker (C = the model's 64; CAIT 3 layers, 4 heads, FFN 128; the ReID MLP 3 layers of 64);
- the context filter scaled with the frame: 9 at 448 px test size -> 3 at the synthetic 96-128 px (an object
  of radius 0.12-0.25 of the frame spans 3-8 pixels of the 1/4-resolution mask map, where a 9 x 9 box
  would average over most of the frame);
- the stages' length ratio of theirs (40k segmenter : 160k tracker = 1 : 4), lr x0.1 at 70% of each stage
  (28k of 40k, 112k of 160k), segmenter-guided matching for the first half of the tracker stage, the
  reference-query contrastive loss on (their YouTube-VIS setting), CE / BCE / dice 2 / 5 / 5, weights 2 for
  L_CTX, L_PCC and the ReID loss; AdamW, wd 0.05, clip 0.01; batch 4 clips. The rate is synthetic_tiny's
  tracker stage's (5e-4, not their 1e-4: minutes, not days), and CAIT's shared heads (LN_d, class, mask)
  start as copies of the segmenter's (`train.tracker_heads_from_segmenter`, as the demo's O2VIS tracker).
- 5-frame clips (range 2) for both stages: one data config for the one run (theirs: 3-frame clips for the
  segmenter stage, 5 for the tracker's); no Eq. 13 (O2VIS's segmenter loss, not CAVIS's).
"""

from configs import synthetic_tiny
from o2vis_jax import association

# Steps of the two stages (1 : 4, as 40k : 160k). Measured on 2 cores shared with two other training runs
# (nice 10): the ReID stage at 4-10 steps/s (no backward pass through the segmenter), the tracker stage at
# ~4.9 steps/s: 13 minutes with data reading, compilations and exports (about 10 on 2 free cores).
REID_STEPS = 600
TRACKER_STEPS = 2400


def get_config():
  config = association.with_method(synthetic_tiny.get_config("segmenter+tracker"), "cavis")
  config.init_checkpoint = synthetic_tiny.SHIPPED_CHECKPOINT
  synthetic_tiny._take_shipped_model(config)  # pylint: disable=protected-access  (the shipped model's sizes)

  c = config.association.cavis
  c.num_layers = 3
  c.num_heads = 4
  c.ffn_dim = 128
  c.reid_hidden_dim = 64
  c.num_reid_head_layers = 3
  c.context_filter_size = 3
  c.segmenter_guided_fraction = 0.5
  c.reference_contrastive = True
  c.reid_weight = 2.0
  c.ctx_weight = 2.0
  c.proto_weight = 2.0
  config.loss.contrastive_weight = 0.0   # no Eq. 13 in CAVIS_segmenter (and the segmenter is frozen).

  config.data.num_frames = 5
  config.data.sampling_frame_range = 2
  config.batch_size = 4
  t = config.train
  t.task = "segmenter+tracker"
  t.freeze_segmenter = True
  t.segmenter_steps = REID_STEPS
  t.segmenter_learning_rate = 5e-4
  t.segmenter_decay_steps = (round(0.7 * REID_STEPS),)
  config.num_train_steps = TRACKER_STEPS
  t.learning_rate = 5e-4
  t.decay_steps = (round(0.7 * TRACKER_STEPS),)
  t.tracker_heads_from_segmenter = True
  config.checkpoint_every_steps = 250
  config.log_every_steps = 20
  return config
