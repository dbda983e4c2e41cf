"""ViT-L offline O2VIS (LOMM offline ViT-L): the refiner and training fields of the offline setting.

  python scripts/train.py --config configs/offline_vitl.py:DATASET --workdir DIR
      --config.init_checkpoint=ONLINE_VITL_EXPORT --config.data.data_dir=BUILT_DATASET

The ViT-L (ViT-Adapter) backbone is issue 12: until it lands, `model.backbone` here is still the library's
ResNet, so a ViT-L checkpoint fails to load (its parameters do not fit the config, named in the error).
Issue 12 sets the backbone fields in this file; the refiner and training fields below are final: the same
refiner (6 layers, C = 256) and schedule as configs/offline_r50.py (40k iterations, lr x0.1 at 28k, 15
frames from a range of 7, time reversal, tracker-output matching for the first half).
"""

from configs import offline_r50, r50_common


def get_config(arg: str = "ytvis19"):
  config = offline_r50.offline_training_fields(r50_common.tracker_training_config(arg))
  # TODO(issue 12): the ViT-L backbone (model.backbone) and its test size.
  return config
