"""Training throughput and peak memory, on a synthetic batch (no dataset needed).

  python scripts/benchmark.py train [--settings paper_shapes,synthetic_tiny_segmenter,synthetic_tiny_tracker]
      [--steps 3] [--batch_size 1] [--image_size 256]

Settings (each runs in its own subprocess, so that every peak-memory figure is that setting's own):
  paper_shapes              tracker training (TrackingTask, frozen segmenter) at the paper's shapes: clips of
                            5 frames, N=100 queries, C=256, K=40, T_E + T_A 3+3 layers, FFN 2048, 12544
                            loss points, G=10 instances, with a SMALL frozen segmenter backbone (ResNet-18,
                            width 16; the pixel decoder and the 9-layer transformer decoder at C=256);
                            `--batch_size` clips of `--image_size`^2 (the reference: 1 clip per GPU, crops
                            of 384..600 px).
  synthetic_tiny_segmenter  configs/synthetic_tiny.py, segmenter stage (SegmenterTask), its batch shape.
  synthetic_tiny_tracker    configs/synthetic_tiny.py, tracker stage (TrackingTask on the frozen segmenter).

Uses `o2vis_jax.train.initial_state` / `make_train_step` and the task directly, random weights, one
fixed random batch in the input-pipeline format. Reported: init time, first step (compile + run), then
the median time of `--steps` further steps and the machine's load; peak host RSS of the process
(resource.getrusage ru_maxrss, which includes JAX/XLA itself and the compilation); device memory stats
when the backend reports them (None on CPU). Figures are printed, never asserted; on a shared machine
they are noisy.
"""

import argparse
import os
import resource
import subprocess
import sys
import time

import numpy as np

SETTINGS = ("paper_shapes", "synthetic_tiny_segmenter", "synthetic_tiny_tracker")


def _config(setting, args):
  if setting == "paper_shapes":
    from configs import ytvis19_r50
    config = ytvis19_r50.get_config()
    config.model.backbone.depth = 18
    config.model.backbone.width = 16
    config.batch_size = args.batch_size
    config.data.pad_buckets = ((args.image_size, args.image_size),)
    return config, "tracker"
  from configs import synthetic_tiny
  stage = setting.rsplit("_", 1)[1]
  config = synthetic_tiny.get_config(stage)
  return config, stage


def synthetic_batch(config, seed=0):
  """A batch in the format of o2vis_jax/input_pipeline.py: random frames, rectangles as instance masks
  (each instance visible in a random subset of the frames, moving by a few pixels per frame)."""
  rng = np.random.default_rng(seed)
  b, t, g = config.batch_size, config.data.num_frames, config.data.max_instances
  h, w = config.data.pad_buckets[0]
  masks = np.zeros((b, t, g, h, w), bool)
  present = rng.random((b, t, g)) < 0.8
  for i in range(b):
    for k in range(g):
      y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
      dy, dx = rng.integers(h // 8, h // 2), rng.integers(w // 8, w // 2)
      for f in range(t):
        if present[i, f, k]:
          masks[i, f, k, y + 2 * f: y + dy + 2 * f, x + 3 * f: x + dx + 3 * f] = True
  present &= masks.any(axis=(-2, -1))
  present[:, 0, :] |= ~present.any(axis=1)     # every instance annotated somewhere
  masks[:, 0][present[:, 0] & ~masks[:, 0].any(axis=(-2, -1))] = True
  return dict(frames=rng.uniform(0, 255, (b, t, h, w, 3)).astype(np.float32),
              pixel_valid=np.ones((b, t, h, w), bool), frame_valid=np.ones((b, t), bool),
              labels=rng.integers(0, config.model.num_classes, (b, g)).astype(np.int32),
              instance_valid=np.ones((b, g), bool), masks=masks, present=present,
              track_ids=np.arange(b * g, dtype=np.int32).reshape(b, g))


def _peak_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_setting(setting, args):
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from o2vis_jax import tasks, train

  config, stage = _config(setting, args)
  task = tasks.build_task(config)   # config.train.task is the stage
  mesh = train.make_mesh()
  start = time.perf_counter()
  state, frozen, tx = train.initial_state(task, config)
  init_s = time.perf_counter() - start
  phase = task.phase(0)
  step_fn = train.make_train_step(task, tx, mesh, config.batch_size, phase=phase)
  batch = jax.device_put(synthetic_batch(config), NamedSharding(mesh, P(train.DATA_AXIS)))
  state, frozen = jax.device_put((state, frozen), NamedSharding(mesh, P()))
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  num_frozen = sum(x.size for x in jax.tree.leaves(frozen))

  start = time.perf_counter()
  state, metrics = step_fn(state, frozen, batch)
  jax.block_until_ready(metrics)
  first_s = time.perf_counter() - start
  losses = [float(metrics["loss"])]
  step_times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = step_fn(state, frozen, batch)
    losses.append(float(metrics["loss"]))  # blocks on the step
    step_times.append(time.perf_counter() - start)
  steps_s = sum(step_times)
  median_step = float(np.median(step_times))
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  peak_device = None if not stats else stats.get("peak_bytes_in_use")
  h, w = config.data.pad_buckets[0]
  print(f"[{setting}] stage={stage} batch={config.batch_size} frames={config.data.num_frames} "
        f"image={h}x{w} N={config.model.num_queries} C={config.model.hidden_dim} "
        f"K={config.model.num_classes} G={config.data.max_instances} points={config.loss.num_points} "
        f"backbone=resnet{config.model.backbone.depth}/w{config.model.backbone.width} "
        f"devices={mesh.devices.size} ({device.platform})")
  print(f"[{setting}] trainable params {num_params / 1e6:.2f} M, frozen {num_frozen / 1e6:.2f} M; "
        f"init {init_s:.1f} s; first step (compile + run) {first_s:.1f} s")
  print(f"[{setting}] {args.steps} steps in {steps_s:.2f} s: median {median_step:.2f} s/step "
        f"({1 / median_step:.3f} steps/s, {config.batch_size / median_step:.3f} clips/s)")
  print(f"[{setting}] load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
  print(f"[{setting}] peak host RSS {_peak_rss_mib():.0f} MiB; device peak "
        f"{'n/a' if peak_device is None else f'{peak_device / 2**20:.0f} MiB'}; losses "
        + " ".join(f"{x:.3f}" for x in losses))


def main(argv):
  parser = argparse.ArgumentParser(prog="benchmark.py train", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--settings", default=",".join(SETTINGS))
  parser.add_argument("--steps", type=int, default=3, help="timed steps after the first (compiling) one")
  parser.add_argument("--batch_size", type=int, default=1, help="clips per step (paper_shapes)")
  parser.add_argument("--image_size", type=int, default=256, help="square padded clip size (paper_shapes)")
  args = parser.parse_args(argv)
  settings = [s for s in args.settings.split(",") if s]
  unknown = sorted(set(settings) - set(SETTINGS))
  if unknown:
    parser.error(f"unknown settings {unknown}; choose from {SETTINGS}")
  if len(settings) == 1:
    run_setting(settings[0], args)
    return 0
  script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmark.py")
  status = 0
  for setting in settings:
    command = [sys.executable, script, "train", "--settings", setting, "--steps", str(args.steps),
               "--batch_size", str(args.batch_size), "--image_size", str(args.image_size)]
    status |= subprocess.call(command)
  return status
