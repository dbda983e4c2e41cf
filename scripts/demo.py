r"""O2VIS end to end on the built-in synthetic occlusion dataset, on a laptop CPU, with nothing downloaded.

  python scripts/demo.py                       # the shipped checkpoint (assets/synthetic_tiny)
  python scripts/demo.py --train               # train segmenter, trackers, refiner here first (configs/synthetic_tiny.py)
  python scripts/demo.py --methods o2vis,minvis   # other association methods (rows), by registry name
  python scripts/demo.py --methods o2vis,minvis,cavis,dvis_daq   # CAVIS / DVIS-DAQ from their own weights
      (assets/synthetic_tiny_<method>/, trained by configs/synthetic_tiny_<method>.py; --method_checkpoints)

Steps (each also available on its own, shown in brackets):
  1. generate a held-out synthetic split (objects enter late, leave and re-enter, hide behind occluders)
     [python -m data.synthetic --out DIR --split valid --videos 20 --seed 20000 --size 128 --frames 24
      --radius_range 0.12 0.2 --appearance class]   (size, radius range and appearance: the checkpoint
      config's data.synthetic_*)
  2. obtain a segmenter and trackers (and the refiner): the shipped checkpoint, or --train
     [python scripts/train.py --config configs/synthetic_tiny.py --workdir DIR, then
      python scripts/train.py --config configs/synthetic_tiny.py:refiner --workdir DIR/refiner
      --config.init_checkpoint=DIR/export]
  3. video inference with each association method of --methods (default: the full O2VIS and two Table 3(a)
     training-free baselines on the same segmenter), results in WORKDIR/results_<method>.json
     [python scripts/infer.py --checkpoint CKPT --method NAME --dataset_json DIR/valid.json
      --frames_dir DIR/valid/JPEGImages]; when the checkpoint holds refiner weights, one more row, the
     offline refiner after the checkpoint's method (WORKDIR/results_o2vis_offline.json) [... --offline]
  4. YouTube-VIS evaluation and TrackEval's identity metrics
     [python scripts/evaluate.py --gt DIR/valid.json --results RESULTS.json --tracking_metrics]
  5. a table of AP / AP50 / AP75 / AR1 / AR10 / HOTA / AssA / IDF1 per method (x100; WORKDIR/demo_metrics.json
     holds them as fractions, keyed by method name), and an overlay video of one clip (first method) with
     one colour per identity, enlarged for display.
Everything is written under --workdir. Library logging (orbax, TFDS) is quiet unless `-v 0` (or higher) is
given.
"""

import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from o2vis_jax import association, cli  # noqa: E402  (association: the names --methods takes)

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CHECKPOINT = os.path.join(_REPO, "assets", "synthetic_tiny")

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/o2vis_demo", "Where the data, results, metrics and the "
                               "overlay are written.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", DEFAULT_CHECKPOINT, "A converted checkpoint directory "
                                  "(segmenter, plus the tracker weights a trainable method of --methods "
                                  "needs) to evaluate; ignored with --train.")
_TRAIN = flags.DEFINE_bool("train", False, "Train what the shipped checkpoint is on the spot instead of "
                           "using --checkpoint: the segmenter and trackers with configs/synthetic_tiny.py "
                           "(into WORKDIR/train; about an hour on 2 cores), then the offline refiner with "
                           "its 'refiner' variant on them (WORKDIR/train/refiner; about 16 minutes).")
_VIDEOS = flags.DEFINE_integer("videos", 20, "Held-out synthetic videos to evaluate on.", lower_bound=1)
_FRAMES = flags.DEFINE_integer("frames", 24, "Frames per held-out video.", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 20000, "Seed of the held-out split (training used other seeds).")
# name: (row label, overrides of the method's config section). The training-free rows run on the same
# frozen segmenter without the trackers (REFERENCE.md section 11): training_free pinned to Table 3(a)
# row 5, minvis is row 1. A registered method without an entry is labelled by its name.
ROWS = {
    "o2vis": ("O2VIS (IOM + OHM + T_E + T_A)", {}),
    "o2vis_te_only": ("T_E only (IOM + OHM + T_E)", {}),
    "training_free": ("IOM + OHM, no trackers", dict(memory="iom", matching="ohm")),
    "minvis": ("no memory + Hungarian", {}),
    "dvis_daq": ("DVIS-DAQ (dynamic anchor queries)", {}),
    "cavis": ("CAVIS (context-aware ReID + CAIT)", {}),
}
DEFAULT_METHODS = ("o2vis", "training_free", "minvis")
# The offline row (the temporal refiner after the checkpoint's online method, scripts/infer.py --offline):
# its name (results_<name>.json) and label; run when the checkpoint has refiner weights.
OFFLINE_ROW = ("o2vis_offline", "O2VIS* (offline)")
_METHODS = flags.DEFINE_list(
    "methods", list(DEFAULT_METHODS),
    f"Association methods to run and compare, comma-separated, one table row each, in this order; any of "
    f"{', '.join(association.names())} (see scripts/infer.py --help). Default: o2vis (the full O2VIS), "
    "training_free (IOM + OHM without trackers, Table 3(a) row 5) and minvis (no memory + Hungarian, "
    "row 1). A trainable method other than the checkpoint's runs from its own checkpoint "
    "(--method_checkpoints).")
_METHOD_CHECKPOINTS = flags.DEFINE_list(
    "method_checkpoints", [],
    "NAME=DIR,...: the converted checkpoint of trainable method NAME of --methods, used when --checkpoint "
    "holds no trained NAME (e.g. cavis, dvis_daq next to the shipped O2VIS). Default for NAME: "
    "assets/synthetic_tiny_NAME (the export of configs/synthetic_tiny_NAME.py). Its row runs its own "
    "segmenter and weights on the held-out videos of --checkpoint's data settings.")
_REDUCED = flags.DEFINE_bool("reduced", False, "A quick run (3 videos of 12 frames) for smoke tests.")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "Disable the progress bars.")

# The demo's columns (demo_metrics.json: fractions; the table: x100): AP / AR of the YouTube-VIS protocol and
# TrackEval's identity metrics (o2vis_jax/evaluation/tracking.py), which AP hides.
METRICS = ("AP", "AP50", "AP75", "AR1", "AR10", "HOTA", "AssA", "IDF1")
# The overlay is enlarged to about this many pixels a side (nearest pixel), so that labels fit.
OVERLAY_DISPLAY_SIZE = 512


@flags.validator("methods", message=f"--methods takes distinct names among {association.names()}")
def _known_methods(names):
  return bool(names) and len(set(names)) == len(names) and set(names) <= set(association.names())


def row_label(name: str) -> str:
  return ROWS.get(name, (name, {}))[0]


def method_config(config, name: str):
  """A copy of `config` running method `name` with the demo's overrides of its section."""
  config = association.with_method(config, name)
  association.base.section_of(config, association.get(name).section_name).update(ROWS.get(name, (name, {}))[1])
  return config


def check_weights(source: str, config, has_tracker: bool, names, params=None) -> None:
  """A trainable method runs only on its own trained weights: those of `config`'s method, if `source`
  (a checkpoint, or the config --train trains) has tracker weights at all, and not only the segmenter
  stage's (`params`, the checkpoint's: e.g. a CAVIS_segmenter file's ReID head)."""
  from o2vis_jax.checkpoint_conversion import io as checkpoint_io
  trained_for = association.method_of(config)
  segmenter_stage = params is not None and checkpoint_io.segmenter_stage_only(config, params)
  for name in names:
    method = association.get(name)
    if method.trainable and method is trained_for and segmenter_stage:
      raise cli.InputError(f"--methods {name}: {checkpoint_io.segmenter_stage_message(config, source)}")
    if method.trainable and (method is not trained_for or not has_tracker):
      held = f"the tracker weights of {trained_for.name!r}" if has_tracker else "no tracker weights"
      training_free = [n for n in association.names() if not association.get(n).trainable]
      raise cli.InputError(f"--methods {name}: {source} gives {held}; give the --checkpoint of a trained "
                           f"{name!r} model, or drop it from --methods (training-free: {training_free})")


def default_method_checkpoint(name: str) -> str:
  return os.path.join(_REPO, "assets", f"synthetic_tiny_{name}")


def parse_method_checkpoints(entries) -> dict:
  """--method_checkpoints' NAME=DIR entries -> {name: dir}; one line naming a bad entry."""
  parsed = {}
  for entry in entries:
    name, sep, directory = entry.partition("=")
    if not sep or not name or not directory:
      raise cli.InputError(f"--method_checkpoints: {entry!r} is not NAME=DIR")
    if name not in association.names() or not association.get(name).trainable:
      trainable = [n for n in association.names() if association.get(n).trainable]
      raise cli.InputError(f"--method_checkpoints: {name!r} is not a trainable method ({trainable})")
    if name in parsed:
      raise cli.InputError(f"--method_checkpoints: {name!r} given twice")
    parsed[name] = directory
  return parsed


def method_checkpoint_dirs(config, has_tracker: bool, names, overrides) -> dict:
  """{name: directory} for each trainable method of `names` that the checkpoint of `config` (with or without
  tracker weights) does not run: --method_checkpoints' directory, else `default_method_checkpoint`."""
  trained_for = association.method_of(config)
  return {name: overrides.get(name, default_method_checkpoint(name)) for name in names
          if association.get(name).trainable and (association.get(name) is not trained_for or not has_tracker)}


# The data settings a method checkpoint must share with --checkpoint: the rows run on the same held-out videos.
SHARED_DATA_FIELDS = ("synthetic_size", "synthetic_radius_range", "synthetic_appearance")


def load_method_checkpoints(source: str, config, params, directories: dict) -> dict:
  """{name: (directory, config, params)} of each method's own checkpoint (`method_checkpoint_dirs`), checked
  before any data is generated: it exists, holds `name`'s trained weights, was trained for the data of
  `source` (config/params: --checkpoint's; params None with --train), and a note when its segmenter is not
  `source`'s (its row is then not on the same segmenter as the others)."""
  import jax
  import numpy as np
  from o2vis_jax.checkpoint_conversion import load_converted
  loaded = {}
  for name, directory in directories.items():
    if not os.path.isfile(os.path.join(directory, "config.json")):
      raise cli.InputError(
          f"--methods {name}: {source} holds no trained {name!r} weights, and {directory} (its own "
          f"checkpoint; --method_checkpoints {name}=DIR) is not a checkpoint directory: train one "
          f"(python scripts/train.py --config configs/synthetic_tiny_{name}.py --workdir W, then W/export) "
          f"or drop {name!r} from --methods")
    method_config_, method_params = load_converted(directory)
    check_weights(directory, method_config_, "tracker" in method_params, [name], method_params)
    for field in SHARED_DATA_FIELDS:
      mine, theirs = method_config_.data.get(field), config.data.get(field)
      if mine is not None and theirs is not None and list(np.ravel(mine)) != list(np.ravel(theirs)):
        raise cli.InputError(f"--methods {name}: {directory} was trained for data.{field}={mine!r}, "
                             f"{source} for {theirs!r}: retrain it on {source}'s segmenter "
                             f"(configs/synthetic_tiny_{name}.py)")
    if params is not None:
      same = jax.tree.structure(params["segmenter"]) == jax.tree.structure(method_params["segmenter"]) and all(
          np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params["segmenter"]),
                                               jax.tree.leaves(method_params["segmenter"])))
      if not same:
        print(f"note: row {name!r} runs the segmenter of {directory}, not that of {source}")
    loaded[name] = (directory, method_config_, method_params)
  return loaded


def offline_predictor(inference, config, params):
  """The offline row's predictor, or None (with a one-line note) when the checkpoint cannot run it."""
  if "refiner" not in params:
    print(f"note: row {OFFLINE_ROW[1]!r} skipped: no refiner weights in the checkpoint")
    return None
  try:
    return inference.VideoPredictor.from_config(config, params, offline=True)
  except inference.OfflineInferenceError as e:
    reason = "no refiner weights in the checkpoint" if "refiner" not in params else str(e)
    print(f"note: row {OFFLINE_ROW[1]!r} skipped: {reason}")
    return None


def format_table(rows):
  """rows: [(name, label, metrics dict of fractions)] -> a table in percent, as papers print it."""
  width = max(len(label) for _, label, _ in rows)
  lines = [f"{'method'.ljust(width)}  " + "  ".join(f"{m:>6}" for m in METRICS)]
  lines.append("-" * len(lines[0]))
  for _, label, metrics in rows:
    lines.append(f"{label.ljust(width)}  " + "  ".join(f"{100 * metrics[m]:6.1f}" for m in METRICS))
  return "\n".join(lines)


def obtain_checkpoint(workdir: str, progress: bool) -> str:
  if not _TRAIN.value:
    if not os.path.isdir(_CHECKPOINT.value):
      raise FileNotFoundError(f"checkpoint {_CHECKPOINT.value!r} not found; pass --train to train one, or "
                              "--checkpoint DIR (scripts/convert_checkpoint.py or scripts/train.py export)")
    return _CHECKPOINT.value
  from configs import synthetic_tiny
  from o2vis_jax import tasks, train
  return train_demo_model(synthetic_tiny, train, tasks, os.path.join(workdir, "train"), progress)


def train_demo_model(synthetic_tiny, train, tasks, train_dir: str, progress: bool) -> str:
  """What the shipped checkpoint is, trained here: `configs/synthetic_tiny.py` (segmenter, then trackers)
  in TRAIN_DIR, then its 'refiner' variant on that online model (TRAIN_DIR/refiner, on the same generated
  data); returns the refiner's export (segmenter + tracker + refiner: every row of the demo)."""
  config = synthetic_tiny.get_config()
  print("step 2/5: training the segmenter, then the trackers (configs/synthetic_tiny.py)")
  online = train.run_training(config, train_dir, progress=progress)
  print("step 2/5: training the offline refiner on them (configs/synthetic_tiny.py:refiner)")
  refiner_config = synthetic_tiny.refiner_config(online)
  refiner_config.data.data_dir = tasks.resolve_data_dir(config, train_dir)   # generated by the run above
  return train.run_training(refiner_config, os.path.join(train_dir, "refiner"), progress=progress)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  start = time.time()
  if not flags.FLAGS["verbosity"].present:   # -v N shows the libraries' INFO logs again.
    logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", category=DeprecationWarning)   # pycocotools on numpy 2, per mask
  from o2vis_jax.datasets import synthetic
  from o2vis_jax import evaluation, inference, visualize
  from o2vis_jax.checkpoint_conversion import load_converted
  from o2vis_jax.evaluation import results as results_lib

  workdir = cli.check_output_dir(_WORKDIR.value, "workdir")
  progress = not _NO_PROGRESS.value
  method_checkpoints = parse_method_checkpoints(_METHOD_CHECKPOINTS.value)
  num_videos, num_frames = (3, 12) if _REDUCED.value else (_VIDEOS.value, _FRAMES.value)

  if _TRAIN.value:   # before the hour of training
    from configs import synthetic_tiny
    from o2vis_jax import config_validation
    train_config = config_validation.validate(synthetic_tiny.get_config(), training=True)
    config_validation.validate(synthetic_tiny.get_config("refiner"), training=True)
    train_dirs = method_checkpoint_dirs(train_config, True, _METHODS.value, method_checkpoints)
    check_weights("--train (configs/synthetic_tiny.py)", train_config, True,
                  [n for n in _METHODS.value if n not in train_dirs])
    load_method_checkpoints("--train (configs/synthetic_tiny.py)", train_config, None, train_dirs)
  checkpoint = obtain_checkpoint(workdir, progress)
  config, params = load_converted(checkpoint)   # the checkpoint reader: one line naming a bad file
  own_dirs = method_checkpoint_dirs(config, "tracker" in params, _METHODS.value, method_checkpoints)
  check_weights(checkpoint, config, "tracker" in params, [n for n in _METHODS.value if n not in own_dirs],
                params)
  own_weights = load_method_checkpoints(checkpoint, config, params, own_dirs)

  data_dir = os.path.join(workdir, "data")
  print(f"step 1/5: generating {num_videos} held-out synthetic videos of {num_frames} frames "
        f"(seed {_SEED.value}) in {data_dir}")
  gt_json = synthetic.generate(data_dir, "valid", num_videos, seed=_SEED.value,
                               size=config.data.synthetic_size, num_frames=num_frames,
                               radius_range=tuple(config.data.get("synthetic_radius_range",
                                                                  synthetic.RADIUS_RANGE)),
                               appearance=config.data.get("synthetic_appearance", synthetic.APPEARANCES[0]))
  frames_dir = os.path.join(data_dir, "valid", "JPEGImages")
  with open(gt_json) as f:
    dataset = json.load(f)
  print(f"step 2/5: model from {checkpoint}")

  rows, first_predictor = [], None

  def run_row(name, label, predictor, step):
    print(f"step 3/5: inference [{step}] {label} ({name})")
    results = inference.predict_dataset(predictor, dataset, frames_dir, progress=progress)
    results_path = os.path.join(workdir, f"results_{name}.json")
    results_lib.write_results(results_path, results)
    print(f"step 4/5: evaluating {results_path}")
    metrics = evaluation.evaluate(gt_json, results)
    metrics.update(evaluation.tracking_metrics(gt_json, results))
    rows.append((name, label, metrics))

  for index, name in enumerate(_METHODS.value):
    row_config, row_params = own_weights[name][1:] if name in own_weights else (config, params)
    predictor = inference.VideoPredictor.from_config(method_config(row_config, name), row_params)
    run_row(name, row_label(name), predictor, f"{index + 1}/{len(_METHODS.value)}")
    if index == 0:
      first_predictor = predictor
  offline = offline_predictor(inference, config, params)
  if offline is not None:
    run_row(*OFFLINE_ROW, offline, "offline")

  table = format_table(rows)
  with open(os.path.join(workdir, "demo_metrics.json"), "w") as f:
    json.dump({name: {m: metrics[m] for m in METRICS} for name, _, metrics in rows}, f, indent=1)

  video, frame_source = next(inference.dataset_videos(dataset, frames_dir))
  prediction = first_predictor.predict_video(frame_source)
  instances = prediction.instances(first_predictor.max_num)
  names = {c["id"]: c["name"] for c in dataset["categories"]}
  category_ids = inference.category_ids_of(dataset)
  labels = [f"{names[category_ids[inst['label']]]} #{inst['identity']} {inst['score']:.2f}"
            for inst in instances]
  keep = [i for i, inst in enumerate(instances) if inst["score"] >= 0.3] or [0]
  overlay_path = os.path.join(workdir, "overlay.mp4" if visualize.ffmpeg_available() else "overlay.gif")
  scale = max(1, round(OVERLAY_DISPLAY_SIZE / max(video["height"], video["width"])))
  written = visualize.write_overlay(iter(frame_source), [instances[i] for i in keep], overlay_path, fps=6,
                                    labels=[labels[i] for i in keep], scale=scale)
  print(f"step 5/5: overlay of video {video['id']} by {row_label(_METHODS.value[0])} ({len(keep)} "
        f"instances with score >= 0.3, one colour per identity): {written}")
  print()
  print(f"YouTube-VIS AP / AR and TrackEval HOTA / AssA / IDF1 (tracks with score >= "
        f"{evaluation.DEFAULT_SCORE_THRESHOLD}), x100, on {num_videos} held-out synthetic videos of "
        f"{num_frames} frames:")
  print(table)
  print(f"\nwall time {time.time() - start:.0f} s; metrics in {workdir}/demo_metrics.json")


if __name__ == "__main__":
  cli.run(main)
