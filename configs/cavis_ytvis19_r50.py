"""CAVIS R50 on ytvis19 (CAVIS_Online_R50.yaml): CAIT training on a frozen, converted CAVIS segmenter.

  python scripts/train.py --config configs/cavis_ytvis19_r50.py --workdir DIR --config.init_checkpoint=CONVERTED
      --config.data.data_dir=BUILT_DATASET

Variant `configs/cavis_ytvis19_r50.py:segmenter` (CAVIS_Segmenter_R50.yaml): the segmenter stage; the segmenter
and the ReID head train from --config.init_checkpoint=MASK2FORMER_COCO (converted); its export is
the CONVERTED above.

Values: configs/cavis_common.py.
"""

from configs import cavis_common


def get_config(arg: str = ""):
  return cavis_common.get_variant("ytvis19", "r50", arg)
