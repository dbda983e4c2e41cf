"""Segmenter time per frame against transformers' Mask2Former, side by side in one process.

  python scripts/benchmark.py segmenter [--height 480 --width 640 --repeats 5 --threads N]

Times the R50 segmenter of configs/ytvis19_r50.py (random weights) at one image size through
`models.segmenter_apply` (the one jitted forward inference uses; compiled once, timed apart), then,
when torch + transformers are importable, transformers' Mask2FormerForUniversalSegmentation with the
same configuration, in eval mode, with PyTorch pinned to as many threads as XLA's CPU client uses
(`--threads`, default the number of cores). Each: one warm-up call, then the median of `--repeats`
calls. Prints both, the ratio jax / torch time per frame (< 1: JAX is faster), and the machine's load
(`os.getloadavg()`) before and after: on a loaded machine the reference suffers more than XLA.
transformers lives outside the test environment here: run with
`PYTHONPATH=/work/pydeps/hf:/work/pydeps/hfdeps` (the script says so when it cannot import it).
`--profile TOP` also prints the TOP XLA ops by time of one forward (where the time goes).
"""

import argparse
import os
import time

import numpy as np

from benchmarks._common import load_line, median_time


def random_params(shapes, seed=0):
  """Random weights of the right shapes (BatchNorm variances / scales at 1): timing only."""
  import jax
  rng = np.random.default_rng(seed)

  def leaf(path, shape):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']") or name.endswith("['scale']"):
      return np.ones(shape.shape, np.float32)
    return (rng.standard_normal(shape.shape) * 0.02).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, shapes)




def time_jax(config, batch, height, width, repeats):
  """(compile seconds, seconds per frame) of the jitted segmenter forward."""
  import jax
  import jax.numpy as jnp
  from o2vis_jax import models
  model = models.build_segmenter(config)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (batch, height, width, 3)), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)
  params = jax.device_put(random_params(shapes))["params"]
  forward = models.segmenter_apply(config)
  start = time.perf_counter()
  jax.block_until_ready(forward(params, images))
  compile_s = time.perf_counter() - start
  per_batch = median_time(lambda: jax.block_until_ready(forward(params, images)), repeats)
  return compile_s, per_batch / batch


def profile_jax(config, height, width, top):
  """The `top` XLA ops by time in one forward (a jax.profiler perfetto trace of the compiled segmenter)."""
  import collections
  import glob
  import gzip
  import json
  import tempfile
  import jax
  import jax.numpy as jnp
  from o2vis_jax import models
  model = models.build_segmenter(config)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)
  params = jax.device_put(random_params(shapes))["params"]
  forward = models.segmenter_apply(config)
  jax.block_until_ready(forward(params, images))
  directory = tempfile.mkdtemp(prefix="segmenter_profile_")
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    jax.block_until_ready(forward(params, images))
  path = glob.glob(os.path.join(directory, "**", "*.json.gz"), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  totals, counts = collections.defaultdict(float), collections.Counter()
  skip = ("ThunkExecutor", "$", "SlinkyThreadPool", "PjitFunction", "CommonPjRt")
  for event in events:
    if event.get("ph") == "X" and "dur" in event and not event["name"].startswith(skip):
      totals[event["name"]] += event["dur"] / 1e3
      counts[event["name"]] += 1
  text = forward.lower(params, images).compile().as_text()
  print(f"top {top} XLA ops of one forward (ms, calls, what; names from the compiled HLO):")
  for name, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
    line = next((l for l in text.splitlines() if l.strip().startswith(f"%{name} = ")), "")
    shape = line.split("=", 1)[1].split("{")[0].strip() if line else ""
    what = line.split('op_name="', 1)[1].split('"', 1)[0] if 'op_name="' in line else ""
    print(f"  {ms:8.1f}  x{counts[name]:<4d} {name:28s} {shape:28s} {what[-70:]}")


def time_torch(model_config, batch, height, width, repeats):
  import torch
  from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig
  b = model_config.backbone
  bottleneck = b.depth >= 50
  blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[b.depth]
  backbone = ResNetConfig(embedding_size=b.width, depths=blocks,
                          hidden_sizes=[b.width * 2 ** i * (4 if bottleneck else 1) for i in range(4)],
                          layer_type="bottleneck" if bottleneck else "basic",
                          out_features=["stage1", "stage2", "stage3", "stage4"])
  p, t = model_config.pixel_decoder, model_config.transformer_decoder
  config = Mask2FormerConfig(
      backbone_config=backbone, use_pretrained_backbone=False, feature_size=p.conv_dim,
      mask_feature_size=p.mask_dim, hidden_dim=model_config.hidden_dim, num_attention_heads=model_config.num_heads,
      encoder_layers=p.num_encoder_layers, encoder_feedforward_dim=p.encoder_ffn_dim,
      decoder_layers=t.num_layers + 1, dim_feedforward=t.ffn_dim, num_queries=model_config.num_queries,
      num_labels=model_config.num_classes)
  model = Mask2FormerForUniversalSegmentation(config).eval()
  images = torch.randn(batch, 3, height, width)

  def run():
    with torch.no_grad():
      model(pixel_values=images)
  return median_time(run, repeats) / batch, torch.get_num_threads()


def main(argv):
  parser = argparse.ArgumentParser(prog="benchmark.py segmenter", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", help="computation dtype (float32 | bfloat16)")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads")
  parser.add_argument("--no_torch", action="store_true", help="skip the transformers reference")
  parser.add_argument("--profile", type=int, default=0, metavar="TOP",
                      help="also print the TOP XLA ops by time of one forward (jax.profiler trace)")
  args = parser.parse_args(argv)
  import jax
  from configs import ytvis19_r50
  config = ytvis19_r50.get_config()
  config.model.dtype = args.dtype
  print(f"segmenter R{config.model.backbone.depth} N={config.model.num_queries} K={config.model.num_classes} "
        f"at {args.height}x{args.width}, batch {args.batch}, {args.dtype}, median of {args.repeats} after a "
        f"warm-up; jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cores)")
  print(load_line())
  compile_s, jax_s = time_jax(config, args.batch, args.height, args.width, args.repeats)
  print(f"jax:    {jax_s:.3f} s/frame ({1 / jax_s:.3f} frames/s; first call incl. compile {compile_s:.1f} s)")
  if args.profile:
    profile_jax(config, args.height, args.width, args.profile)
  if not args.no_torch:
    try:
      import torch
      import transformers  # noqa: F401
    except ImportError:
      print("torch / transformers not importable: no reference timing (transformers: "
            "PYTHONPATH=/work/pydeps/hf:/work/pydeps/hfdeps)")
    else:
      torch.set_num_threads(args.threads)
      torch_s, threads = time_torch(config.model, args.batch, args.height, args.width, args.repeats)
      print(f"torch:  {torch_s:.3f} s/frame ({1 / torch_s:.3f} frames/s, {threads} threads, transformers "
            f"{transformers.__version__} Mask2Former, same config)")
      print(f"ratio jax / torch time per frame: {jax_s / torch_s:.2f}")
  print(load_line())
  return 0
