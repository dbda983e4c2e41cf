"""R50 O2VIS on YouTube-VIS 2021 (K=40): Table 1 setting, tracker training on a converted segmenter.

  python scripts/train.py --config configs/ytvis21_r50.py --workdir DIR --config.init_checkpoint=CONVERTED
      --config.data.data_dir=BUILT_DATASET [--config.data.coco_data_dir=BUILT_COCO]

Values: configs/r50_common.py. Ablations of Table 3: configs/ablations_r50.py.
"""

from configs import r50_common


def get_config():
  return r50_common.tracker_training_config("ytvis21")
