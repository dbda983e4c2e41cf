"""The large backbones (DINOv2 ViT-L + ViT-Adapter, Swin-L 384) against the authors' PyTorch modules, same run.

  python scripts/benchmark.py backbones [--which vitl,swinl --height 480 --width 640 --repeats 3 \
      --threads 2 --lomm_git_dir DIR --mask2former_git_dir DIR --dtype float32 --segmenter]

For each backbone, two child processes (so that each peak RSS is its own):
* jax: `models.build_backbone(config)` (`vit_adapter.backbone_config('dinov2', 'vitl')` /
  `swin.backbone_config('large')`) on random weights, jitted; compile time, then one warm-up call and the
  median of `--repeats` calls on one [1, H, W, 3] image; the compiled executable's `memory_analysis()`
  (arguments + outputs + temporaries - aliased: the device memory XLA plans for one call) and the
  process's peak RSS (`ru_maxrss`). `--segmenter` also times the whole Mask2Former segmenter on that
  backbone (configs/ytvis19_vitl.py / ytvis19_swinl.py sizes).
* torch: the authors' module in eval mode under `torch.no_grad()` with `torch.set_num_threads(--threads)`:
  DVIS++ / LOMM's `DinoV2ViTAdapter(DinoVisionTransformer)` (the `D2VitAdapterDinoV2` body, the memory-
  efficient adapter; its deformable attention runs the PyTorch core `ms_deform_attn_core_pytorch`, as it
  does on any CPU) and Mask2Former's `D2SwinTransformer` (Swin-L 384: embed 192, depths 2/2/18/2, window
  12). Their sources are copied at run time from the authors' git dirs (default: /work/.mirror/...),
  with the stubs of scripts/make_vit_adapter_fixtures.py / make_backbone_fixtures.py. Same warm-up +
  median; peak RSS of the child.
Prints the backend and device, `os.getloadavg()` before and after, and the ratio jax / torch time per
frame (< 1: JAX is faster). Figures are printed, never asserted.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(_ROOT, "scripts"))   # the children run this file directly
from benchmarks._common import load_line, timed_calls  # noqa: E402

LOMM_GIT = "/work/.mirror/Seung-Hun-Lee+LOMM/repo"
MASK2FORMER_GIT = "/work/.mirror/facebookresearch+Mask2Former/repo"
SWIN_L = dict(PRETRAIN_IMG_SIZE=384, PATCH_SIZE=4, EMBED_DIM=192, DEPTHS=[2, 2, 18, 2],
              NUM_HEADS=[6, 12, 24, 48], WINDOW_SIZE=12, MLP_RATIO=4.0, QKV_BIAS=True, QK_SCALE=None,
              DROP_RATE=0.0, ATTN_DROP_RATE=0.0, DROP_PATH_RATE=0.3, APE=False, PATCH_NORM=True,
              USE_CHECKPOINT=False, OUT_FEATURES=["res2", "res3", "res4", "res5"])
# get_models('vitl') / get_adapter_args of DVIS++ / LOMM ViT-L (the released D2VitAdapterDinoV2).
VITL_ARGS = dict(img_size=592, patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4,
                 init_values=1.0e-05, ffn_layer="mlp", block_chunks=0, qkv_bias=True, proj_bias=True,
                 ffn_bias=True)
ADAPTER_ARGS = dict(pretrain_size=592, init_values=1e-6, conv_inplane=64, n_points=4, deform_num_heads=16,
                    with_cffn=True, cffn_ratio=0.25, deform_ratio=0.5, add_vit_feature=True,
                    use_extra_extractor=True, with_cp=False,
                    interaction_indexes=[[0, 5], [6, 11], [12, 17], [18, 23]])


def peak_rss_gib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # Linux: KiB


# ------------------------------------------------------------------------------------------ children
def run_jax(which, height, width, repeats, dtype, segmenter):
  import jax
  import jax.numpy as jnp
  sys.path.insert(0, _ROOT)
  sys.path.insert(0, os.path.join(_ROOT, "scripts"))
  from benchmarks.segmenter import random_params
  from o2vis_jax import models
  if segmenter:
    from configs import ytvis19_swinl, ytvis19_vitl
    config = (ytvis19_vitl if which == "vitl" else ytvis19_swinl).get_config().model
    config.dtype = dtype
    module = models.build_segmenter(config)
    apply = models.segmenter_apply(config)
  else:
    from o2vis_jax.models.backbones import swin, vit_adapter
    config = (vit_adapter.backbone_config("dinov2", "vitl") if which == "vitl" else swin.backbone_config("large"))
    module = models.build_backbone(config, dtype=None if dtype == "float32" else jnp.dtype(dtype))
    apply = jax.jit(lambda p, x: module.apply({"params": p}, x))
  images = jnp.asarray(np.random.default_rng(0).normal(size=(1, height, width, 3)), jnp.float32)
  if segmenter:
    images = images * 50 + 120
  shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), images)
  params = jax.device_put(random_params(shapes))["params"]
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
  start = time.perf_counter()
  compiled = jax.jit(apply).lower(params, images).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  planned = None
  if memory is not None:
    planned = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
               - memory.alias_size_in_bytes) / 2 ** 30
    temp = memory.temp_size_in_bytes / 2 ** 30
  seconds, times = timed_calls(lambda: jax.block_until_ready(compiled(params, images)), repeats)
  device = jax.devices()[0]
  return dict(seconds=seconds, times=times, compile_s=compile_s, planned_gib=planned,
              temp_gib=temp if memory is not None else None, peak_rss_gib=peak_rss_gib(),
              params_m=num_params / 1e6, device=f"{jax.default_backend()} {device.device_kind}")


def run_torch(which, height, width, repeats, threads, lomm_git, mask2former_git):
  import functools
  import importlib
  import torch
  sys.path.insert(0, _ROOT)
  torch.set_num_threads(threads)
  workdir = tempfile.mkdtemp(prefix="backbone_bench_")
  if which == "vitl":
    from scripts import make_vit_adapter_fixtures as fx
    fx.copy_sources(lomm_git, None, fx.LOMM_DIRS + fx.LOMM_OPS, workdir)
    fx.install_stubs(workdir)
    backbones = importlib.import_module("mask2former.modeling.backbones_vitAdapter.backbones")
    adapter = importlib.import_module("mask2former.modeling.backbones_vitAdapter.adapter")
    layers = importlib.import_module("mask2former.modeling.backbones_vitAdapter.layers")
    vit = backbones.DinoVisionTransformer(
        block_fn=functools.partial(layers.NestedTensorBlock, attn_class=layers.MemEffAttention), **VITL_ARGS)
    model = adapter.DinoV2ViTAdapter(vit_module=vit, **ADAPTER_ARGS).eval()
    forward = model
    source = "LOMM/DVIS++ DinoV2ViTAdapter(DinoVisionTransformer) vitl"
  else:
    import types
    from scripts import make_backbone_fixtures as fx
    text = subprocess.check_output(["git", f"--git-dir={mask2former_git}", "show", f"HEAD:{fx.SWIN_FILE}"],
                                   text=True)
    d2_swin = fx.load_d2_swin(text, workdir)
    cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(SWIN=types.SimpleNamespace(**SWIN_L)))
    model = d2_swin(cfg, None)
    model.eval()
    forward = model
    source = "Mask2Former D2SwinTransformer Swin-L 384"
  num_params = sum(p.numel() for p in model.parameters())
  images = torch.randn(1, 3, height, width)

  def call():
    with torch.no_grad():
      forward(images)
  seconds, times = timed_calls(call, repeats)
  return dict(seconds=seconds, times=times, peak_rss_gib=peak_rss_gib(), params_m=num_params / 1e6,
              threads=torch.get_num_threads(), torch=torch.__version__, source=source)


def child(args):
  if args.child == "jax":
    result = run_jax(args.which, args.height, args.width, args.repeats, args.dtype, args.segmenter)
  else:
    result = run_torch(args.which, args.height, args.width, args.repeats, args.threads, args.lomm_git_dir,
                       args.mask2former_git_dir)
  print("RESULT " + json.dumps(result), flush=True)
  return 0


def spawn(args, kind, which, segmenter=False):
  command = [sys.executable, os.path.abspath(__file__), "--child", kind, "--which", which,
             "--height", str(args.height), "--width", str(args.width), "--repeats", str(args.repeats),
             "--threads", str(args.threads), "--dtype", args.dtype, "--lomm_git_dir", args.lomm_git_dir,
             "--mask2former_git_dir", args.mask2former_git_dir] + (["--segmenter"] if segmenter else [])
  out = subprocess.run(command, capture_output=True, text=True)
  lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
  if out.returncode or not lines:
    print(f"  {kind} {which}: failed (rc {out.returncode}): {out.stderr.strip()[-800:]}")
    return None
  return json.loads(lines[-1][len("RESULT "):])


def main(argv):
  parser = argparse.ArgumentParser(prog="benchmark.py backbones", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--which", default="vitl,swinl", help="comma list of vitl, swinl")
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
  parser.add_argument("--dtype", default="float32", help="JAX computation dtype (float32 | bfloat16)")
  parser.add_argument("--segmenter", action="store_true", help="also time the whole JAX segmenter")
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--lomm_git_dir", default=LOMM_GIT)
  parser.add_argument("--mask2former_git_dir", default=MASK2FORMER_GIT)
  parser.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    return child(args)
  if args.height % 32 or args.width % 32:
    raise SystemExit(f"--height / --width must be multiples of 32 (the ViT-Adapter), got {args.height}x{args.width}")
  import jax
  device = jax.devices()[0]
  print(f"backbones at {args.height}x{args.width}, batch 1, jax {args.dtype}, warm-up + median of {args.repeats}; "
        f"jax {jax.__version__} backend {jax.default_backend()} device {device.device_kind}; "
        f"{os.cpu_count()} cores; torch threads {args.threads}")
  print(load_line())
  for which in args.which.split(","):
    name = {"vitl": "DINOv2 ViT-L + ViT-Adapter", "swinl": "Swin-L 384 (window 12)"}[which]
    j = spawn(args, "jax", which)
    if j:
      planned = f"{j['planned_gib']:.2f} GiB planned ({j['temp_gib']:.2f} temporaries)" if j["planned_gib"] else "n/a"
      print(f"{name}: jax   {1 / j['seconds']:.3f} frames/s ({j['seconds']:.2f} s/frame, runs "
            f"{', '.join(f'{t:.2f}' for t in j['times'])}); compile {j['compile_s']:.1f} s; memory_analysis "
            f"{planned}; peak RSS {j['peak_rss_gib']:.2f} GiB; {j['params_m']:.1f} M params; {j['device']}")
    t = None if args.no_torch else spawn(args, "torch", which)
    if t:
      print(f"{name}: torch {1 / t['seconds']:.3f} frames/s ({t['seconds']:.2f} s/frame, runs "
            f"{', '.join(f'{x:.2f}' for x in t['times'])}); peak RSS {t['peak_rss_gib']:.2f} GiB; "
            f"{t['params_m']:.1f} M params; torch {t['torch']} {t['threads']} threads; {t['source']}")
    if j and t:
      print(f"{name}: ratio jax / torch time per frame {j['seconds'] / t['seconds']:.2f}")
    if args.segmenter:
      s = spawn(args, "jax", which, segmenter=True)
      if s:
        print(f"{name} segmenter (jax): {1 / s['seconds']:.3f} frames/s; compile {s['compile_s']:.1f} s; "
              f"memory_analysis {s['planned_gib'] or float('nan'):.2f} GiB; peak RSS {s['peak_rss_gib']:.2f} GiB")
    print(load_line(), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
