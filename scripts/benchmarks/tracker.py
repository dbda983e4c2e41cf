"""Per-frame time of the O2VIS tracker step at the reference dims, host vs device Hungarian.

  python scripts/benchmark.py tracker [--queries 100] [--channels 256] [--frames 16] [--mask_size 120x216]

Random tracker weights (N queries, C channels, FFN 2048, 8 heads, 3+3 layers, K = 40) and random
segmenter outputs; the scan over `--frames` frames is compiled once per matcher (excluded from the
timing), then timed `--repeats` times. Also timed on their own, at the same N: the OHM (two Hungarian
stages, Eq. 6) and the segmenter-space Hungarian sigma_t, with each matcher, and scipy's LSA alone; the
"matching share" is (OHM + sigma) / step. Prints figures, asserts nothing.
"""

import argparse
import time

import numpy as np
import scipy.optimize


def _time(fn, repeats):
  fn()  # compile / warm up
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def main(argv):
  parser = argparse.ArgumentParser(prog="benchmark.py tracker", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--queries", type=int, default=100)
  parser.add_argument("--channels", type=int, default=256)
  parser.add_argument("--ffn_dim", type=int, default=2048)
  parser.add_argument("--num_classes", type=int, default=40)
  parser.add_argument("--frames", type=int, default=16)
  parser.add_argument("--mask_size", default="120x216", help="h x w of mask_features (480x864 input / 4)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--matchers", default="host,device")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp

  from configs import base
  from o2vis_jax import association
  from o2vis_jax.association.ops.hungarian import cosine_cost, hungarian, occupancy_guided_matching

  n, c, t = args.queries, args.channels, args.frames
  h, w = (int(v) for v in args.mask_size.split("x"))
  config = base.get_base_config()
  config.model.hidden_dim, config.model.num_classes, config.model.num_queries = c, args.num_classes, n
  config = association.with_method(config, "o2vis")
  config.tracker.ffn_dim = args.ffn_dim
  params = association.get("o2vis").init_params(config, jax.random.PRNGKey(0),
                                                num_classes=args.num_classes, hidden_dim=c)
  rng = np.random.default_rng(0)
  frames = dict(embeds=jnp.asarray(rng.normal(size=(t, n, c)), jnp.float32),
                embeds_without_norm=jnp.asarray(rng.normal(size=(t, n, c)), jnp.float32),
                mask_features=jnp.asarray(rng.normal(size=(t, h, w, c)), jnp.float32),
                # With the logits the step also tracks S and sigma_t (the segmenter-space Hungarian).
                logits=jnp.asarray(rng.normal(size=(t, n, args.num_classes + 1)), jnp.float32),
                valid=jnp.ones((t,), bool))
  print(f"backend {jax.default_backend()} ({jax.device_count()} devices); N={n} C={c} FFN={args.ffn_dim} "
        f"K={args.num_classes} masks {h}x{w}; {t} frames per scan, best of {args.repeats}")

  slots = jnp.asarray(rng.normal(size=(n, c)), jnp.float32)
  current = jnp.asarray(rng.normal(size=(n, c)), jnp.float32)
  occupied = jnp.asarray(rng.random(n) < 0.5)
  cost = np.asarray(cosine_cost(slots, current))
  lsa = _time(lambda: scipy.optimize.linear_sum_assignment(cost), args.repeats * 10)
  print(f"scipy linear_sum_assignment {n}x{n}: {lsa * 1e3:.3f} ms")

  for matcher in args.matchers.split(","):
    config.tracker.matcher = matcher
    chunk = jax.jit(lambda p, f: association.run_chunk(
        config, p, association.init_state(config, p, f), f)[1]["pred_logits"])
    step = _time(lambda: chunk(params, frames).block_until_ready(), args.repeats) / t
    ohm = jax.jit(lambda s, x, o, m=matcher: occupancy_guided_matching(s, x, o, matcher=m))
    sigma = jax.jit(lambda s, x, m=matcher: hungarian(cosine_cost(s, x), matcher=m))
    ohm_time = _time(lambda: ohm(slots, current, occupied).block_until_ready(), args.repeats * 10)
    sigma_time = _time(lambda: sigma(slots, current).block_until_ready(), args.repeats * 10)
    share = (ohm_time + sigma_time) / step
    print(f"matcher={matcher:6s}  step {step * 1e3:8.2f} ms/frame   OHM {ohm_time * 1e3:7.3f} ms   "
          f"sigma Hungarian {sigma_time * 1e3:7.3f} ms   matching share {100 * share:5.1f}%")
  return 0
