"""O2VIS on a Swin-L segmenter, ytvis21: the Table 1 recipe on a converted Swin-L checkpoint (200 queries).

  python scripts/train.py --config configs/ytvis21_swinl.py --workdir DIR --config.init_checkpoint=CONVERTED
      --config.data.data_dir=BUILT_DATASET

Values: configs/swinl_common.py (no Swin-L row in the O2VIS paper; see there).
"""

from configs import swinl_common


def get_config():
  return swinl_common.tracker_training_config("ytvis21")
