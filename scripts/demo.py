r"""O2VIS end to end on the built-in synthetic occlusion dataset, on a laptop CPU, with nothing downloaded.

  python scripts/demo.py                       # the shipped checkpoint (assets/synthetic_tiny)
  python scripts/demo.py --train               # train segmenter + trackers here first (configs/synthetic_tiny.py)

Steps (each also available on its own, shown in brackets):
  1. generate a held-out synthetic split (objects enter late, leave and re-enter, hide behind occluders)
     [python -m data.synthetic --out DIR --split valid --videos 20 --seed 20000 --size 96 --frames 24
      --radius_range 0.15 0.25]   (size and radius range: the checkpoint config's data.synthetic_*)
  2. obtain a segmenter and trackers: the shipped checkpoint, or --train
     [python scripts/train.py --config configs/synthetic_tiny.py --workdir DIR]
  3. video inference with the full O2VIS and with the Table 3(a) training-free baselines
     [python scripts/infer.py --checkpoint CKPT --dataset_json DIR/valid.json --frames_dir DIR/valid/JPEGImages]
  4. YouTube-VIS evaluation [python scripts/evaluate.py --gt DIR/valid.json --results RESULTS.json]
  5. a table of AP / AP50 / AP75 / AR1 / AR10 per method, and an overlay video of one clip with one colour
     per identity.
Everything is written under --workdir.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CHECKPOINT = os.path.join(_REPO, "assets", "synthetic_tiny")

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/o2vis_demo", "Where the data, results, metrics and the "
                               "overlay are written.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", DEFAULT_CHECKPOINT, "A converted checkpoint directory "
                                  "(segmenter + tracker) to evaluate; ignored with --train.")
_TRAIN = flags.DEFINE_bool("train", False, "Train the segmenter and trackers on the spot with "
                           "configs/synthetic_tiny.py (into WORKDIR/train; about an hour on 2 cores) "
                           "instead of using --checkpoint.")
_VIDEOS = flags.DEFINE_integer("videos", 20, "Held-out synthetic videos to evaluate on.")
_FRAMES = flags.DEFINE_integer("frames", 24, "Frames per held-out video.")
_SEED = flags.DEFINE_integer("seed", 20000, "Seed of the held-out split (training used other seeds).")
_REDUCED = flags.DEFINE_bool("reduced", False, "A quick run (3 videos of 12 frames) for smoke tests.")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "Disable the progress bars.")

# (row label, tracker-config overrides). The baselines run on the same frozen segmenter without the
# trackers (REFERENCE.md section 11, Table 3(a) rows 1 and 5).
METHODS = (
    ("O2VIS (IOM + OHM + T_E + T_A)", dict(mode="trackers")),
    ("IOM + OHM, no trackers", dict(mode="baseline", memory="iom", matching="ohm")),
    ("no memory + Hungarian", dict(mode="baseline", memory="none", matching="hungarian")),
)
METRICS = ("AP", "AP50", "AP75", "AR1", "AR10")


def method_config(config, overrides):
  config = config.copy_and_resolve_references()
  config.tracker.mode = overrides["mode"]
  if overrides["mode"] == "baseline":
    config.tracker.baseline.memory = overrides["memory"]
    config.tracker.baseline.matching = overrides["matching"]
  return config


def format_table(rows):
  """rows: [(label, metrics dict of fractions)] -> a table in percent, as papers print it."""
  width = max(len(label) for label, _ in rows)
  lines = [f"{'method'.ljust(width)}  " + "  ".join(f"{m:>6}" for m in METRICS)]
  lines.append("-" * len(lines[0]))
  for label, metrics in rows:
    lines.append(f"{label.ljust(width)}  " + "  ".join(f"{100 * metrics[m]:6.1f}" for m in METRICS))
  return "\n".join(lines)


def obtain_checkpoint(workdir: str, progress: bool) -> str:
  if not _TRAIN.value:
    if not os.path.isdir(_CHECKPOINT.value):
      raise FileNotFoundError(f"checkpoint {_CHECKPOINT.value!r} not found; pass --train to train one, or "
                              "--checkpoint DIR (scripts/convert_checkpoint.py or scripts/train.py export)")
    return _CHECKPOINT.value
  from configs import synthetic_tiny
  from o2vis_jax import tasks
  config = synthetic_tiny.get_config()
  print("step 2/5: training the segmenter, then the trackers (configs/synthetic_tiny.py)")
  return tasks.run_training(config, os.path.join(workdir, "train"), progress=progress)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  start = time.time()
  from o2vis_jax.datasets import synthetic
  from o2vis_jax import evaluation, inference, visualize
  from o2vis_jax.checkpoint_conversion import load_converted
  from o2vis_jax.evaluation import results as results_lib

  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  progress = not _NO_PROGRESS.value
  num_videos, num_frames = (3, 12) if _REDUCED.value else (_VIDEOS.value, _FRAMES.value)

  checkpoint = obtain_checkpoint(workdir, progress)
  config, params = load_converted(checkpoint)
  if "tracker" not in params:
    raise ValueError(f"{checkpoint} has no tracker weights; the demo needs segmenter + trackers")

  data_dir = os.path.join(workdir, "data")
  print(f"step 1/5: generating {num_videos} held-out synthetic videos of {num_frames} frames "
        f"(seed {_SEED.value}) in {data_dir}")
  gt_json = synthetic.generate(data_dir, "valid", num_videos, seed=_SEED.value,
                               size=config.data.synthetic_size, num_frames=num_frames,
                               radius_range=tuple(config.data.get("synthetic_radius_range",
                                                                  synthetic.RADIUS_RANGE)))
  frames_dir = os.path.join(data_dir, "valid", "JPEGImages")
  with open(gt_json) as f:
    dataset = json.load(f)
  print(f"step 2/5: model from {checkpoint}")

  rows, o2vis_predictor = [], None
  for index, (label, overrides) in enumerate(METHODS):
    print(f"step 3/5: inference [{index + 1}/{len(METHODS)}] {label}")
    predictor = inference.VideoPredictor.from_config(method_config(config, overrides), params)
    results = inference.predict_dataset(predictor, dataset, frames_dir, progress=progress)
    name = overrides["mode"] if overrides["mode"] == "trackers" else (
        f"baseline_{overrides['memory']}_{overrides['matching']}")
    results_path = os.path.join(workdir, f"results_{name}.json")
    results_lib.write_results(results_path, results)
    print(f"step 4/5: evaluating {results_path}")
    rows.append((label, evaluation.evaluate(gt_json, results)))
    if index == 0:
      o2vis_predictor = predictor

  table = format_table(rows)
  with open(os.path.join(workdir, "demo_metrics.json"), "w") as f:
    json.dump({label: {m: metrics[m] for m in evaluation.METRIC_NAMES} for label, metrics in rows}, f,
              indent=1)

  video, frame_source = next(inference.dataset_videos(dataset, frames_dir))
  prediction = o2vis_predictor.predict_video(frame_source)
  instances = prediction.instances(o2vis_predictor.max_num)
  names = {c["id"]: c["name"] for c in dataset["categories"]}
  category_ids = inference.category_ids_of(dataset)
  labels = [f"{names[category_ids[inst['label']]]} #{inst['identity']} {inst['score']:.2f}"
            for inst in instances]
  keep = [i for i, inst in enumerate(instances) if inst["score"] >= 0.3] or [0]
  overlay_path = os.path.join(workdir, "overlay.mp4" if visualize.ffmpeg_available() else "overlay.gif")
  written = visualize.write_overlay(iter(frame_source), [instances[i] for i in keep], overlay_path, fps=6,
                                    labels=[labels[i] for i in keep])
  print(f"step 5/5: overlay of video {video['id']} ({len(keep)} instances with score >= 0.3, one colour "
        f"per identity): {written}")
  print()
  print(f"YouTube-VIS metrics (x100) on {num_videos} held-out synthetic videos of {num_frames} frames:")
  print(table)
  print(f"\nwall time {time.time() - start:.0f} s; metrics in {workdir}/demo_metrics.json")


if __name__ == "__main__":
  app.run(main)
