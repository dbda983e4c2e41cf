r"""Writes tests/fixtures/checkpoint_layouts.json: the key names and shapes of every released checkpoint
of the Mask2Former family that scripts/convert_checkpoint.py recognises (no weights), built by
instantiating the AUTHORS' modules, so that tests/test_released_checkpoints.py can test detection and
conversion without the files (which cannot be downloaded here).

  python scripts/make_checkpoint_layouts.py            # the default git dirs under /work/.mirror
  python scripts/make_checkpoint_layouts.py --dvis_plus_git_dir D --cavis_git_dir D --lomm_git_dir D \
      --mask2former_git_dir D --detectron2_git_dir D

Needs torch (2.13.0 CPU was used). The authors' code is not part of this repository: at run time the
needed packages of each repository are copied into a temporary directory (their `__init__.py` files
emptied, so that only the modules used are imported), with stubs in `sys.modules` for detectron2's
config / layers / registries (`configurable` as the identity, `Conv2d` as nn.Conv2d with its `norm`
submodule, `get_norm`, `FrozenBatchNorm2d` with its four buffers, `ShapeSpec`), fvcore's weight init,
timm's helpers and the compiled deformable-attention op. Real-size modules are built on the `meta`
device (shapes only, no memory).

Modules (source repository: file: class):
  backbone r50        detectron2: modeling/backbone/resnet.py: build_resnet_backbone (Mask2Former's R50:
                      FrozenBN, STRIDE_IN_1X1 False)
  backbone swinl      Mask2Former: modeling/backbone/swin.py: D2SwinTransformer (Swin-L 384, window 12)
  backbone vitl       DVIS_Plus: DVIS_DAQ/mask2former/modeling/backbones_vitAdapter: DinoV2ViTAdapter
                      (get_models('vitl'), the configs' get_adapter_args)
  pixel_decoder       Mask2Former: MSDeformAttnPixelDecoder (6 layers, conv 256, GN)
  predictor m2f       Mask2Former: MultiScaleMaskedTransformerDecoder (COCO)
  predictor minvis    DVIS_Plus: VideoMultiScaleMaskedTransformerDecoder_minvis (MinVIS / LOMM segmenter)
  predictor dvisplus  DVIS_Plus: VideoMultiScaleMaskedTransformerDecoder_dvisPlus (ReID head, C -> C)
  predictor cavis     CAVIS: VideoMultiScaleMaskedTransformerDecoder_cavis (ReID head 2C -> C, laplacian)
  tracker lomm        LOMM: lomm/lomm_tracker.py: LOMM_Tracker (T_E + T_A)
  tracker dvisplus    DVIS_Plus: dvis_Plus/tracker.py: ReferringTracker_noiser (hidden 2C: REID_BRANCH)
  tracker cavis       CAVIS: cavis/video_cavis_modules.py: CAVIS_Tracker
  tracker daq         DVIS_Plus: DVIS_DAQ/dvis_daq/track_module.py: VideoInstanceCutter
  refiner lomm        LOMM: lomm/refiner.py: TemporalRefiner
  refiner dvisplus    DVIS_Plus: dvis_Plus/refiner.py: TemporalRefiner (hidden 2C)
  refiner cavis       CAVIS: video_cavis_modules.py: TemporalRefiner
  refiner daq         DVIS_Plus: DVIS_DAQ/dvis_daq/refiner.py: TemporalRefiner
each at the released sizes ("real") and at tiny sizes ("tiny": hidden 32, 5 classes, 8 queries, 2 decoder
layers, small backbones) that the tests convert with random arrays.

Output JSON: {"sources": {repo: commit}, "components": {"real"|"tiny": {component: {key: shape}}},
"checkpoints": {name: {"parts": [[prefix, component], ...], "method", "config", "stage", "backbone",
"queries", "classes"}}, "vit_config": {size: the `config` argument of backbone_from_detectron2}}: a
checkpoint's state dict is the union over its parts of prefix + key (num_batches_tracked: int64 scalars).
"""

import argparse
import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "checkpoint_layouts.json")
MIRROR = "/work/.mirror"
REPOS = {"dvis_plus": "zhang-tao-whu+DVIS_Plus", "cavis": "Seung-Hun-Lee+CAVIS", "lomm": "Seung-Hun-Lee+LOMM",
         "mask2former": "facebookresearch+Mask2Former", "detectron2": "facebookresearch+detectron2"}
STUBBED = ("detectron2", "fvcore", "timm", "MultiScaleDeformableAttention")
PACKAGES = ("mask2former", "mask2former_video", "dvis_Plus", "dvis_daq", "lomm", "cavis")

# dec_layers: the constructor's (from_config passes MASK_FORMER.DEC_LAYERS - 1: 10 - 1 in the released configs).
REAL = dict(hidden=256, ffn=2048, enc_ffn=1024, dec_layers=9, tracker_layers=6, heads=8, reid_hidden=256,
            reid_layers=3, conv_dim=256)
TINY = dict(hidden=32, ffn=64, enc_ffn=48, dec_layers=3, tracker_layers=2, heads=4, reid_hidden=24,
            reid_layers=3, conv_dim=32)


# ---------------------------------------------------------------------------------------------- stubs
def install_stubs():
  import torch
  from torch import nn

  class AutoModule(types.ModuleType):
    """A stub module: any attribute not given is a harmless placeholder class."""
    def __getattr__(self, name):
      if name.startswith("__"):
        raise AttributeError(name)
      value = type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: None})
      setattr(self, name, value)
      return value

  class Finder:
    def find_spec(self, fullname, path=None, target=None):
      if fullname.split(".")[0] in STUBBED and fullname not in sys.modules:
        import importlib.machinery
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
      return None

    def create_module(self, spec):
      module = AutoModule(spec.name)
      module.__path__ = []
      return module

    def exec_module(self, module):
      pass

  sys.meta_path.insert(0, Finder())

  class Registry:
    def __init__(self, *args, **kwargs):
      pass

    def register(self, *args, **kwargs):
      return (lambda obj: obj) if not args or isinstance(args[0], str) else args[0]

  class FrozenBatchNorm2d(nn.Module):
    def __init__(self, num_features, eps=1e-5):
      super().__init__()
      for name, value in (("weight", 1), ("bias", 0), ("running_mean", 0), ("running_var", 1)):
        self.register_buffer(name, torch.full((num_features,), float(value)))

  def get_norm(norm, out_channels):
    if norm in (None, ""):
      return None
    return {"FrozenBN": FrozenBatchNorm2d, "BN": nn.BatchNorm2d, "SyncBN": nn.BatchNorm2d,
            "GN": lambda c: nn.GroupNorm(32, c)}[norm](out_channels) if isinstance(norm, str) else norm(out_channels)

  class Conv2d(nn.Conv2d):
    def __init__(self, *args, **kwargs):
      norm, activation = kwargs.pop("norm", None), kwargs.pop("activation", None)
      super().__init__(*args, **kwargs)
      self.norm, self.activation = norm, activation

  class CNNBlockBase(nn.Module):
    def __init__(self, in_channels, out_channels, stride):
      super().__init__()
      self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def freeze(self):
      return self

  class Backbone(nn.Module):
    def __init__(self, *args, **kwargs):
      super().__init__()

  class DropPath(nn.Module):
    def __init__(self, *args, **kwargs):
      super().__init__()

  def ShapeSpec(channels=None, height=None, width=None, stride=None):
    return types.SimpleNamespace(channels=channels, height=height, width=width, stride=stride)

  noop = lambda *args, **kwargs: None
  registry = Registry()
  attrs = {
      "detectron2.config": dict(configurable=lambda f=None, **kw: f if f is not None else (lambda g: g)),
      "detectron2.layers": dict(Conv2d=Conv2d, get_norm=get_norm, ShapeSpec=ShapeSpec, CNNBlockBase=CNNBlockBase,
                                FrozenBatchNorm2d=FrozenBatchNorm2d, DeformConv=None, ModulatedDeformConv=None),
      "detectron2.modeling": dict(SEM_SEG_HEADS_REGISTRY=registry, BACKBONE_REGISTRY=registry, Backbone=Backbone,
                                  ShapeSpec=ShapeSpec, META_ARCH_REGISTRY=registry),
      "detectron2.utils.registry": dict(Registry=Registry),
      "fvcore.nn": dict(weight_init=types.SimpleNamespace(c2_xavier_fill=noop, c2_msra_fill=noop)),
      "fvcore.nn.weight_init": dict(c2_xavier_fill=noop, c2_msra_fill=noop),
      "timm.models.layers": dict(DropPath=DropPath, to_2tuple=lambda x: x if isinstance(x, tuple) else (x, x),
                                 trunc_normal_=noop),
  }
  for name, values in attrs.items():
    module = importlib.import_module(name)
    module.__dict__.update(values)
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  # Drop-path schedules call .item() on a linspace: computed on the CPU even when building on `meta`.
  linspace = torch.linspace
  torch.linspace = lambda *args, **kwargs: linspace(*args, **dict(kwargs, device="cpu"))
  return dict(ShapeSpec=ShapeSpec)


def copy_repo(git_dir, subdir, workdir):
  """The .py files of the PACKAGES under `subdir` of the repository, __init__.py emptied (except the
  ViT-Adapter's and the deformable-attention ops', which re-export their modules)."""
  git = ["git", f"--git-dir={git_dir}"]
  commit = subprocess.check_output(git + ["rev-parse", "HEAD"], text=True).strip()
  names = subprocess.check_output(git + ["ls-tree", "-r", "--name-only", "HEAD", subdir or "."], text=True).split()
  for name in names:
    rel = name[len(subdir) + 1:] if subdir else name
    if not rel.endswith(".py") or rel.split("/")[0] not in PACKAGES:
      continue
    full = os.path.join(workdir, rel)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    keep = "backbones_vitAdapter/" in rel or "/ops/" in rel     # their __init__ re-export what is used
    text = "" if rel.endswith("__init__.py") and not keep else subprocess.check_output(git + ["show", f"HEAD:{name}"], text=True)
    with open(full, "w") as f:
      f.write(text)
  for directory, _, _ in os.walk(workdir):
    open(os.path.join(directory, "__init__.py"), "a").close()
  return commit


class Repo:
  """Imports from one repository's copy (sys.modules of the PACKAGES cleared in between)."""
  def __init__(self, git_dir, subdir=""):
    self.workdir = tempfile.mkdtemp(prefix="layouts_")
    self.commit = copy_repo(git_dir, subdir, self.workdir)

  def __enter__(self):
    for name in list(sys.modules):
      if name.split(".")[0] in PACKAGES:
        del sys.modules[name]
    sys.path.insert(0, self.workdir)
    return self

  def module(self, name):
    return importlib.import_module(name)

  def __exit__(self, *exc):
    sys.path.remove(self.workdir)
    shutil.rmtree(self.workdir, ignore_errors=True)


def shapes(module):
  return {k: list(v.shape) for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------- modules
def resnet(args, stubs, size):
  git = os.path.join(args.detectron2_git_dir)
  text = subprocess.check_output(["git", f"--git-dir={git}", "show", "HEAD:detectron2/modeling/backbone/resnet.py"],
                                 text=True)
  text = text.replace("from .backbone import Backbone", "from detectron2.modeling import Backbone")
  text = text.replace("from .build import BACKBONE_REGISTRY", "from detectron2.modeling import BACKBONE_REGISTRY")
  module = types.ModuleType("d2_resnet")
  exec(compile(text, "d2_resnet.py", "exec"), module.__dict__)
  tiny = size == "tiny"
  resnets = types.SimpleNamespace(
      DEPTH=50, NORM="FrozenBN", STEM_OUT_CHANNELS=8 if tiny else 64, RES2_OUT_CHANNELS=16 if tiny else 256,
      STRIDE_IN_1X1=False, NUM_GROUPS=1, WIDTH_PER_GROUP=4 if tiny else 64, RES5_DILATION=1,
      DEFORM_ON_PER_STAGE=[False] * 4, DEFORM_MODULATED=False, DEFORM_NUM_GROUPS=1,
      OUT_FEATURES=["res2", "res3", "res4", "res5"])
  cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(RESNETS=resnets, BACKBONE=types.SimpleNamespace(FREEZE_AT=0)))
  model = module.build_resnet_backbone(cfg, stubs["ShapeSpec"](channels=3))
  channels = [resnets.RES2_OUT_CHANNELS * 2 ** i for i in range(4)]
  return shapes(model), channels


def swin(args, size):
  text = subprocess.check_output(["git", f"--git-dir={args.mask2former_git_dir}", "show",
                                  "HEAD:mask2former/modeling/backbone/swin.py"], text=True)
  module = types.ModuleType("d2_swin")
  exec(compile(text, "d2_swin.py", "exec"), module.__dict__)
  swin_cfg = dict(PRETRAIN_IMG_SIZE=384, PATCH_SIZE=4, EMBED_DIM=192, DEPTHS=[2, 2, 18, 2], NUM_HEADS=[6, 12, 24, 48],
                  WINDOW_SIZE=12, MLP_RATIO=4.0, QKV_BIAS=True, QK_SCALE=None, DROP_RATE=0.0, ATTN_DROP_RATE=0.0,
                  DROP_PATH_RATE=0.3, APE=False, PATCH_NORM=True, USE_CHECKPOINT=False,
                  OUT_FEATURES=["res2", "res3", "res4", "res5"])
  if size == "tiny":
    swin_cfg.update(PRETRAIN_IMG_SIZE=32, EMBED_DIM=8, DEPTHS=[2, 1, 2, 1], NUM_HEADS=[1, 2, 2, 4], WINDOW_SIZE=4)
  cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(SWIN=types.SimpleNamespace(**swin_cfg)))
  model = module.D2SwinTransformer(cfg, None)
  return shapes(model), [swin_cfg["EMBED_DIM"] * 2 ** i for i in range(4)]


def vit_adapter(repo, size):
  backbones = repo.module("mask2former.modeling.backbones_vitAdapter.backbones")
  adapter = repo.module("mask2former.modeling.backbones_vitAdapter.adapter")
  layers = repo.module("mask2former.modeling.backbones_vitAdapter.layers")
  vit_args = dict(img_size=592, patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
                  init_values=1.0e-05, ffn_layer="mlp", block_chunks=0, qkv_bias=True, proj_bias=True, ffn_bias=True)
  adapter_args = dict(pretrain_size=592, init_values=1e-6, conv_inplane=64, n_points=4, deform_num_heads=16,
                      with_cffn=True, cffn_ratio=0.25, deform_ratio=0.5, add_vit_feature=True,
                      use_extra_extractor=True, with_cp=False,
                      interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]])
  if size == "tiny":
    vit_args.update(img_size=112, embed_dim=16, depth=4, num_heads=2)
    adapter_args.update(pretrain_size=112, conv_inplane=8, n_points=2, deform_num_heads=2,
                        interaction_indexes=[[0, 0], [1, 1], [2, 2], [3, 3]])
  vit = backbones.DinoVisionTransformer(
      block_fn=functools.partial(layers.NestedTensorBlock, attn_class=layers.MemEffAttention), **vit_args)
  model = adapter.DinoV2ViTAdapter(vit_module=vit, **adapter_args)
  VIT_CONFIGS[size] = {"MODEL.VIT_ADAPTER": {"NAME": "vitl"}, "get_models": vit_args, "get_adapter_args": adapter_args,
                       "norm_eps": 1e-6}
  return shapes(model), [vit_args["embed_dim"]] * 4


def pixel_decoder(repo, stubs, channels, s):
  msd = repo.module("mask2former.modeling.pixel_decoder.msdeformattn")
  spec = stubs["ShapeSpec"]
  input_shape = {f"res{i + 2}": spec(channels=c, stride=4 * 2 ** i) for i, c in enumerate(channels)}
  model = msd.MSDeformAttnPixelDecoder(
      input_shape, transformer_dropout=0.0, transformer_nheads=s["heads"], transformer_dim_feedforward=s["enc_ffn"],
      transformer_enc_layers=6 if s is REAL else 2, conv_dim=s["conv_dim"], mask_dim=s["conv_dim"], norm="GN",
      transformer_in_features=["res3", "res4", "res5"], common_stride=4)
  return shapes(model)


def predictor(repo, kind, s, classes, queries):
  common = dict(in_channels=s["conv_dim"], mask_classification=True, num_classes=classes, hidden_dim=s["hidden"],
                num_queries=queries, nheads=s["heads"], dim_feedforward=s["ffn"], dec_layers=s["dec_layers"],
                pre_norm=False, mask_dim=s["conv_dim"], enforce_input_project=False)
  if kind == "m2f":
    module = repo.module("mask2former.modeling.transformer_decoder.mask2former_transformer_decoder")
    return shapes(module.MultiScaleMaskedTransformerDecoder(**common))
  if kind == "minvis":
    module = repo.module("dvis_Plus.video_mask2former_transformer_decoder")
    return shapes(module.VideoMultiScaleMaskedTransformerDecoder_minvis(num_frames=1, **common))
  if kind == "dvisplus":
    module = repo.module("dvis_Plus.video_mask2former_transformer_decoder")
    return shapes(module.VideoMultiScaleMaskedTransformerDecoder_dvisPlus(
        num_frames=1, num_reid_head_layers=s["reid_layers"], reid_hidden_dim=s["reid_hidden"], **common))
  module = repo.module("cavis.video_mask2former_transformer_decoder")
  return shapes(module.VideoMultiScaleMaskedTransformerDecoder_cavis(
      num_frames=1, num_reid_head_layers=s["reid_layers"], reid_hidden_dim=s["reid_hidden"], context_filter_size=9,
      **common))


def association(repo, kind, s, classes):
  c, ffn, layers, heads = s["hidden"], s["ffn"], s["tracker_layers"], s["heads"]
  if kind == "lomm_tracker":
    m = repo.module("lomm.lomm_tracker")
    return shapes(m.LOMM_Tracker(hidden_channel=c, feedforward_channel=ffn, num_head=heads, decoder_layer_num=layers,
                                 mask_dim=c, class_num=classes))
  if kind == "lomm_refiner":
    m = repo.module("lomm.refiner")
    return shapes(m.TemporalRefiner(hidden_channel=c, feedforward_channel=ffn, num_head=heads,
                                    decoder_layer_num=layers, mask_dim=c, class_num=classes))
  if kind == "dvisplus_tracker":
    m = repo.module("dvis_Plus.tracker")
    return shapes(m.ReferringTracker_noiser(hidden_channel=2 * c, feedforward_channel=ffn, num_head=heads,
                                            decoder_layer_num=layers, noise_mode="wa", mask_dim=c, class_num=classes))
  if kind == "dvisplus_refiner":
    m = repo.module("dvis_Plus.refiner")
    return shapes(m.TemporalRefiner(hidden_channel=2 * c, feedforward_channel=ffn, num_head=heads,
                                    decoder_layer_num=layers, mask_dim=c, class_num=classes))
  if kind == "cavis_tracker":
    m = repo.module("cavis.video_cavis_modules")
    return shapes(m.CAVIS_Tracker(hidden_channel=c, feedforward_channel=ffn, num_head=heads, decoder_layer_num=layers,
                                  mask_dim=c, class_num=classes))
  if kind == "cavis_refiner":
    m = repo.module("cavis.video_cavis_modules")
    return shapes(m.TemporalRefiner(hidden_channel=c, feedforward_channel=ffn, num_head=heads,
                                    decoder_layer_num=layers, mask_dim=c, class_num=classes))
  if kind == "daq_tracker":
    m = repo.module("dvis_daq.track_module")
    return shapes(m.VideoInstanceCutter(hidden_dim=c, feedforward_dim=ffn, num_head=heads, decoder_layer_num=layers,
                                        mask_dim=c, num_classes=classes, num_slots=5))
  if kind == "daq_refiner":
    m = repo.module("dvis_daq.refiner")
    return shapes(m.TemporalRefiner(hidden_channel=c, feedforward_channel=ffn, num_head=heads,
                                    decoder_layer_num=layers, mask_dim=c, class_num=classes))
  raise ValueError(kind)


# --------------------------------------------------------------------------------------- checkpoints
def checkpoints():
  """name -> (parts, method, config, stage, backbone, queries, classes). Component names get the sizes."""
  out = {}

  def add(name, backbone, predictor_kind, queries, classes, extra=(), method=None, config="", stage="segmenter"):
    parts = [["backbone.", f"backbone_{backbone}"], ["sem_seg_head.pixel_decoder.", f"pixel_decoder_{backbone}"],
             ["sem_seg_head.predictor.", f"predictor_{predictor_kind}_q{queries}_k{classes}"]]
    parts += [[prefix, f"{kind}_k{classes}"] for prefix, kind in extra]
    out[name] = dict(parts=parts, method=method, config=config, stage=stage, backbone=backbone, queries=queries,
                     classes=classes)

  add("mask2former_coco_r50", "r50", "m2f", 100, 80, config="(COCO instance; initialises a YTVIS / OVIS segmenter)")
  add("mask2former_coco_swinl", "swinl", "m2f", 200, 80, config="(COCO instance; initialises a YTVIS / OVIS segmenter)")
  for backbone, queries, config in (("r50", 100, "configs/ytvis19_r50.py"), ("vitl", 200, "configs/ytvis19_vitl.py")):
    add(f"lomm_segmenter_{backbone}", backbone, "minvis", queries, 40, config=config)
    add(f"lomm_online_{backbone}", backbone, "minvis", queries, 40, [("tracker.", "lomm_tracker")], "o2vis", config,
        "online")
    add(f"lomm_offline_{backbone}", backbone, "minvis", queries, 40,
        [("tracker.", "lomm_tracker"), ("refiner.", "lomm_refiner")], "o2vis", config, "offline")
  for backbone, queries in (("r50", 100), ("swinl", 200), ("vitl", 200)):
    config = {"r50": "configs/ytvis19_r50.py", "swinl": "configs/ytvis19_swinl.py", "vitl": "configs/ytvis19_vitl.py"}[backbone]
    add(f"cavis_segmenter_{backbone}", backbone, "cavis", queries, 40, config=config)
    add(f"cavis_online_{backbone}", backbone, "cavis", queries, 40, [("tracker.", "cavis_tracker")], "cavis", config,
        "online")
    add(f"cavis_offline_{backbone}", backbone, "cavis", queries, 40,
        [("tracker.", "cavis_tracker"), ("refiner.", "cavis_refiner")], "cavis", config, "offline")
  for backbone, queries in (("r50", 100), ("r50", 200), ("vitl", 100), ("vitl", 200)):
    config = {"r50": "configs/ytvis19_r50.py", "vitl": "configs/ytvis19_vitl.py"}[backbone]
    suffix = f"{backbone}_q{queries}"
    add(f"dvisplus_segmenter_{suffix}", backbone, "dvisplus", queries, 40, config=config)
    add(f"dvisplus_online_{suffix}", backbone, "dvisplus", queries, 40, [("tracker.", "dvisplus_tracker")], None,
        config, "online")
    add(f"dvisplus_offline_{suffix}", backbone, "dvisplus", queries, 40,
        [("tracker.", "dvisplus_tracker"), ("refiner.", "dvisplus_refiner")], None, config, "offline")
  for backbone, queries in (("r50", 100), ("vitl", 200)):
    config = {"r50": "configs/ytvis19_r50.py", "vitl": "configs/ytvis19_vitl.py"}[backbone]
    add(f"daq_online_{backbone}", backbone, "dvisplus", queries, 40, [("tracker.", "daq_tracker")], "dvis_daq", config,
        "online")
    add(f"daq_offline_{backbone}", backbone, "dvisplus", queries, 40,
        [("tracker.", "daq_tracker"), ("refiner.", "daq_refiner")], "dvis_daq", config, "offline")
  return out


def build(args, size, table):
  import torch
  s = REAL if size == "real" else TINY
  stubs = STUBS
  device = torch.device("meta") if size == "real" else torch.device("cpu")
  wanted = {name for c in table.values() for _, name in c["parts"]}
  tiny = size == "tiny"
  comps, channels = {}, {}

  def k(classes):
    return 5 if tiny else classes

  def q(queries):
    return 8 if tiny else queries
  with torch.device(device):
    comps["backbone_r50"], channels["r50"] = resnet(args, stubs, size)
    comps["backbone_swinl"], channels["swinl"] = swin(args, size)
    with Repo(args.dvis_plus_git_dir, "DVIS_DAQ") as repo:
      comps["backbone_vitl"], channels["vitl"] = vit_adapter(repo, size)
    with Repo(args.mask2former_git_dir) as repo:
      for b in ("r50", "swinl", "vitl"):
        comps[f"pixel_decoder_{b}"] = pixel_decoder(repo, stubs, channels[b], s)
    for name in sorted(wanted):
      if not name.startswith("predictor_"):
        continue
      _, kind, queries, classes = name.split("_")
      source = {"m2f": (args.mask2former_git_dir, ""), "cavis": (args.cavis_git_dir, "")}.get(
          kind, (args.dvis_plus_git_dir, "DVIS_Plus"))
      with Repo(*source) as repo:
        comps[name] = predictor(repo, kind, s, k(int(classes[1:])), q(int(queries[1:])))
    for name in sorted(wanted):
      if name.split("_")[0] not in ("lomm", "cavis", "dvisplus", "daq"):
        continue
      kind, classes = name.rsplit("_", 1)
      source = {"lomm": (args.lomm_git_dir, ""), "cavis": (args.cavis_git_dir, ""),
                "dvisplus": (args.dvis_plus_git_dir, "DVIS_Plus"), "daq": (args.dvis_plus_git_dir, "DVIS_DAQ")}[
                    kind.split("_")[0]]
      with Repo(*source) as repo:
        comps[name] = association(repo, kind, s, k(int(classes[1:])))
  return comps


STUBS = None
VIT_CONFIGS = {}   # size -> the `config` of backbone_from_detectron2 for the ViT-Adapter built


def main(argv=None):
  global STUBS
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  for repo, mirror in REPOS.items():
    parser.add_argument(f"--{repo}_git_dir", default=os.path.join(MIRROR, mirror, "repo"))
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args(argv)
  STUBS = install_stubs()
  table = checkpoints()
  sources = {}
  for repo in REPOS:
    git_dir = getattr(args, f"{repo}_git_dir")
    sources[repo] = subprocess.check_output(["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"], text=True).strip()
  components = {size: build(args, size, table) for size in ("real", "tiny")}
  with open(args.out, "w") as f:
    json.dump({"sources": sources, "components": components, "checkpoints": table, "vit_config": VIT_CONFIGS}, f, separators=(",", ":"),
              sort_keys=True)
  count = {size: sum(len(c) for c in comps.values()) for size, comps in components.items()}
  print(f"wrote {args.out}: {len(table)} checkpoints, {count} component keys, {os.path.getsize(args.out)} bytes")


if __name__ == "__main__":
  main()
