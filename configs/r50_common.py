"""The R50 settings of the paper's Table 1 (not a config file itself: `configs/<dataset>_r50.py` and
`configs/ablations_r50.py` call `tracker_training_config`).

Tracker training on a frozen, converted R50 segmenter (REFERENCE.md section 10, `LOMM_Online_R50.yaml`):
AdamW lr 1e-4, weight decay 0.05 (0 on norms), warm-up 10 steps, 160k steps with the lr x0.1 at 112k,
global batch 8 clips of 5 frames (sampling range 2), full-model gradient-norm clip 0.01, COCO pseudo-clips
mixed 1:1 with the videos (`coco2<dataset>_train`: set `data.coco_data_dir` to a COCO build mapped to the
dataset's categories; empty = videos only). Inference: shorter side 480, video-level top-k `max_num`.

The segmenter must come from a converted checkpoint: set `--config.init_checkpoint=DIR`
(scripts/convert_checkpoint.py); the tracker task warns and uses a random segmenter otherwise.
"""

from configs import base

# name: (data.dataset, K, inference.max_num, data.max_instances)
DATASETS = {
    "ytvis19": ("ytvis_2019", 40, 10, 10),
    "ytvis21": ("ytvis_2021", 40, 10, 10),
    # YouTube-VIS 2022 adds long videos to the validation set only: its train split is 2021's (the
    # reference trains on ytvis_2021_train and tests on ytvis_2022_val).
    "ytvis22": ("ytvis_2022", 40, 10, 10),
    # OVIS clips hold many more objects (crowds); the reference keeps every GT of a clip, so the cap on
    # instances per clip is raised (an assumption: 40 keeps all but the most crowded clips).
    "ovis": ("ovis", 25, 20, 40),
}


def tracker_training_config(name: str):
  """The Table 1 R50 config of dataset `name` (a key of DATASETS)."""
  if name not in DATASETS:
    raise ValueError(f"configs/r50_common.py: dataset must be one of {sorted(DATASETS)}, got {name!r}")
  dataset, num_classes, max_num, max_instances = DATASETS[name]
  config = base.get_base_config()
  config.model.num_classes = num_classes
  config.data.dataset = dataset
  config.data.max_instances = max_instances
  config.data.num_frames = 5
  config.data.sampling_frame_range = 2
  config.data.coco_ratio = 1.0
  config.inference.max_num = max_num
  config.inference.min_size_test = 480
  config.train.task = "tracker"
  config.train.learning_rate = 1e-4
  config.train.weight_decay = 0.05
  config.train.decay_steps = (112000,)
  config.train.warmup_steps = 10
  config.train.clip_grad_norm = 0.01
  config.num_train_steps = 160000
  config.batch_size = 8
  return config
