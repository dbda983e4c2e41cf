r"""Writes tests/fixtures/backbones_reference.npz: the reference backbones run in float64 on small random
weights, so that tests/test_backbones.py needs no torch.

  PYTHONPATH=/path/to/transformers python scripts/make_backbone_fixtures.py \
      --mask2former_git_dir /path/to/Mask2Former/.git      # a (bare) git dir, or --mask2former_dir a checkout

Needs torch (2.13.0 CPU was used) and transformers (4.57.1). The authors' code is not part of this
repository: Mask2Former's `mask2former/modeling/backbone/swin.py` (`D2SwinTransformer`) is copied into a
temporary directory at run time and imported with stubs in `sys.modules` for its timm (`DropPath`,
`to_2tuple`, `trunc_normal_`) and detectron2 (`BACKBONE_REGISTRY`, `Backbone`, `ShapeSpec`) imports.

Cases (every parameter random: LayerNorm / BatchNorm scales around 1, biases, BatchNorm statistics and
the relative position bias tables too; rounded to float32 so that the stored float32 state dict IS the
model), each run in eval mode on the inputs of shapes SIZES (normalised images, float64, not multiples
of the window, the patch or 32):
  {case}/state/<key>          the module's state dict (its own key names, no prefix)
  {case}/config               the config as JSON (bytes): a transformers config dict, or D2's MODEL.SWIN
  {case}/{h}x{w}/input        [1, h, w, 3] NHWC
  {case}/{h}x{w}/res{2..5}    [1, h', w', C] NHWC outputs
with cases
  hf_resnet_bottleneck   transformers ResNetBackbone: bottleneck, depths (1, 2, 1, 1), widths (32, 64, 96, 128)
  hf_resnet_basic        basic blocks, depths (1, 1, 2, 1), widths (8, 16, 24, 32), stem 8 (no res2 shortcut)
  hf_resnet_stride_1x1   bottleneck with downsample_in_bottleneck=True (the stride in the first 1x1)
  hf_swin                transformers SwinBackbone (always_partition): embed 8, window 3, depths (2, 1, 2, 1), mlp 2
  d2_swin                Mask2Former D2SwinTransformer: embed 8, window 4, patch 4, depths (2, 1, 3, 2)
  d2_swin_ape            the same with APE (absolute position embedding, pretrain size 32: an 8x8 grid resized
                         bicubically to 8x8, 10x14, 5x17 patches), depths (2, 1, 1, 1)
and the whole segmenter (transformers Mask2FormerForUniversalSegmentation, 2 decoder layers + the query
init, hidden 32) with a Swin backbone (embed 8, window 3, depths (2, 1, 2, 1)) and with the custom
bottleneck ResNet above:
  segmenter_{swin,resnet}/state/<key>, .../config, .../images [2, 64, 96, 3] (0..255),
  segmenter_{swin,resnet}/out/{pred_logits, pred_masks}
"""

import argparse
import json
import os
import subprocess
import tempfile
import types

import numpy as np

import reference_sources  # scripts/reference_sources.py (next to this script)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "backbones_reference.npz")
SWIN_FILE = "mask2former/modeling/backbone/swin.py"
SIZES = ((32, 32), (38, 54), (20, 68))
PIXEL_MEAN = np.array([123.675, 116.28, 103.53])
PIXEL_STD = np.array([58.395, 57.12, 57.375])
STAGES = ["stage1", "stage2", "stage3", "stage4"]


def read_swin_source(args):
  if args.mask2former_git_dir:
    git = ["git", f"--git-dir={args.mask2former_git_dir}"]
    commit = subprocess.check_output(git + ["rev-parse", "HEAD"], text=True).strip()
    return commit, subprocess.check_output(git + ["show", f"HEAD:{SWIN_FILE}"], text=True)
  with open(os.path.join(args.mask2former_dir, SWIN_FILE)) as f:
    text = f.read()
  try:
    commit = subprocess.check_output(["git", "-C", args.mask2former_dir, "rev-parse", "HEAD"], text=True).strip()
  except (subprocess.CalledProcessError, FileNotFoundError):
    commit = "unknown"
  return commit, text


def install_stubs():
  import torch

  module = reference_sources.stub_module

  class DropPath(torch.nn.Module):     # eval: the identity (timm's DropPath in eval mode)
    def __init__(self, drop_prob=0.0):
      super().__init__()

    def forward(self, x):
      return x

  Registry = reference_sources.Registry

  class Backbone(torch.nn.Module):
    def __init__(self):
      super().__init__()

  module("timm")
  module("timm.models")
  module("timm.models.layers", DropPath=DropPath, to_2tuple=lambda x: x if isinstance(x, tuple) else (x, x),
         trunc_normal_=lambda tensor, std=1.0: torch.nn.init.trunc_normal_(tensor, std=std))
  module("detectron2")
  module("detectron2.modeling", BACKBONE_REGISTRY=Registry(), Backbone=Backbone,
         ShapeSpec=lambda **kw: types.SimpleNamespace(**kw))


def load_d2_swin(text, workdir):
  import importlib.util
  path = os.path.join(workdir, "d2_swin.py")
  with open(path, "w") as f:
    f.write(text)
  install_stubs()
  spec = importlib.util.spec_from_file_location("d2_swin", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.D2SwinTransformer


def randomise(model, seed):
  """Every floating parameter and buffer random (module docstring), then rounded to float32."""
  import torch
  generator = torch.Generator().manual_seed(seed)
  noise = lambda t, scale: torch.randn(t.shape, generator=generator, dtype=t.dtype) * scale
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if not tensor.is_floating_point():
        continue
      if name.endswith("running_var"):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype))
      elif name.endswith("running_mean"):
        tensor.add_(noise(tensor, 0.2))
      elif "relative_position_bias_table" in name:
        tensor.copy_(noise(tensor, 0.5))
      elif tensor.ndim == 1:            # biases and norm weights
        tensor.add_(noise(tensor, 0.2))
      elif "sampling_offsets" in name or "self_attn.attention_weights" in name:
        tensor.add_(noise(tensor, 0.3))
    for tensor in model.state_dict().values():
      if tensor.is_floating_point():
        tensor.copy_(tensor.float().double())
  return model


def state_arrays(prefix, model):
  return {f"{prefix}/state/{k}": (v.float().numpy() if v.is_floating_point() else v.numpy())
          for k, v in model.state_dict().items()}


def run_sizes(prefix, forward, rng):
  """forward: NCHW float64 tensor -> list of 4 NCHW tensors (res2..res5)."""
  import torch
  arrays = {}
  for h, w in SIZES:
    x = rng.normal(size=(1, h, w, 3))
    with torch.no_grad():
      outs = forward(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    arrays[f"{prefix}/{h}x{w}/input"] = x
    for level, out in enumerate(outs):
      arrays[f"{prefix}/{h}x{w}/res{level + 2}"] = out.numpy().transpose(0, 2, 3, 1)
  return arrays


def hf_backbone_case(prefix, model_class, config, seed, rng):
  import torch
  torch.manual_seed(seed)   # the default init that `randomise` adds to: the same on every run
  model = randomise(model_class(config).eval(), seed).double()
  arrays = state_arrays(prefix, model)
  arrays[f"{prefix}/config"] = np.frombuffer(json.dumps(config.to_dict(), default=str).encode(), np.uint8)
  arrays.update(run_sizes(prefix, lambda x: list(model(x).feature_maps), rng))
  return arrays


def d2_swin_case(prefix, d2_class, seed, rng, **overrides):
  swin = dict(PRETRAIN_IMG_SIZE=224, PATCH_SIZE=4, EMBED_DIM=8, DEPTHS=[2, 1, 3, 2], NUM_HEADS=[1, 2, 2, 4],
              WINDOW_SIZE=4, MLP_RATIO=4.0, QKV_BIAS=True, QK_SCALE=None, DROP_RATE=0.0, ATTN_DROP_RATE=0.0,
              DROP_PATH_RATE=0.3, APE=False, PATCH_NORM=True, USE_CHECKPOINT=False,
              OUT_FEATURES=["res2", "res3", "res4", "res5"])
  swin.update(overrides)
  cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(SWIN=types.SimpleNamespace(**swin)))
  import torch
  torch.manual_seed(seed)   # the default init that `randomise` adds to: the same on every run
  model = d2_class(cfg, None)
  model.eval()       # its train() override returns None
  model = randomise(model, seed).double()
  arrays = state_arrays(prefix, model)
  arrays[f"{prefix}/config"] = np.frombuffer(json.dumps(swin).encode(), np.uint8)
  arrays.update(run_sizes(prefix, lambda x: [model(x)[f"res{i}"] for i in range(2, 6)], rng))
  return arrays


def segmenter_case(prefix, backbone, seed, rng):
  import torch
  from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation
  torch.manual_seed(seed)
  config = Mask2FormerConfig(
      backbone_config=backbone, use_pretrained_backbone=False, feature_size=32, mask_feature_size=32,
      hidden_dim=32, num_attention_heads=4, encoder_layers=2, encoder_feedforward_dim=64,
      decoder_layers=3, dim_feedforward=64, num_queries=8, num_labels=5)
  model = randomise(Mask2FormerForUniversalSegmentation(config).eval(), seed + 1).double()
  images = np.round(rng.uniform(0, 255, size=(2, 64, 96, 3)))
  pixel_values = torch.from_numpy(((images - PIXEL_MEAN) / PIXEL_STD).transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    out = model(pixel_values=pixel_values)
  arrays = state_arrays(prefix, model)
  arrays[f"{prefix}/config"] = np.frombuffer(json.dumps(config.to_dict(), default=str).encode(), np.uint8)
  arrays[f"{prefix}/images"] = images.astype(np.float32)
  arrays[f"{prefix}/out/pred_logits"] = out.class_queries_logits.numpy()
  arrays[f"{prefix}/out/pred_masks"] = out.masks_queries_logits.numpy()
  return arrays


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--mask2former_git_dir", help="git dir of facebookresearch/Mask2Former (bare is fine)")
  source.add_argument("--mask2former_dir", help="a checkout of facebookresearch/Mask2Former")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args(argv)

  import torch
  from transformers import ResNetBackbone, ResNetConfig, SwinBackbone, SwinConfig
  torch.set_default_dtype(torch.float64)
  commit, text = read_swin_source(args)
  rng = np.random.default_rng(0)
  arrays = {"source/commit": np.frombuffer(commit.encode(), np.uint8)}
  resnets = {
      "hf_resnet_bottleneck": ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 96, 128], depths=[1, 2, 1, 1],
                                           layer_type="bottleneck", out_features=STAGES),
      "hf_resnet_basic": ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1],
                                      layer_type="basic", out_features=STAGES),
      "hf_resnet_stride_1x1": ResNetConfig(embedding_size=8, hidden_sizes=[16, 32, 48, 64], depths=[2, 1, 1, 1],
                                           layer_type="bottleneck", downsample_in_bottleneck=True,
                                           out_features=STAGES),
  }
  for seed, (name, config) in enumerate(resnets.items()):
    arrays.update(hf_backbone_case(name, ResNetBackbone, config, seed, rng))
  swin = SwinConfig(embed_dim=8, depths=[2, 1, 2, 1], num_heads=[2, 2, 4, 4], window_size=3, mlp_ratio=2.0,
                    out_features=STAGES, drop_path_rate=0.0)
  arrays.update(hf_backbone_case("hf_swin", SwinBackbone, swin, 10, rng))
  with tempfile.TemporaryDirectory() as workdir:
    d2_class = load_d2_swin(text, workdir)
    arrays.update(d2_swin_case("d2_swin", d2_class, 11, rng))
    arrays.update(d2_swin_case("d2_swin_ape", d2_class, 13, rng, APE=True, PRETRAIN_IMG_SIZE=32,
                               DEPTHS=[2, 1, 1, 1]))
  arrays.update(segmenter_case("segmenter_swin", SwinConfig(
      embed_dim=8, depths=[2, 1, 2, 1], num_heads=[2, 2, 4, 4], window_size=3, out_features=STAGES,
      drop_path_rate=0.0), 12, rng))
  arrays.update(segmenter_case("segmenter_resnet", resnets["hf_resnet_bottleneck"], 14, rng))
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  np.savez_compressed(args.out, **arrays)
  print(f"wrote {args.out}: {len(arrays)} arrays, "
        f"{sum(a.nbytes for a in arrays.values()) / 1e6:.1f} MB uncompressed, Mask2Former @ {commit}")


if __name__ == "__main__":
  main()
