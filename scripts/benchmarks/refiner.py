"""Time and memory of the offline temporal refiner over one video, plain vs blockwise temporal attention.

  python scripts/benchmark.py refiner [--frames 50,500,5000] [--queries 100] [--channels 256]
      [--blocks 64] [--frame_chunks 64] [--slot_chunk 10] [--run_frames 5000] [--repeats 2]

Random refiner weights (C channels, FFN 2048, 8 heads, 6 layers, K = 40) and random inputs (N slots, 100
segmenter queries). What is measured is `refiner.refine_queries` in eval mode (layers + heads: the part
whose memory grows with T; the masks are made chunk by chunk from the mask embeddings on the caller's
side, `masks_from_embeddings`, and cost T * N * h * w whatever the attention).

For every T and every attention (plain: all T frames at once; blockwise B with the per-frame steps in chunks
of F frames, for each B of --blocks and F of --frame_chunks; "F=all": no chunks): the peak memory XLA plans for
the compiled program (`compiled.memory_analysis()`: arguments + outputs + temporaries, less aliased
bytes), and, where T <= --run_frames, the wall time per video (best of --repeats, compile excluded) and
the device's `memory_stats()` peak where the backend reports it (GPU; not the CPU backend). "logits GiB"
is the size of ONE temporal-attention logits buffer, N * heads * T * T (plain) or N * heads * T * B
(blockwise, per key block), what a backend that materialises the attention logits (GPU XLA without a fused
attention kernel) holds per layer; XLA:CPU fuses the plain softmax into the dot's consumers and never
materialises it, so on CPU the planned bytes of the plain program grow ~linearly (and its time suffers). Then the
largest T whose plain program fits in the memory the blockwise one plans at the largest T: the plain
program's planned bytes are a quadratic in T, fitted on three compiled sizes and checked by compiling at
the answer (and one frame more). Prints figures, asserts nothing.
"""

import argparse
import time

import numpy as np


def _time(fn, repeats):
  fn()  # warm up (the compile is excluded)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def _gib(num_bytes):
  return num_bytes / 2**30


def main(argv):
  parser = argparse.ArgumentParser(prog="benchmark.py refiner", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--frames", default="50,500,5000", help="video lengths T, comma separated")
  parser.add_argument("--queries", type=int, default=100, help="slots N")
  parser.add_argument("--segmenter_queries", type=int, default=100)
  parser.add_argument("--channels", type=int, default=256)
  parser.add_argument("--ffn_dim", type=int, default=2048)
  parser.add_argument("--num_heads", type=int, default=8)
  parser.add_argument("--num_layers", type=int, default=6)
  parser.add_argument("--num_classes", type=int, default=40)
  parser.add_argument("--blocks", default="64", help="blockwise attention block sizes, comma separated")
  parser.add_argument("--frame_chunks", default="64",
                      help="frame chunks of the per-frame steps for the blockwise rows, comma separated "
                           "('all' = no chunks)")
  parser.add_argument("--slot_chunk", type=int, default=10,
                      help="slots per chunk of the temporal steps for the blockwise rows (0 = all at once)")
  parser.add_argument("--run_frames", type=int, default=5000,
                      help="time only T <= this (the others are compiled for their memory analysis only)")
  parser.add_argument("--plain_run_frames", type=int, default=500,
                      help="the same for the plain rows (T = 5000 plain needs more than 24 GiB on CPU)")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import ml_collections

  from o2vis_jax import refiner

  n, c, n_seg = args.queries, args.channels, args.segmenter_queries
  frames = [int(t) for t in args.frames.split(",")]
  blocks = [int(b) for b in args.blocks.split(",") if b]
  dtype = jnp.dtype(args.dtype)
  section = refiner.default_config()
  section.update(num_layers=args.num_layers, ffn_dim=args.ffn_dim, num_heads=args.num_heads)
  params = refiner.init_params({"refiner": section}, jax.random.PRNGKey(0), num_classes=args.num_classes,
                               hidden_dim=c)
  params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  device = jax.devices()[0]
  print(f"backend {jax.default_backend()} ({device.device_kind}); N={n} N_seg={n_seg} C={c} "
        f"FFN={args.ffn_dim} "
        f"heads={args.num_heads} L={args.num_layers} K={args.num_classes} {args.dtype}; refine_queries, eval "
        f"mode; best of {args.repeats}")

  chunks = [None if c == "all" else int(c) for c in args.frame_chunks.split(",") if c]

  def program(block, chunk=None):
    config = ml_collections.ConfigDict({"refiner": section.to_dict()})
    config.refiner.attention_block = block
    config.refiner.frame_chunk = chunk
    config.refiner.slot_chunk = (args.slot_chunk or None) if block is not None else None
    return jax.jit(lambda p, x, f: refiner.refine_queries(config, p, x, f))

  def shapes(t):
    return (jax.ShapeDtypeStruct((t, n, c), dtype), jax.ShapeDtypeStruct((t, n_seg, c), dtype))

  def planned_bytes(block, t, chunk=None):
    start = time.perf_counter()
    compiled = program(block, chunk).lower(params, *shapes(t)).compile()
    analysis = compiled.memory_analysis()
    total = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
             - analysis.alias_size_in_bytes)
    return compiled, total, analysis.temp_size_in_bytes, time.perf_counter() - start

  attentions = [("plain", None, None)] + [
      (f"blockwise B={b} F={'all' if f is None else f}", b, f) for b in blocks for f in chunks]
  planned = {}
  def logits_bytes(block, t):
    stats = np.dtype(np.float64 if dtype == jnp.float64 else np.float32).itemsize
    keys = t if block is None else block
    rows = t if block is None else -(-t // block) * block
    return n * args.num_heads * rows * keys * stats

  print(f"{'attention':>22} {'T':>6} {'planned GiB':>12} {'temp GiB':>10} {'logits GiB':>10} {'compile s':>10} "
        f"{'s / video':>10} {'ms / frame':>10} {'peak GiB (memory_stats)':>24}")
  for name, block, chunk in attentions:
    for t in frames:
      compiled, total, temp, compile_s = planned_bytes(block, t, chunk)
      planned[(block, t)] = min(total, planned.get((block, t), total))
      timing = peak = "-"
      if t <= (args.run_frames if block is not None else min(args.run_frames, args.plain_run_frames)):
        rng = np.random.default_rng(t)
        x = jnp.asarray(rng.normal(size=(t, n, c)), dtype)
        f = jnp.asarray(rng.normal(size=(t, n_seg, c)), dtype)
        seconds = _time(lambda: jax.block_until_ready(compiled(params, x, f)), args.repeats)
        timing = f"{seconds:10.3f} {seconds / t * 1e3:10.3f}"
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
          peak = f"{_gib(stats['peak_bytes_in_use']):.3f}"
        del x, f
      else:
        timing = f"{'-':>10} {'-':>10}"
      print(f"{name:>22} {t:>6} {_gib(total):12.3f} {_gib(temp):10.3f} {_gib(logits_bytes(block, t)):10.3f} "
            f"{compile_s:10.1f} {timing} {peak:>24}")

  import resource
  print(f"process peak RSS so far: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
  # The largest T the plain program fits in what the blockwise one plans at the largest T.
  longest = max(frames)
  fit_frames = sorted(set(frames))[-3:] if len(set(frames)) >= 3 else [16, 64, 256]
  values = [planned.get((None, t)) or planned_bytes(None, t)[1] for t in fit_frames]
  quadratic = np.polyfit(np.asarray(fit_frames, np.float64), np.asarray(values, np.float64), 2)
  for block in blocks:
    budget = planned[(block, longest)]
    a, b, c0 = quadratic
    roots = np.roots([a, b, c0 - budget])
    estimate = int(np.floor(max(r.real for r in roots if abs(r.imag) < 1e-9)))
    # Checked by compiling at the estimate and one frame more (buffer assignment is not exactly polynomial).
    check = {t: planned_bytes(None, t)[1] for t in (estimate, estimate + 1)}
    verdict = ", ".join(f"T={t}: {_gib(v):.3f} GiB {'fits' if v <= budget else 'does not fit'}"
                        for t, v in check.items())
    print(f"plain attention in the {_gib(budget):.3f} GiB that blockwise B={block} plans at T={longest}: "
          f"T <= {estimate} (quadratic fit on T={fit_frames}; checked: {verdict})")
    # Where the logits are materialised: the plain program's bytes ~ its linear part (the planned bytes of
    # the blockwise program less its logits block) + one N * heads * T^2 logits buffer.
    linear_per_frame = (budget - logits_bytes(block, longest)) / longest
    square = logits_bytes(None, 1)   # bytes per T^2
    materialised = int((-linear_per_frame + np.sqrt(linear_per_frame**2 + 4 * square * budget)) / (2 * square))
    print(f"  if the plain logits are materialised (one [N, heads, T, T] buffer + the linear part): T <= "
          f"{materialised}")
  return 0
