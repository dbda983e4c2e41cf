"""Training input pipeline throughput (clips/s) on synthetic data, at tiny and at paper sizes.

  python scripts/benchmark.py input_pipeline [--batches 10 --workers 0 --paper_frame_size 720]

tiny: configs/tiny.py data settings on 96 px frames. paper: the default `config.data` augmentation
(crop 384..600, shorter side 320..640, longest <= 768, 5 frames, pad buckets up to 768) on synthetic frames of
`--paper_frame_size` pixels (YouTube-VIS frames are 720 x 1280). `--workers N` uses N grain worker processes.
"""

import argparse
import tempfile
import time

import grain
from absl import flags

from configs import base, tiny


def _measure(config, built, batch_size, batches, workers):
  from o2vis_jax.datasets import builders  # pylint: disable=g-import-not-at-top
  from o2vis_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config.data.num_workers = workers
  source, _ = builders.open_split(built, "train")
  iterator = iter(input_pipeline.train_dataset(config, source, batch_size=batch_size,
                                               coco_source=source, shard_options=grain.sharding.NoSharding()))
  next(iterator)                                # warm-up (worker start, first decode).
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
  elapsed = time.perf_counter() - start
  return batches * batch_size / elapsed, batch["frames"].shape


def main(argv):
  parser = argparse.ArgumentParser(prog="benchmark.py input_pipeline", description=__doc__.split("\n\n")[0])
  parser.add_argument("--batches", type=int, default=10, help="timed batches per setting")
  parser.add_argument("--batch_size", type=int, default=8, help="clips per batch")
  parser.add_argument("--workers", type=int, default=0, help="grain worker processes (0 = in process)")
  parser.add_argument("--paper_frame_size", type=int, default=720, help="synthetic frame side, paper run")
  args = parser.parse_args(argv)
  if not flags.FLAGS.is_parsed():   # grain worker processes read absl flags (absl.app parses them).
    flags.FLAGS.mark_as_parsed()
  from o2vis_jax.datasets import builders, synthetic  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as root:
    for name, size, config in (("tiny", 96, tiny.get_config()),
                               ("paper", args.paper_frame_size, base.get_base_config())):
      start = time.perf_counter()
      synthetic.generate(f"{root}/{name}", "train", num_videos=8, seed=0, size=size, num_frames=12)
      built = builders.build("synthetic", f"{root}/{name}", f"{root}/{name}_built")
      prepared = time.perf_counter() - start
      clips_per_s, shape = _measure(config, built, args.batch_size, args.batches, args.workers)
      print(f"{name}: {clips_per_s:.1f} clips/s (batch {args.batch_size}, frames {shape}, "
            f"{args.workers} workers; data generated and built in {prepared:.1f} s)")
  return 0
