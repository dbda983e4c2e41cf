"""The O2VIS tracker on a Swin-L segmenter (not a config file itself: `configs/<dataset>_swinl.py` call
`tracker_training_config`).

The O2VIS / LOMM papers report no Swin-L row: this is the Table 1 R50 recipe (configs/r50_common.py:
tracker training on a frozen, converted segmenter; same data, schedule and inference) with the Swin-L
segmenter of the released Mask2Former-family Swin-L checkpoints (Mask2Former VIS, DVIS, DVIS++, CAVIS,
DVIS-DAQ: D2SwinTransformer, EMBED_DIM 192, DEPTHS (2, 2, 18, 2), NUM_HEADS (6, 12, 24, 48), WINDOW_SIZE 12,
PRETRAIN_IMG_SIZE 384, 200 queries). `config.model` is replaced by the converted checkpoint's when
`--config.init_checkpoint=DIR` is set (scripts/convert_checkpoint.py reads the Swin-L sizes off the weights).
Training the Swin-L segmenter itself: `--config.train.task=segmenter --config.model.backbone.remat=True`
(jax.checkpoint per Swin block) and `--config.model.dtype=bfloat16`.
"""

from configs import r50_common
from o2vis_jax.models.backbones import swin

DATASETS = r50_common.DATASETS
NUM_QUERIES = 200      # the Swin-L VIS models' MODEL.MASK_FORMER.NUM_OBJECT_QUERIES


def tracker_training_config(name: str):
  """The Swin-L config of dataset `name` (a key of DATASETS)."""
  config = r50_common.tracker_training_config(name)
  config.model.backbone = swin.backbone_config("large")
  config.model.num_queries = NUM_QUERIES
  return config
