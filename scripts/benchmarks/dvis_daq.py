"""DVIS-DAQ's frame step against the authors' `VideoInstanceCutter.inference` (PyTorch) in one process, against
O2VIS, and its memory over video length.

  python scripts/benchmark.py dvis_daq [--frames 10] [--queries 100] [--hidden 256] [--mask_size 60x80]
      [--repeats 3] [--git_dir /work/.mirror/zhang-tao-whu+DVIS_Plus/repo] [--memory_frames 50,500,5000]

1. Time per frame at N queries, C channels (6 layers, FFN 2048, 8 heads, K 40, 5 background slots): the
   authors' module (DVIS_DAQ/dvis_daq/track_module.py, imported from a temporary copy as
   scripts/make_dvis_daq_fixtures.py does; `inference` over the clip as `run_window_inference` calls it per
   window) and ours (`association.run_chunk` jitted over the same frames, S = `--slots`) on the same random
   segmenter outputs and the same (converted) random weights; OVIS validity (the slot branch runs every
   frame) unless --ytvis. Threshold `--threshold` (0.5 by default: on random weights a part of the rows is
   valid, so tracks are born and die). Timing: one warm-up call (our compilation), then the median of
   `--repeats`. Also printed: the mean number of live tracks per frame of both (the same model: equal
   unless float32 rounding flips a threshold) and O2VIS's step (`association.track`, C, N) on the same frames.
2. Memory over video length (`--memory_frames`, at `--memory_hidden` / `--memory_queries`): streaming chunks
   of 5 frames with the dead sequences released to the host between chunks (`Method.release`), as video
   inference does; printed per length: the device state's bytes (fixed by S), the compiled chunk's XLA
   memory (one compilation), the largest table occupancy, the sequences released and the process's peak RSS.
"""

import argparse
import os
import resource
import tempfile
import time

import numpy as np

from benchmarks._common import median_time



def random_frames(rng, num_frames, num_queries, hidden, num_classes, height, width):
  embeds = rng.normal(size=(num_frames, num_queries, hidden)).astype(np.float32)
  embeds = (embeds - embeds.mean(-1, keepdims=True)) / embeds.std(-1, keepdims=True)
  return dict(embeds=embeds,
              logits=rng.normal(size=(num_frames, num_queries, num_classes + 1)).astype(np.float32) * 2,
              masks=rng.normal(size=(num_frames, num_queries, height, width)).astype(np.float32) * 2,
              mask_features=rng.normal(size=(num_frames, height, width, hidden)).astype(np.float32))


def reference_module(git_dir, workdir, hidden, num_queries, num_classes, ovis, threshold):
  import make_dvis_daq_fixtures as fixtures
  import subprocess
  texts = {p: subprocess.check_output(["git", f"--git-dir={git_dir}", "show", f"HEAD:{p}"], text=True)
           for p in fixtures.FILES}
  track_module, _ = fixtures.load_modules(texts, workdir)
  tracker = track_module.VideoInstanceCutter(
      hidden_dim=hidden, feedforward_dim=2048, num_head=8, decoder_layer_num=6, mask_dim=hidden,
      num_classes=num_classes, num_new_ins=num_queries, num_slots=5, inference_select_threshold=threshold,
      keep_threshold=0.01, ovis_infer=ovis).eval()
  return tracker


def run_reference(torch, tracker, frames, query_feat, aux_threshold=0.01):
  """The authors' `inference` over the clip (resume=False: frame 0 of the video); returns the live counts."""
  logits = torch.from_numpy(frames["logits"])
  valid = logits.softmax(-1)[..., :-1].max(-1)[0] > aux_threshold
  info = {"pred_masks": [[torch.from_numpy(m)] for m in frames["masks"]],
          "valid": [[v] for v in valid], "seg_query_feat": query_feat}
  embeds = torch.from_numpy(frames["embeds"]).permute(2, 0, 1)[None]           # (1, C, T, N)
  features = torch.from_numpy(frames["mask_features"]).permute(0, 3, 1, 2)[None]  # (1, T, C, h, w)
  live = []
  original = tracker.readout

  def counting(read_type="last"):
    out = original(read_type)
    if read_type == "last":
      live.append(len(tracker.last_seq_ids))
    return out

  tracker.readout = counting
  with torch.no_grad():
    tracker.inference(embeds, features, info, 0, resume=False, to_store="cpu")
  del tracker.readout
  return live


def main(argv):
  parser = argparse.ArgumentParser(prog="benchmark.py dvis_daq", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--frames", type=int, default=10)
  parser.add_argument("--queries", type=int, default=100)
  parser.add_argument("--hidden", type=int, default=256)
  parser.add_argument("--classes", type=int, default=40)
  parser.add_argument("--mask_size", default="60x80")
  parser.add_argument("--slots", type=int, default=128)
  parser.add_argument("--threshold", type=float, default=0.5)
  parser.add_argument("--ytvis", action="store_true", help="YTVIS validity (no slot branch)")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--git_dir", default="/work/.mirror/zhang-tao-whu+DVIS_Plus/repo")
  parser.add_argument("--no_reference", action="store_true")
  parser.add_argument("--memory_frames", default="50,500,5000")
  parser.add_argument("--memory_hidden", type=int, default=64)
  parser.add_argument("--memory_queries", type=int, default=20)
  parser.add_argument("--memory_threshold", type=float, default=0.9)
  parser.add_argument("--memory_only", action="store_true")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import torch
  from o2vis_jax import association, checkpoint_conversion as cc, defaults

  torch.set_num_threads(args.threads)
  height, width = (int(v) for v in args.mask_size.split("x"))
  rng = np.random.default_rng(0)
  frames = random_frames(rng, args.frames, args.queries, args.hidden, args.classes, height, width)
  print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
  print(f"N {args.queries}, C {args.hidden}, K {args.classes}, masks {height}x{width}, {args.frames} frames, "
        f"{'YTVIS' if args.ytvis else 'OVIS'} validity, threshold {args.threshold}")

  if args.memory_only:
    return memory(args, association)
  torch.manual_seed(0)
  with tempfile.TemporaryDirectory() as workdir:
    tracker = reference_module(args.git_dir, workdir, args.hidden, args.queries, args.classes,
                               not args.ytvis, args.threshold)
    query_feat = torch.nn.Embedding(args.queries, args.hidden)
    state_dict = {"tracker." + k: v.numpy() for k, v in tracker.state_dict().items()}
    state_dict["sem_seg_head.predictor.query_feat.weight"] = query_feat.weight.detach().numpy()
    config, params = cc.association_from_reference("dvis_daq", state_dict, 8)
    config.association.dvis_daq.update(num_slots=args.slots, inference_select_threshold=args.threshold,
                                       ovis_infer=not args.ytvis, on_overflow="drop")
    params = jax.tree.map(jnp.asarray, params)
    device_frames = {k: jnp.asarray(v) for k, v in frames.items()}
    device_frames["valid"] = jnp.ones((args.frames,), bool)
    state = association.init_state(config, params, device_frames)
    ours = jax.jit(lambda p, s, f: association.run_chunk(config, p, s, f))
    run_ours = lambda: jax.block_until_ready(ours(params, state, device_frames))
    ours_time = median_time(run_ours, args.repeats) / args.frames
    _, outputs = run_ours()
    our_live = np.asarray(outputs["live"]).sum(1)
    print(f"ours (JAX, S={args.slots}): {1e3 * ours_time:.2f} ms/frame; live tracks per frame "
          f"{our_live.tolist()}; dropped {int(outputs['num_dropped'][-1])}")
    if not args.no_reference:
      live = []
      reference_time = median_time(lambda: live.append(run_reference(torch, tracker, frames, query_feat)),
                                   args.repeats) / args.frames
      print(f"authors' VideoInstanceCutter (PyTorch, {args.threads} threads): {1e3 * reference_time:.2f} "
            f"ms/frame; live tracks per frame {live[-1]}")
      print(f"ratio reference / ours: {reference_time / ours_time:.2f}")

    o2vis_config = defaults.base_config()
    o2vis_params = association.get("o2vis").init_params(o2vis_config, jax.random.PRNGKey(0),
                                                       num_classes=args.classes, hidden_dim=args.hidden)
    o2vis_frames = {"embeds": device_frames["embeds"], "embeds_without_norm": device_frames["embeds"],
                    "mask_features": device_frames["mask_features"]}
    o2vis = jax.jit(lambda p, f: association.track(o2vis_config, p, f))
    o2vis_time = median_time(lambda: jax.block_until_ready(o2vis(o2vis_params, o2vis_frames)),
                             args.repeats) / args.frames
    print(f"O2VIS (JAX, the same frames): {1e3 * o2vis_time:.2f} ms/frame; DVIS-DAQ / O2VIS "
          f"{ours_time / o2vis_time:.2f}")

  memory(args, association)
  print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


def memory(args, association):
  """Streaming chunks with releases: device state and compiled memory fixed, host grows by the released
  sequences' accumulators only."""
  import jax
  import jax.numpy as jnp
  from o2vis_jax import defaults
  chunk, hidden, queries = 5, args.memory_hidden, args.memory_queries
  config = association.with_method(defaults.base_config(), "dvis_daq")
  config.model.num_queries = queries
  config.association.dvis_daq.update(num_slots=64, num_layers=2, ffn_dim=128, inference_select_threshold=args.memory_threshold,
                                     kick_out_frame_num=2, on_overflow="drop")
  method = association.get("dvis_daq")
  params = method.init_params(config, jax.random.PRNGKey(0), num_classes=args.classes, hidden_dim=hidden)
  # Spread the scores and the rows (random weights collapse the rows): tracks keep being born and dying.
  params["class_embed"]["kernel"] = params["class_embed"]["kernel"] * 5
  params["pos_embed"]["layers_2"]["kernel"] = params["pos_embed"]["layers_2"]["kernel"] * 6
  rng = np.random.default_rng(1)
  pool = random_frames(rng, 50, queries, hidden, args.classes, 16, 16)
  step = jax.jit(lambda s, f: association.run_chunk(config, params, s, f))
  compiled_mb = None
  for length in (int(v) for v in args.memory_frames.split(",")):
    state = method.init_state(config, num_queries=queries, hidden_dim=hidden, dtype=jnp.float32)
    if compiled_mb is None:
      example = {k: jnp.asarray(v[:chunk]) for k, v in pool.items()}
      example["valid"] = jnp.ones((chunk,), bool)
      analysis = step.lower(state, example).compile().memory_analysis()
      compiled_mb = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                     + analysis.temp_size_in_bytes) / 2 ** 20
    accumulator = method.score_init(config, 64, args.classes)
    most_occupied, released = 0, 0
    start = time.perf_counter()
    for first in range(0, length, chunk):
      index = (np.arange(first, first + chunk) % 50)
      frames = {k: jnp.asarray(v[index]) for k, v in pool.items()}
      frames["valid"] = jnp.asarray(np.arange(first, first + chunk) < length)
      state, out = step(state, frames)
      host = {k: np.asarray(out[k]) for k in method.score_inputs}
      accumulator = method.score_update(config, accumulator, host)
      most_occupied = max(most_occupied, int(np.asarray(state.occupied).sum()))
      state, accumulator, freed = method.release(config, state, accumulator)
      released += len(freed)
    dropped = int(host["num_dropped"][-1])
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"memory, {length} frames (C {hidden}, N {queries}, S 64): device state {state_bytes / 1024:.1f} KiB, "
          f"compiled chunk {compiled_mb:.2f} MiB, most occupied slots {most_occupied}, released sequences "
          f"{released} (dropped {dropped}), process peak RSS {peak_mb:.0f} MiB, {time.perf_counter() - start:.1f} s")
