"""The CAVIS settings (not a config file itself: `configs/cavis_*.py` call `tracker_training_config`).

CAVIS_Online_<backbone>.yaml of github Seung-Hun-Lee/CAVIS: tracker (CAIT) training on a frozen, converted
CAVIS segmenter (its ReID head comes with the tracker weights: `config.init_checkpoint` a converted CAVIS
checkpoint, `config.init_tracker` to start from its association weights): the R50 schedule of
configs/r50_common.py (AdamW 1e-4, wd 0.05, 160k steps, lr x0.1 at 112k, batch 8 clips of 5 frames, range 2,
clip 0.01), segmenter-guided matching for the first half, the reference-query contrastive loss on for
YouTube-VIS and off for OVIS (MODEL.TRACKER.USE_CL), context filter 9, ReID head 3 layers of 256, test size
448 (MinVIS_R50.yaml), top-10 per video on YouTube-VIS and 20 on OVIS (MAX_NUM: the YouTube-VIS base config
sets 10, OVIS keeps the default 20).

Segmenter stage (`segmenter_training_config`, the configs' `:segmenter` variant; CAVIS_Segmenter_<backbone>.yaml
over MinVIS_R50.yaml): the Mask2Former segmenter and CAVIS's ReID head trained together, starting from the
Mask2Former COCO instance weights (`config.init_checkpoint`: model_final_3c8ec9.pkl converted for R50), with
the per-frame Mask2Former losses (CE / BCE / dice 2 / 5 / 5, no-object 0.1, deep supervision; every GT of the
clip a target of every frame) plus L_CTX and L_PCC (weight 2 each, and 2 on their aux terms); no Eq. 13
contrastive loss (O2VIS's). 40k steps, lr 1e-4 x0.1 at 28k, warm-up 10, batch 8 clips of 3 frames (range 2),
backbone lr x0.1, COCO pseudo-clips 1:1 as the online stage. It exports {'segmenter', 'tracker'}: the
association params hold the trained ReID head (and a fresh CAIT), which the tracker stage keeps.
"""

from configs import r50_common
from o2vis_jax import association

# name: (r50_common dataset key, reference-query contrastive loss (USE_CL))
DATASETS = {"ytvis19": ("ytvis19", True), "ytvis21": ("ytvis21", True), "ovis": ("ovis", False)}
# backbone: (config.model.backbone.name, its preset arguments, queries) of CAVIS_Online_{R50, SwinL, ViTL}.yaml
BACKBONES = {"r50": ("resnet", (), 100), "swinl": ("swin", ("large",), 200),
             "vitl": ("vit_adapter", ("dinov2", "vitl"), 200)}

def tracker_training_config(dataset: str, backbone: str = "r50"):
  """CAVIS_Online_<backbone>.yaml of `dataset` (a key of DATASETS) as a config."""
  if dataset not in DATASETS:
    raise ValueError(f"configs/cavis_common.py: dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
  if backbone not in BACKBONES:
    raise ValueError(f"configs/cavis_common.py: backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
  name, contrastive = DATASETS[dataset]
  config = association.with_method(r50_common.tracker_training_config(name), "cavis")
  config.association.cavis.reference_contrastive = contrastive
  config.association.cavis.context_filter_size = 9
  config.inference.min_size_test = 448
  backbone_name, preset, num_queries = BACKBONES[backbone]
  if backbone != "r50":
    from o2vis_jax.models import backbones
    if backbone_name not in backbones.names():
      raise ValueError(f"configs/cavis_*_{backbone}.py: config.model.backbone.name={backbone_name!r} is not "
                       f"available in o2vis_jax.models.backbones (known: {list(backbones.names())}); it "
                       "comes with issue 12 (the published backbones)")
    config.model.backbone = backbones.BACKBONES[backbone_name].backbone_config(*preset)
    config.model.num_queries = num_queries
  return config


def segmenter_training_config(dataset: str, backbone: str = "r50"):
  """CAVIS_Segmenter_<backbone>.yaml of `dataset` as a config (module docstring)."""
  return segmenter_fields(tracker_training_config(dataset, backbone))


def segmenter_fields(config):
  """The segmenter-stage fields over an online config (also the tiny config's `segmenter` variant)."""
  config.train.task = "segmenter"
  config.loss.contrastive_weight = 0.0    # CAVIS_segmenter has no Eq. 13 (O2VIS's segmenter loss).
  config.association.cavis.ctx_weight = 2.0
  config.association.cavis.proto_weight = 2.0
  config.train.backbone_lr_multiplier = 0.1
  config.data.num_frames = 3
  config.data.sampling_frame_range = 2
  config.train.decay_steps = (28000,)
  config.num_train_steps = 40000
  return config


def get_variant(dataset: str, backbone: str, arg: str):
  """The config of `configs/cavis_<dataset>_<backbone>.py:arg`: '' (the online tracker stage) or
  'segmenter' (the segmenter stage)."""
  if arg == "":
    return tracker_training_config(dataset, backbone)
  if arg == "segmenter":
    return segmenter_training_config(dataset, backbone)
  raise ValueError(f"configs/cavis_{dataset}_{backbone}.py: variant must be '' (tracker stage) or "
                   f"'segmenter', got {arg!r}")
