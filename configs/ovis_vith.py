"""ViT-H O2VIS on OVIS (K=25): LOMM_Online_ViTH.yaml (LOMM's SAMAdapter: SAM ViT-H + ViT-Adapter with
injectors), tracker training on a ViT-H segmenter (no ViT-H weights were released: train the segmenter from
the SAM image encoder first, checkpoint_conversion.backbones.sam_encoder_from_sam).

  python scripts/train.py --config configs/ovis_vith.py --workdir DIR --config.init_checkpoint=CONVERTED
      --config.data.data_dir=BUILT_DATASET [--config.data.coco_data_dir=BUILT_COCO]

Values: configs/r50_common.py and configs/vit_common.py.
"""

from configs import r50_common, vit_common


def get_config():
  return vit_common.with_vit_backbone(r50_common.tracker_training_config("ovis"), "vith")
