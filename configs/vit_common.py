"""The ViT settings of O2VIS / LOMM (not a config file itself: `configs/<dataset>_vitl.py`,
`configs/ovis_vith.py` and `configs/offline_vitl.py` call `with_vit_backbone`).

LOMM_Online_ViTL.yaml / LOMM_Offline_ViTL.yaml (ytvis19, ytvis21, ytvis22, ovis) are the R50 settings
(configs/r50_common.py, configs/offline_r50.py: schedule, clips, inference at shorter side 480) with
  - the backbone D2VitAdapterDinoV2 'vitl': DINOv2 ViT-L/16 (24 blocks, D = 1024, pos-embed grid 37 x 37 of
    a 592 pretrain size) + the memory-efficient ViT-Adapter (models/backbones/vit_adapter.py), frozen;
  - 200 object queries (NUM_OBJECT_QUERIES: 200).
LOMM_Online_ViTH.yaml (ovis only): LOMM's SAMAdapter 'vith' (SAM ViT-H image encoder: 32 blocks, D = 1280,
windows of 14 with global blocks 7, 15, 23, 31, relative positions; the adapter with injectors), 200 queries.

The segmenter comes from a converted checkpoint (`--config.init_checkpoint`): the released DVIS++ / LOMM
ViT-L weights (scripts/convert_checkpoint.py; the backbone alone:
`o2vis_jax.checkpoint_conversion.backbone_from_detectron2`). No ViT-H O2VIS weights were released: a ViT-H
segmenter is trained from the SAM image encoder (`checkpoint_conversion.backbones.sam_encoder_from_sam`).

Options for training a large backbone: `config.model.backbone.remat=True` (jax.checkpoint per ViT block)
and `config.model.dtype='bfloat16'` (bf16 compute, float32 params; softmax and deformable sampling
locations stay in float32).
"""

from o2vis_jax.models.backbones import vit_adapter

# name: (ViT variant, authors' preset name, queries)
SETTINGS = {"vitl": ("dinov2", "vitl", 200), "vith": ("sam", "vith", 200)}


def with_vit_backbone(config, name: str = "vitl"):
  """`config` (an R50 setting) with the ViT backbone `name` ('vitl' | 'vith') and its query count."""
  if name not in SETTINGS:
    raise ValueError(f"configs/vit_common.py: backbone must be one of {sorted(SETTINGS)}, got {name!r}")
  vit, preset, num_queries = SETTINGS[name]
  config.model.backbone = vit_adapter.backbone_config(vit, preset)
  config.model.num_queries = num_queries
  return config
