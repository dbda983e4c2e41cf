"""DVIS-DAQ r50 on YouTube-VIS 2019 (DAQ_Online_*.yaml): tracker training on a frozen, converted DVIS++ segmenter.

  python scripts/train.py --config configs/dvis_daq_ytvis19_r50.py --workdir DIR --config.init_checkpoint=CONVERTED
      --config.data.data_dir=BUILT_DATASET

Values: configs/dvis_daq_common.py.
"""

from configs import dvis_daq_common


def get_config():
  return dvis_daq_common.tracker_training_config("ytvis19", "r50")
