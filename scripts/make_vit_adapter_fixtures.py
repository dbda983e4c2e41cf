r"""Writes tests/fixtures/vit_adapter_reference.npz: the AUTHORS' ViT-Adapter backbones run in float64 on
small random weights, so that tests/test_vit_adapter.py needs no torch.

  python scripts/make_vit_adapter_fixtures.py --lomm_git_dir /path/to/LOMM/.git \
      --sam_git_dir /path/to/segment-anything/.git          # (bare) git dirs, or --lomm_dir / --sam_dir

Needs torch (2.13.0 CPU was used). The authors' code is not part of this repository: the files below are
copied into a temporary package at run time, with stubs in `sys.modules` for what they import but do
not use here (detectron2's backbone registry, timm's init helpers, the compiled deformable-attention op,
whose absence makes `MSDeformAttn` fall back to `ms_deform_attn_core_pytorch`, the PyTorch reference):
  LOMM (Seung-Hun-Lee/LOMM; byte-identical to DVIS_Plus/DVIS_DAQ in zhang-tao-whu/DVIS_Plus)
    mask2former/modeling/backbones_vitAdapter/**   D2VitAdapterDinoV2 = DinoV2ViTAdapter + DinoVisionTransformer
    mask2former/modeling/backbones_samAdapter/**   SAMAdapter = SAMViTAdapter + the SAM ImageEncoderViT
    mask2former/modeling/pixel_decoder/ops/{modules,functions}/*.py   MSDeformAttn
  segment-anything (facebookresearch/segment-anything)
    segment_anything/modeling/{image_encoder,common}.py   the SAM image encoder with its neck

What it records (float64 unless noted):
  source/lomm_commit, source/sam_commit      commits (bytes of the hex strings)
  {dinov2,sam}/config                        JSON: the `config` argument of backbone_from_detectron2
                                             ('MODEL.VIT_ADAPTER' / 'MODEL.SAM_ADAPTER', 'get_models',
                                             'get_adapter_args', 'norm_eps')
  {dinov2,sam}/state/<key>                   the backbone's state dict (PyTorch names, no `backbone.`
                                             prefix; num_batches_tracked int64 included); all random,
                                             float32-representable, stored as float32
  {dinov2,sam}/{H}x{W}/images                [B, 3, H, W] input (NCHW, already normalised), float32 values
  {dinov2,sam}/{H}x{W}/res2..res5            outputs (NCHW)
  {dinov2,sam}/{H}x{W}/spm_c1..c4            the spatial prior module's c1 map, c2..c4 tokens (level embed
                                             not yet added); first size only
  {dinov2,sam}/{H}x{W}/tokens                ViT tokens after the patch embed + pos-embed (DINOv2: with
                                             the class token first)
  {dinov2,sam}/{H}x{W}/interaction{i}/x, /c  the ViT tokens and the adapter queries after interaction i
  posembed/grid [1, 1 + 37*37, 8] float32    a DINOv2 pos-embed of the released 37 x 37 grid, and
  posembed/{H}x{W}                           DinoVisionTransformer.interpolate_pos_encoding at H x W (float32)
  patch14/weight [8, 3, 14, 14], patch14/resized [8, 3, 16, 16]   load_pretrained_weights' 14 -> 16 resize
  sam_encoder/state/<key>, /images, /out     segment-anything ImageEncoderViT (img_size 128) with its neck
"""

import argparse
import functools
import importlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import reference_sources  # scripts/reference_sources.py (next to this script)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "vit_adapter_reference.npz")

LOMM_DIRS = ("mask2former/modeling/backbones_vitAdapter", "mask2former/modeling/backbones_samAdapter")
LOMM_OPS = ("mask2former/modeling/pixel_decoder/ops/modules/__init__.py",
            "mask2former/modeling/pixel_decoder/ops/modules/ms_deform_attn.py",
            "mask2former/modeling/pixel_decoder/ops/functions/__init__.py",
            "mask2former/modeling/pixel_decoder/ops/functions/ms_deform_attn_func.py")
SAM_FILES = ("segment_anything/modeling/image_encoder.py", "segment_anything/modeling/common.py")

# The sizes tests/test_vit_adapter.py uses.
DIM, HEADS, DEPTH, INPLANE, POINTS, DEFORM_HEADS = 16, 2, 6, 8, 3, 2
DINO_INTERACTIONS = [[0, 1], [2, 2], [3, 4], [5, 5]]
DINO_PRETRAIN = 112                  # pos-embed grid 7 x 7 (the released model: 592 -> 37 x 37)
DINO_SIZES = ((64, 96), (96, 128))   # token grids 4 x 6 and 6 x 8: the pos grid shrinks and grows
SAM_DEPTH, SAM_WINDOW, SAM_GLOBAL = 4, 4, [1, 3]
SAM_INTERACTIONS = [[0, 0], [1, 1], [2, 2], [3, 3]]
SAM_SIZES = ((64, 96),)              # token grid 4 x 6: windows of 4 pad the width to 8
POS_SIZES = ((592, 592), (480, 640), (352, 640), (736, 1024), (320, 320))
ENCODER = dict(img_size=128, embed_dim=16, depth=3, num_heads=2, window_size=3, global_attn_indexes=(1,),
               out_chans=8)


def _git_reader(git_dir):
  git = ["git", f"--git-dir={git_dir}"]
  commit = subprocess.check_output(git + ["rev-parse", "HEAD"], text=True).strip()
  names = subprocess.check_output(git + ["ls-tree", "-r", "--name-only", "HEAD"], text=True).split()
  return commit, names, lambda p: subprocess.check_output(git + ["show", f"HEAD:{p}"], text=True)


def _dir_reader(root):
  names = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]
  try:
    commit = subprocess.check_output(["git", "-C", root, "rev-parse", "HEAD"], text=True).strip()
  except (subprocess.CalledProcessError, FileNotFoundError):
    commit = "unknown"
  return commit, names, lambda p: open(os.path.join(root, p)).read()


def copy_sources(git_dir, checkout, wanted, workdir):
  commit, names, read = _git_reader(git_dir) if git_dir else _dir_reader(checkout)
  for name in names:
    if name.endswith(".py") and any(name == w or name.startswith(w + "/") for w in wanted):
      full = os.path.join(workdir, name)
      os.makedirs(os.path.dirname(full), exist_ok=True)
      with open(full, "w") as f:
        f.write(read(name))
  return commit


def install_stubs(workdir):
  import torch

  module = reference_sources.stub_module

  Registry = reference_sources.Registry

  class DropPath(torch.nn.Module):   # drop_path is 0 in every setting used here
    def __init__(self, *args, **kwargs):
      super().__init__()

    def forward(self, x):
      return x

  module("detectron2")
  module("detectron2.modeling", BACKBONE_REGISTRY=Registry(), Backbone=torch.nn.Module, ShapeSpec=dict)
  module("timm")
  module("timm.models")
  module("timm.models.layers", trunc_normal_=torch.nn.init.trunc_normal_, DropPath=DropPath)
  # The compiled op: importable, without functions, so MSDeformAttn falls back to the PyTorch core.
  module("MultiScaleDeformableAttention")
  for package in ("mask2former", "mask2former/modeling", "mask2former/modeling/pixel_decoder",
                  "mask2former/modeling/pixel_decoder/ops", "segment_anything",
                  "segment_anything/modeling"):
    os.makedirs(os.path.join(workdir, package), exist_ok=True)
    open(os.path.join(workdir, package, "__init__.py"), "w").close()
  sys.path.insert(0, workdir)


def randomise(model, rng):
  """Every parameter and running statistic random: norm scales and LayerScale gammas around 1, running
  variances positive, the rest small normals scaled by fan-in."""
  import torch
  with torch.no_grad():
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
      if not p.dtype.is_floating_point:
        continue
      leaf = name.rsplit(".", 1)[-1]
      if leaf == "running_var":
        value = rng.uniform(0.5, 1.5, p.shape)
      elif leaf in ("gamma",) or (p.ndim == 1 and leaf == "weight"):
        value = 1.0 + 0.2 * rng.normal(size=p.shape)
      elif p.ndim >= 2 and leaf == "weight":
        fan_in = int(np.prod(p.shape[1:]))
        value = rng.normal(size=p.shape) * (0.8 / np.sqrt(fan_in))
      elif leaf in ("sampling_offsets",):
        value = rng.normal(size=p.shape)
      else:
        value = rng.normal(size=p.shape) * 0.2
      # float32-representable values: stored as float32, exact in the float64 run.
      p.copy_(torch.from_numpy(np.asarray(value, np.float32).astype(np.float64)))


def state_arrays(prefix, model):
  """The state dict, floats stored as float32 (their values are float32-representable, see randomise)."""
  return {f"{prefix}/state/{k}": (v.detach().numpy().astype(np.float32) if v.dtype.is_floating_point
                                  else v.detach().numpy().copy()) for k, v in model.state_dict().items()}


def random_images(rng, shape):
  return rng.normal(size=shape).astype(np.float32).astype(np.float64)


def record_backbone(prefix, model, sizes, rng, cls_token):
  """Runs `model` at each size and records the outputs and the intermediates named in the docstring."""
  import torch
  arrays = {}
  for height, width in sizes:
    batch = 2 if (height, width) == sizes[0] else 1
    images = random_images(rng, (batch, 3, height, width))
    key = f"{prefix}/{height}x{width}"
    captured = {}
    hooks = [model.spm.register_forward_hook(lambda m, i, o: captured.__setitem__("spm", o))]
    for index, layer in enumerate(model.interactions):
      hooks.append(layer.register_forward_hook(
          lambda m, i, o, index=index: captured.__setitem__(f"interaction{index}", o)))
    prepare = model.vit_module.prepare_tokens_with_masks

    def capture_tokens(*args, **kwargs):
      out = prepare(*args, **kwargs)
      captured["tokens"] = out[0]
      return out
    model.vit_module.prepare_tokens_with_masks = capture_tokens
    with torch.no_grad():
      out = model(torch.from_numpy(images))
    model.vit_module.prepare_tokens_with_masks = prepare
    for hook in hooks:
      hook.remove()
    arrays[f"{key}/images"] = images.astype(np.float32)
    for level, name in enumerate(("res2", "res3", "res4", "res5")):   # [f1..f4] of DinoV2ViTAdapter / SAMViTAdapter
      arrays[f"{key}/{name}"] = out[level].numpy()
    for i, c in enumerate(captured["spm"] if (height, width) == sizes[0] else ()):
      arrays[f"{key}/spm_c{i + 1}"] = c.numpy()
    arrays[f"{key}/tokens"] = captured["tokens"].numpy()
    for index in range(len(model.interactions)):
      x, c = captured[f"interaction{index}"][:2]
      if cls_token:
        x = torch.cat([captured[f"interaction{index}"][2], x], dim=1)
      arrays[f"{key}/interaction{index}/x"] = x.numpy()
      arrays[f"{key}/interaction{index}/c"] = c.numpy()
  return arrays


def dinov2_fixture(rng):
  import torch
  backbones = importlib.import_module("mask2former.modeling.backbones_vitAdapter.backbones")
  adapter = importlib.import_module("mask2former.modeling.backbones_vitAdapter.adapter")
  layers = importlib.import_module("mask2former.modeling.backbones_vitAdapter.layers")
  vit_kwargs = dict(img_size=DINO_PRETRAIN, patch_size=16, embed_dim=DIM, depth=DEPTH, num_heads=HEADS,
                    mlp_ratio=4, init_values=1.0e-05, ffn_layer="mlp", block_chunks=0, qkv_bias=True,
                    proj_bias=True, ffn_bias=True)
  vit = backbones.DinoVisionTransformer(
      block_fn=functools.partial(layers.NestedTensorBlock, attn_class=layers.MemEffAttention), **vit_kwargs)
  adapter_args = dict(pretrain_size=DINO_PRETRAIN, init_values=1e-6, conv_inplane=INPLANE, n_points=POINTS,
                      deform_num_heads=DEFORM_HEADS, with_cffn=True, cffn_ratio=0.25, deform_ratio=0.5,
                      add_vit_feature=True, use_extra_extractor=True, with_cp=False,
                      interaction_indexes=DINO_INTERACTIONS)
  model = adapter.DinoV2ViTAdapter(vit_module=vit, **adapter_args).double().eval()
  randomise(model, rng)
  config = {"MODEL.VIT_ADAPTER": {"NAME": "vitl"}, "get_models": vit_kwargs, "get_adapter_args": adapter_args,
            "norm_eps": 1e-6}
  arrays = {"dinov2/config": np.frombuffer(json.dumps(config).encode(), np.uint8)}
  arrays.update(state_arrays("dinov2", model))
  arrays.update(record_backbone("dinov2", model, DINO_SIZES, rng, cls_token=True))

  # The released pos-embed grid (37 x 37), resized at full-size inputs, in float32 as the reference does.
  torch.set_default_dtype(torch.float32)
  vit37 = backbones.DinoVisionTransformer(img_size=592, patch_size=16, embed_dim=8, depth=1, num_heads=2,
                                          block_chunks=0)
  with torch.no_grad():
    vit37.pos_embed.copy_(torch.from_numpy(rng.normal(size=vit37.pos_embed.shape).astype(np.float32)))
  arrays["posembed/grid"] = vit37.pos_embed.detach().numpy().copy()
  for height, width in POS_SIZES:
    tokens = torch.zeros(1, 1 + (height // 16) * (width // 16), 8)
    with torch.no_grad():
      arrays[f"posembed/{height}x{width}"] = vit37.interpolate_pos_encoding(tokens, height, width).numpy()
  weight = rng.normal(size=(8, 3, 14, 14)).astype(np.float32)
  arrays["patch14/weight"] = weight
  arrays["patch14/resized"] = torch.nn.functional.interpolate(
      torch.from_numpy(weight), size=(16, 16), mode="bilinear", align_corners=True).numpy()
  torch.set_default_dtype(torch.float64)
  return arrays


def sam_fixture(rng):
  import torch
  backbones = importlib.import_module("mask2former.modeling.backbones_samAdapter.backbones")
  adapter = importlib.import_module("mask2former.modeling.backbones_samAdapter.adapter")
  # get_models('vith') at a small size (img_size stays 1024: the reference hard-codes its 64 x 64 grid).
  vit_kwargs = dict(depth=SAM_DEPTH, embed_dim=DIM, img_size=1024, mlp_ratio=4, num_heads=HEADS,
                    patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=SAM_GLOBAL,
                    window_size=SAM_WINDOW, out_chans=8)
  vit = backbones.ImageEncoderViT(norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), **vit_kwargs)
  adapter_args = dict(pretrain_size=1024, init_values=1e-6, conv_inplane=INPLANE, n_points=POINTS,
                      deform_num_heads=DEFORM_HEADS, with_cffn=True, cffn_ratio=0.25, deform_ratio=0.5,
                      add_vit_feature=True, use_extra_extractor=True, with_cp=False,
                      interaction_indexes=SAM_INTERACTIONS)
  model = adapter.SAMViTAdapter(vit_module=vit, **adapter_args).double().eval()
  randomise(model, rng)
  config = {"MODEL.SAM_ADAPTER": {"NAME": "vith"}, "get_models": vit_kwargs, "get_adapter_args": adapter_args,
            "norm_eps": 1e-6}
  arrays = {"sam/config": np.frombuffer(json.dumps(config).encode(), np.uint8)}
  arrays.update(state_arrays("sam", model))
  arrays.update(record_backbone("sam", model, SAM_SIZES, rng, cls_token=False))
  return arrays


def sam_encoder_fixture(rng):
  import torch
  encoder_module = importlib.import_module("segment_anything.modeling.image_encoder")
  kwargs = dict(ENCODER)
  model = encoder_module.ImageEncoderViT(
      patch_size=16, mlp_ratio=4, qkv_bias=True, use_rel_pos=True,
      norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), **kwargs).double().eval()
  randomise(model, rng)
  images = random_images(rng, (1, 3, ENCODER["img_size"], ENCODER["img_size"]))
  with torch.no_grad():
    out = model(torch.from_numpy(images)).numpy()
  arrays = state_arrays("sam_encoder", model)
  arrays["sam_encoder/images"] = images.astype(np.float32)
  arrays["sam_encoder/out"] = out
  return arrays


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  lomm = parser.add_mutually_exclusive_group(required=True)
  lomm.add_argument("--lomm_git_dir", help="git dir of Seung-Hun-Lee/LOMM (bare is fine)")
  lomm.add_argument("--lomm_dir", help="a checkout of Seung-Hun-Lee/LOMM")
  sam = parser.add_mutually_exclusive_group(required=True)
  sam.add_argument("--sam_git_dir", help="git dir of facebookresearch/segment-anything (bare is fine)")
  sam.add_argument("--sam_dir", help="a checkout of facebookresearch/segment-anything")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args(argv)

  import torch
  torch.set_default_dtype(torch.float64)
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as workdir:
    lomm_commit = copy_sources(args.lomm_git_dir, args.lomm_dir, LOMM_DIRS + LOMM_OPS, workdir)
    sam_commit = copy_sources(args.sam_git_dir, args.sam_dir, SAM_FILES, workdir)
    install_stubs(workdir)
    arrays = {"source/lomm_commit": np.frombuffer(lomm_commit.encode(), np.uint8),
              "source/sam_commit": np.frombuffer(sam_commit.encode(), np.uint8)}
    arrays.update(dinov2_fixture(rng))
    arrays.update(sam_fixture(rng))
    arrays.update(sam_encoder_fixture(rng))
  np.savez_compressed(args.out, **arrays)
  print(f"wrote {args.out}: {len(arrays)} arrays, LOMM @ {lomm_commit}, segment-anything @ {sam_commit}")


if __name__ == "__main__":
  main()
