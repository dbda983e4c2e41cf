"""Video inference on long videos: time and memory at T = 50, 500, 5000 frames (SPEC section 4).

  python scripts/benchmark.py video [--frames 50,500,5000] [--size 64x96] [--chunk_size 8]

A tiny segmenter + trackers (configs/tiny.py, random weights) over a synthetic stream of frames
generated on the fly (no disk, no video held in memory). Per T it prints the wall time (compile
excluded: one warm-up chunk first), ms per frame, the number of compilations of the chunk function
(1 for every T is the point), the peak host RSS during the run, the RSS growth, the host bytes held by
the RLE results, and the device memory: `memory_stats()` peak where the backend reports it (GPU, TPU),
else the compiled chunk function's own footprint (arguments + outputs + temporaries, from XLA's
memory analysis), which by construction does not depend on T. Time should grow linearly in T; device
memory not at all; host memory with the RLEs (objects x frames), not with T x N x H x W.

  python scripts/benchmark.py video --model r50 [--frames 16] [--size 480x640] [--chunk_size 8]

Whole-video inference at paper size: the R50 segmenter of configs/ytvis19_r50.py + the O2VIS trackers
(random weights) through `inference.VideoPredictor` (segmenter, tracker, masks resized to the frame and
bit-packed) over `--frames` frames, after one warm-up chunk (the compilation); frames per second, the
median of `--repeats` videos. With torch + transformers importable (PYTHONPATH=/work/pydeps/hf:
/work/pydeps/hfdeps) and the LOMM mirror present, the reference in the same process: transformers'
Mask2Former per frame + the authors' LOMM tracker over the clip (their per-frame times summed; the
reference's mask post-processing is not counted, which favours it), torch pinned to `--threads`.
"""

import argparse
import resource
import sys
import threading
import time

import numpy as np


def _rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024.0
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _PeakRss:
  """Samples the RSS every 20 ms in a thread; `.peak` is the maximum seen."""

  def __init__(self):
    self.peak = _rss_mb()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _run(self):
    while not self._stop.wait(0.02):
      self.peak = max(self.peak, _rss_mb())

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, _rss_mb())


def _frames(num, height, width, seed=0):
  """A moving bright square on noise, generated frame by frame."""
  rng = np.random.default_rng(seed)
  background = rng.integers(0, 120, size=(height, width, 3), dtype=np.uint8)
  for t in range(num):
    frame = background.copy()
    y = (3 * t) % max(1, height - 16)
    x = (5 * t) % max(1, width - 16)
    frame[y:y + 16, x:x + 16] = (230, 200, 40)
    yield frame


def _rle_bytes(prediction) -> int:
  return sum(len(r["counts"]) + 16 for rles in prediction.slot_rles for r in rles)


def _device_peak_mb(device):
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if not stats:
    return None
  return stats.get("peak_bytes_in_use", stats.get("bytes_in_use", 0)) / 2 ** 20


def r50_video(args):
  """Frames per second of R50 + O2VIS video inference, and of the reference (module docstring)."""
  import os
  import jax
  from configs import ytvis19_r50
  from o2vis_jax import inference
  from benchmarks import segmenter as segmenter_benchmark
  from benchmarks import tracker as tracker_benchmark

  num = int(args.frames.split(",")[0]) if args.frames != "50,500,5000" else 16
  height, width = (int(v) for v in (args.size if args.size != "64x96" else "480x640").lower().split("x"))
  config = ytvis19_r50.get_config()
  config.inference.min_size_test = min(height, width)   # no resize: the frames are the model's input
  print(f"R50 + O2VIS video inference, {num} frames of {height}x{width}, chunk {args.chunk_size}, median "
        f"of {args.repeats} videos; jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cores")
  print(tracker_benchmark.load_line())
  params = inference.init_params(config, seed=args.seed)
  predictor = inference.VideoPredictor.from_config(config, params, chunk_size=args.chunk_size)
  start = time.perf_counter()
  predictor.predict(_frames(args.chunk_size, height, width), height, width)   # compile
  print(f"jax:    first chunk incl. compile {time.perf_counter() - start:.1f} s")
  seconds = tracker_benchmark.median_time(
      lambda: predictor.predict(_frames(num, height, width, args.seed), height, width), args.repeats)
  print(f"jax:    {num / seconds:.3f} frames/s ({seconds / num:.3f} s/frame, segmenter + tracker + masks; "
        f"{predictor.num_compilations} compilation(s))")
  try:
    import torch
    import transformers  # noqa: F401
  except ImportError:
    print("torch / transformers not importable: no reference (PYTHONPATH=/work/pydeps/hf:/work/pydeps/hfdeps)")
    print(tracker_benchmark.load_line())
    return 0
  torch.set_num_threads(args.threads)
  segmenter_s, threads = segmenter_benchmark.time_torch(config.model, 1, height, width, args.repeats)
  tracker_s = None
  if os.path.isdir(args.lomm_git_dir):
    tracker_s = _lomm_tracker_seconds(args, config, num, height // 4, width // 4)
  reference_s = segmenter_s + (tracker_s or 0.0)
  print(f"torch:  {1 / reference_s:.3f} frames/s ({reference_s:.3f} s/frame = Mask2Former {segmenter_s:.3f}"
        + (f" + LOMM tracker {tracker_s:.3f}" if tracker_s is not None else " (no LOMM mirror: no tracker)")
        + f"; {threads} threads)")
  print(f"ratio jax / torch time per frame: {seconds / num / reference_s:.2f}")
  print(tracker_benchmark.load_line())
  return 0


def _lomm_tracker_seconds(args, config, num, mask_h, mask_w):
  """Per-frame time of the authors' LOMM tracker over `num` frames at the config's sizes (eval mode)."""
  import tempfile
  import torch
  from benchmarks import tracker as tracker_benchmark
  m = config.model
  tracker_class = tracker_benchmark.load_lomm_tracker_class(args.lomm_git_dir, tempfile.mkdtemp())
  torch.manual_seed(0)
  reference = tracker_class(hidden_channel=m.hidden_dim, feedforward_channel=config.tracker.ffn_dim,
                            num_head=config.tracker.num_heads, decoder_layer_num=2 * config.tracker.num_layers,
                            mask_dim=m.hidden_dim, class_num=m.num_classes).eval()
  n, c = m.num_queries, m.hidden_dim
  embeds, no_norm = torch.randn(1, c, num, n), torch.randn(1, c, num, n)
  mask_features = torch.randn(1, num, c, mask_h, mask_w)
  fg_prob = torch.rand(num, n, 1, 1)

  def run():
    with torch.no_grad():
      reference(embeds, mask_features, fg_prob, return_indices=True, frame_embeds_no_norm=no_norm)
  return tracker_benchmark.median_time(run, args.repeats) / num


def main(argv):
  parser = argparse.ArgumentParser(prog="benchmark.py video", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--frames", default="50,500,5000", help="comma-separated video lengths T")
  parser.add_argument("--size", default="64x96", help="frame size HxW (the tiny config resizes the "
                      "shorter side to 64)")
  parser.add_argument("--chunk_size", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--model", default="tiny", choices=("tiny", "r50"),
                      help="tiny: long videos, memory; r50: frames/s at paper size vs the reference")
  parser.add_argument("--repeats", type=int, default=3, help="r50: videos timed (median)")
  parser.add_argument("--threads", type=int, default=None, help="r50: PyTorch threads (default: cores)")
  parser.add_argument("--lomm_git_dir", default="/work/.mirror/Seung-Hun-Lee+LOMM/repo")
  args = parser.parse_args(argv)
  if args.model == "r50":
    import os
    args.threads = args.threads or os.cpu_count()
    return r50_video(args)
  lengths = [int(t) for t in args.frames.split(",")]
  height, width = (int(v) for v in args.size.lower().split("x"))

  import jax
  from configs import tiny
  from o2vis_jax import inference

  config = tiny.get_config()
  t0 = time.perf_counter()
  params = inference.init_params(config, seed=args.seed)
  predictor = inference.VideoPredictor.from_config(config, params, chunk_size=args.chunk_size)
  predictor.predict(_frames(args.chunk_size, height, width), height, width)   # compile
  print(f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}; tiny config "
        f"(N={config.model.num_queries}, K={config.model.num_classes}, C={config.model.hidden_dim}), "
        f"frames {height}x{width}, chunk {args.chunk_size}; init + compile "
        f"{time.perf_counter() - t0:.1f} s")
  footprint = predictor.compiled_memory_mb(height, width)
  device = jax.devices()[0]
  print(f"{'T':>6} {'time s':>8} {'ms/frame':>9} {'compiles':>8} {'peak RSS MB':>12} "
        f"{'RSS growth MB':>14} {'RLE MB':>7} {'device MB':>10}")
  for num in lengths:
    before = _rss_mb()
    with _PeakRss() as rss:
      start = time.perf_counter()
      prediction = predictor.predict(_frames(num, height, width, args.seed), height, width)
      elapsed = time.perf_counter() - start
    assert prediction.num_frames == num
    device_mb = _device_peak_mb(device)
    device_text = (f"{device_mb:.1f}" if device_mb is not None else f"{footprint:.1f}*")
    print(f"{num:>6} {elapsed:>8.2f} {1000 * elapsed / num:>9.2f} {predictor.num_compilations:>8} "
          f"{rss.peak:>12.1f} {rss.peak - before:>14.1f} {_rle_bytes(prediction) / 2**20:>7.2f} "
          f"{device_text:>10}")
    del prediction
  if _device_peak_mb(device) is None:
    print("* this backend reports no memory_stats(); device MB is the compiled chunk function's "
          "footprint (arguments + outputs + temporaries, XLA memory analysis), the same for every T.")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
