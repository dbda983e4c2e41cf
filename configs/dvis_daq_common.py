"""The DVIS-DAQ settings (not a config file itself: `configs/dvis_daq_*.py` call `tracker_training_config`).

DAQ_Online_<backbone>.yaml of github zhang-tao-whu/DVIS_Plus (folder DVIS_DAQ/configs/dvis_daq/): the tracker
trains on a frozen, converted DVIS++ segmenter (`config.init_checkpoint`) with the R50 schedule of
configs/r50_common.py (AdamW 1e-4, wd 0.05, 160k steps, lr x0.1 at 112k, batch 8 clips, range 2, clip 0.01);
the emergence / disappearance schedule: 2-frame clips before step 10k, 5-frame clips after
(USING_FRAME_NUM [2, 5], STEPS [10000]); thresholds YTVIS training 0.02 / inference 0.01, OVIS 0.1 / 0.1 with
OVIS_INFER (the slot branch gates the tracks); AUX 0.01, DIS_FG 0.01, noise 5 frames, top 20 (MAX_NUM) on
every dataset, test size 480 (MinVIS_R50.yaml). Swin-L / ViT-L: 200 queries (NUM_NEW_INS = N).

`num_slots` (the sequence table, S): 100 covers a YouTube-VIS training clip of 5 frames and a chunk of
streaming inference (live sequences + the ones a chunk creates) for the published models; raise it if
inference reports a full table (config.association.dvis_daq.on_overflow).
"""

from configs import r50_common
from o2vis_jax import association

# name: (r50_common dataset key, OVIS_INFER, TRAINING_SELECT_THRESHOLD, INFERENCE_SELECT_THRESHOLD)
DATASETS = {"ytvis19": ("ytvis19", False, 0.02, 0.01), "ytvis21": ("ytvis21", False, 0.02, 0.01),
            "ovis": ("ovis", True, 0.1, 0.1)}
# backbone: (config.model.backbone.name, its preset arguments, queries) of DAQ_Online_{R50, SwinL, VitAdapterL}
BACKBONES = {"r50": ("resnet", (), 100), "swinl": ("swin", ("large",), 200),
             "vitl": ("vit_adapter", ("dinov2", "vitl"), 200)}


def tracker_training_config(dataset: str, backbone: str = "r50"):
  """DAQ_Online_<backbone>.yaml of `dataset` (a key of DATASETS) as a config."""
  if dataset not in DATASETS:
    raise ValueError(f"configs/dvis_daq_common.py: dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
  if backbone not in BACKBONES:
    raise ValueError(f"configs/dvis_daq_common.py: backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
  name, ovis_infer, training_threshold, inference_threshold = DATASETS[dataset]
  config = association.with_method(r50_common.tracker_training_config(name), "dvis_daq")
  config.association.dvis_daq.update(ovis_infer=ovis_infer, training_select_threshold=training_threshold,
                                     inference_select_threshold=inference_threshold, max_num=20,
                                     using_frame_num=(2, 5), steps=(10000,))
  config.inference.max_num = 20
  config.inference.min_size_test = 480
  backbone_name, preset, num_queries = BACKBONES[backbone]
  if backbone != "r50":
    from o2vis_jax.models import backbones
    if backbone_name not in backbones.names():
      raise ValueError(f"configs/dvis_daq_*_{backbone}.py: config.model.backbone.name={backbone_name!r} is not "
                       f"available in o2vis_jax.models.backbones (known: {list(backbones.names())})")
    config.model.backbone = backbones.BACKBONES[backbone_name].backbone_config(*preset)
    config.model.num_queries = num_queries
  return config
