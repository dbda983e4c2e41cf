"""ViT-L offline O2VIS (LOMM offline ViT-L): the refiner and training fields of the offline setting.

  python scripts/train.py --config configs/offline_vitl.py:DATASET --workdir DIR
      --config.init_checkpoint=ONLINE_VITL_EXPORT --config.data.data_dir=BUILT_DATASET

The backbone is DINOv2 ViT-L + the memory-efficient ViT-Adapter with 200 queries (configs/vit_common.py);
the refiner and training fields are configs/offline_r50.py's: the same refiner (6 layers, C = 256) and
schedule (40k iterations, lr x0.1 at 28k, 15 frames from a range of 7, time reversal, tracker-output
matching for the first half).
"""

from configs import offline_r50, r50_common, vit_common


def get_config(arg: str = "ytvis19"):
  config = offline_r50.offline_training_fields(r50_common.tracker_training_config(arg))
  # LOMM_Offline_ViTL.yaml: the ViT-L backbone and 200 queries over the R50 offline setting; the test size
  # is the R50 one (shorter side 480, r50_common).
  return vit_common.with_vit_backbone(config, "vitl")
