"""Segmenter throughput: `python scripts/benchmark.py segmenter [--height 480 --width 640 ...]`.

Times the R50 segmenter of configs/ytvis19_r50.py (random weights) at one image size: compile time
of the jitted forward, then frames/s. When torch + transformers are installed it times
transformers' Mask2FormerForUniversalSegmentation with the same configuration on the same machine
and prints the ratio (> 1 means JAX is faster).
"""

import argparse
import time

import numpy as np


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


def time_jax(config, batch, height, width, iterations):
  import jax
  import jax.numpy as jnp
  from o2vis_jax.models import build_segmenter
  model = build_segmenter(config)
  images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (batch, height, width, 3)), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)
  params = jax.device_put(random_params(shapes))
  start = time.perf_counter()
  forward = jax.jit(model.apply).lower(params, images).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(forward(params, images))          # warm-up
  start = time.perf_counter()
  for _ in range(iterations):
    jax.block_until_ready(forward(params, images))
  per_batch = (time.perf_counter() - start) / iterations
  return compile_s, batch / per_batch


def time_torch(model_config, batch, height, width, iterations):
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
  with torch.no_grad():
    model(pixel_values=images)                          # warm-up
    start = time.perf_counter()
    for _ in range(iterations):
      model(pixel_values=images)
  per_batch = (time.perf_counter() - start) / iterations
  return batch / per_batch, torch.get_num_threads()


def main(argv):
  parser = argparse.ArgumentParser(prog="benchmark.py segmenter", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--height", type=int, default=480)
  parser.add_argument("--width", type=int, default=640)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--iterations", type=int, default=3)
  parser.add_argument("--dtype", default="float32", help="computation dtype (float32 | bfloat16)")
  parser.add_argument("--no_torch", action="store_true", help="skip the transformers reference")
  args = parser.parse_args(argv)
  import jax
  from configs import ytvis19_r50
  config = ytvis19_r50.get_config()
  config.model.dtype = args.dtype
  print(f"segmenter R{config.model.backbone.depth} N={config.model.num_queries} K={config.model.num_classes} "
        f"at {args.height}x{args.width}, batch {args.batch}, {args.dtype}, "
        f"jax {jax.__version__} on {jax.devices()[0].platform} ({len(jax.devices())} device(s))")
  compile_s, jax_fps = time_jax(config, args.batch, args.height, args.width, args.iterations)
  print(f"jax:    compile {compile_s:.1f} s, {jax_fps:.3f} frames/s ({1 / jax_fps:.3f} s/frame)")
  if args.no_torch:
    return 0
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError:
    print("torch / transformers not installed: no reference timing")
    return 0
  torch_fps, threads = time_torch(config.model, args.batch, args.height, args.width, args.iterations)
  print(f"torch:  {torch_fps:.3f} frames/s ({1 / torch_fps:.3f} s/frame, {threads} threads, "
        "transformers Mask2Former, same config)")
  print(f"ratio jax / torch frames/s: {jax_fps / torch_fps:.2f}")
  return 0
