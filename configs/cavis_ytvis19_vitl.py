"""CAVIS ViT-L (DINOv2 + ViT-Adapter) on ytvis19 (CAVIS_Online_ViTL.yaml: 200 queries): CAIT training on a frozen, converted CAVIS
segmenter. Fails with a message naming the backbone when o2vis_jax.models.backbones does not have it.

  python scripts/train.py --config configs/cavis_ytvis19_vitl.py --workdir DIR --config.init_checkpoint=CONVERTED
      --config.data.data_dir=BUILT_DATASET

Variant `configs/cavis_ytvis19_vitl.py:segmenter` (CAVIS_Segmenter_ViTL.yaml): the segmenter stage; the segmenter
and the ReID head train from --config.init_checkpoint=MASK2FORMER_COCO (converted); its export is
the CONVERTED above.

Values: configs/cavis_common.py.
"""

from configs import cavis_common


def get_config(arg: str = ""):
  return cavis_common.get_variant("ytvis19", "vitl", arg)
