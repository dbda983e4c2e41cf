"""What the benchmarks share: timing, the machine's load, and the flags of the per-frame step benchmarks.
(A module whose name starts with '_' is not a benchmark: scripts/benchmark.py does not list it.)"""

import os
import time

import numpy as np


def timed_calls(fn, repeats):
  """One warm-up call, then `repeats` timed calls -> (median wall time, every call's time), in seconds."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times)), times


def median_time(fn, repeats):
  """One warm-up call, then the median wall time of `repeats` calls (seconds)."""
  return timed_calls(fn, repeats)[0]


def load_line():
  return "load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def add_step_flags(parser, mask_size_help="h x w of the masks and mask features"):
  """The sizes and timing flags of a per-frame association step benchmark (tracker, cavis)."""
  parser.add_argument("--queries", type=int, default=100)
  parser.add_argument("--channels", type=int, default=256)
  parser.add_argument("--ffn_dim", type=int, default=2048)
  parser.add_argument("--num_classes", type=int, default=40)
  parser.add_argument("--frames", type=int, default=10)
  parser.add_argument("--mask_size", default="120x160", help=mask_size_help)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--matchers", default="host,device")
  parser.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch intra-op threads")
