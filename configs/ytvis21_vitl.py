"""ViT-L O2VIS on YouTube-VIS 2021 (K=40): LOMM_Online_ViTL.yaml, tracker training on a converted ViT-L segmenter.

  python scripts/train.py --config configs/ytvis21_vitl.py --workdir DIR --config.init_checkpoint=CONVERTED
      --config.data.data_dir=BUILT_DATASET [--config.data.coco_data_dir=BUILT_COCO]

Values: configs/r50_common.py (schedule, clips, inference) and configs/vit_common.py (backbone, 200 queries).
"""

from configs import r50_common, vit_common


def get_config():
  return vit_common.with_vit_backbone(r50_common.tracker_training_config("ytvis21"), "vitl")
