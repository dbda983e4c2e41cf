r"""Runs O2VIS on your own video or on a YouTube-VIS / OVIS split and writes the results file.

  # a video file (decoded by imageio-ffmpeg's ffmpeg) or a directory of frames, any length:
  python scripts/infer.py --checkpoint /ckpt/converted --input clip.mp4 \
      --output results.json --overlay overlay.mp4 --png_masks masks/

  # a dataset split (YouTube-VIS JSON + its JPEGImages folder), zipped for the evaluation server:
  python scripts/infer.py --checkpoint /ckpt/converted --dataset_json valid.json \
      --frames_dir valid/JPEGImages --output results.json --zip
  # ... interrupted (Ctrl-C) or stopped at an unreadable video: the same command plus --resume
  # runs only the videos not finished yet (plus --skip_unreadable to leave unreadable ones out)

  # smoke test without a checkpoint: a config and random weights
  python scripts/infer.py --config configs/tiny.py --input frames/ --output /tmp/r.json

  # a training-free association (Table 3(a) rows 1-5) on a segmenter-only checkpoint
  python scripts/infer.py --checkpoint /ckpt/segmenter --method minvis --input clip.mp4

  # offline (LOMM / DVIS++ offline): O2VIS online, then the temporal refiner over the whole video;
  # a checkpoint with refiner weights (a converted offline model or a refiner training run's export)
  python scripts/infer.py --checkpoint /ckpt/offline --offline --input clip.mp4

Every output path and input is checked before the model is loaded: an output that is a directory
(or a directory that is a file), an unwritable folder, a missing frame file, a truncated or corrupt
video (one line naming the file and the frame where decoding stops; --allow_partial uses the frames
that decode) stop the run at once, exit status 2.

Frames stream through the model in fixed-size chunks (--chunk_size): one compilation per frame
size, device memory independent of the video length. Results are YouTube-VIS results dicts
(video_id, category_id, score, per-frame RLE). With --input, --output is written as soon as the
video is done, before the masks and the overlay. With --dataset_json, each video's results are
appended to <output>.partial.jsonl as it finishes, so an interruption or an unreadable video keeps
the finished ones (--resume); --output is written from all of them at the end, and the .partial.jsonl
removed. --overlay draws the top-k instances with one stable colour per identity (tracker slot).

--offline runs the same chunks (segmenter + online association method), keeping per frame only the
slots' queries and the segmenter's queries (device memory still independent of the video length) and
the mask features on the host (host memory grows with the video: about h x w x C values per frame at 1/4
resolution), then the temporal refiner once over the whole video, then its masks chunk by chunk. Scores
are LOMM's: per (slot, class) the larger of the refiner's and the online method's probability. It needs
refiner weights (params['refiner'], or random ones with --config) and a method that outputs per-frame
queries (o2vis); --resume continues only a run with the same --offline.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from o2vis_jax import association  # noqa: E402  (the registry: the choices of --method)
from o2vis_jax import cli  # noqa: E402

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Directory of a converted checkpoint (scripts/convert_checkpoint.py or a "
    "training run's export): its config and parameters are used.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Instead of --checkpoint: a config file (configs/*.py) whose model is "
    "initialised with random weights (--seed); for smoke tests. Fields can be overridden with "
    "--config.FIELD=VALUE.", lock_config=False)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed of the weights with --config.")
_INPUT = flags.DEFINE_string("input", None, "A video file (mp4, avi, gif, ...) or a directory of "
                             "frame images (sorted by file name).")
_DATASET_JSON = flags.DEFINE_string("dataset_json", None, "Instead of --input: a YouTube-VIS / OVIS "
                                    "JSON (videos with file_names); every video is run.")
_FRAMES_DIR = flags.DEFINE_string("frames_dir", None, "With --dataset_json: the folder the JSON's "
                                  "file_names are relative to (e.g. valid/JPEGImages).")
_OUTPUT = flags.DEFINE_string("output", "results.json", "Path of the YouTube-VIS results JSON.")
_ZIP = flags.DEFINE_bool("zip", False, "Also write <output without .json>.zip with results.json at "
                         "its root (what the evaluation servers take).")
_PNG_MASKS = flags.DEFINE_string("png_masks", None, "Directory for per-frame indexed PNG masks "
                                 "(0 background, i + 1 = i-th result of the video); one "
                                 "sub-directory per video.")
_OVERLAY = flags.DEFINE_string("overlay", None, "Overlay of the results on the frames: a .mp4 (needs "
                               "imageio-ffmpeg, else PNG frames), .gif or a directory of PNGs. With "
                               "--dataset_json a directory receiving <video>.mp4 (or .gif "
                               "without imageio-ffmpeg) per video.")
_OVERLAY_ALL_SLOTS = flags.DEFINE_bool("overlay_all_slots", False, "Draw every tracker slot with "
                                       "its best class instead of the top-k results.")
_ALLOW_PARTIAL = flags.DEFINE_bool(
    "allow_partial", False, "With --input: a truncated or corrupt video file (fewer frames decode "
    "than its container announces, or a decoding error) is run on the frames that decode, and says "
    "so in one line, instead of stopping with exit status 2.")
_RESUME = flags.DEFINE_bool(
    "resume", False, "With --dataset_json: continue a run that was interrupted or stopped at an "
    "unreadable video. Its finished videos, kept in <output>.partial.jsonl, are not run again (their "
    "number is printed); the other flags must be the same. Without --resume an existing "
    "<output>.partial.jsonl stops the run.")
_SKIP_UNREADABLE = flags.DEFINE_bool(
    "skip_unreadable", False, "With --dataset_json: leave out a video whose frames cannot be read "
    "(a missing or corrupt frame file), listing it at the end, instead of stopping at it (exit "
    "status 2, the finished videos kept for --resume).")


def _method_help() -> str:
  described = []
  for name in association.names():
    method = association.get(name)
    summary = method.description or (type(method).__doc__ or "").strip().split("\n")[0]
    needs = "its own tracker weights" if method.trainable else "a segmenter only"
    described.append(f"'{name}' ({summary}; needs {needs}; reads config.{method.section_name})")
  return ("Association method to run (default: the checkpoint's or config's config.association.method): "
          + "; ".join(described) + ".")


_METHOD = flags.DEFINE_enum("method", None, association.names(), _method_help())
# The flag before the association seam, kept so that old command lines still run (with a warning).
_LEGACY_MODES = {"trackers": "o2vis", "te_only": "o2vis_te_only", "baseline": "training_free"}
_TRACKER_MODE = flags.DEFINE_enum(
    "tracker_mode", None, sorted(_LEGACY_MODES), "Deprecated: use --method "
    "(trackers = o2vis, te_only = o2vis_te_only, baseline = training_free).")
_OFFLINE = flags.DEFINE_bool(
    "offline", False, "Offline inference (LOMM / DVIS++ offline): after the online association method, "
    "the temporal refiner re-reads every slot over the whole video; its masks, and per (slot, class) "
    "the larger of its and the online probability as score. Needs a checkpoint with refiner weights "
    "(params['refiner']; with --config: random ones) and a method that outputs per-frame queries "
    "(o2vis). Mask features are kept in host memory (about h x w x C per frame at 1/4 resolution).")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", None, "Frames per chunk (default: "
                                   "config.inference.chunk_size).")
_MAX_NUM = flags.DEFINE_integer("max_num", None, "Results per video, top-k over slot x class "
                                "(default: config.inference.max_num, 10 YouTube-VIS, 20 OVIS; "
                                "the training-free methods keep their section's top_k, e.g. "
                                "config.training_free.top_k).")
_FPS = flags.DEFINE_float("fps", None, "Frame rate of the overlay (default: the input's, else 10).")
_MAX_VIDEOS = flags.DEFINE_integer("max_videos", None, "With --dataset_json: only the first N videos.")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "Disable the progress bars.")


def _check_flags(dataset_mode: bool) -> None:
  """Flags that cannot run together: usage errors (one line and "see --help")."""
  if bool(_INPUT.value) == bool(_DATASET_JSON.value):
    raise app.UsageError("give exactly one of --input and --dataset_json")
  if bool(_CHECKPOINT.value) == bool(_CONFIG.value):
    raise app.UsageError("give exactly one of --checkpoint DIR and --config FILE")
  if dataset_mode and not _FRAMES_DIR.value:
    raise app.UsageError("--dataset_json needs --frames_dir")
  if dataset_mode:
    wrong_mode = dict(allow_partial=_ALLOW_PARTIAL)
  else:
    wrong_mode = dict(resume=_RESUME, skip_unreadable=_SKIP_UNREADABLE, max_videos=_MAX_VIDEOS,
                      frames_dir=_FRAMES_DIR)
  for name, flag in wrong_mode.items():
    if flag.value:
      raise app.UsageError(f"--{name} applies to --{'input' if dataset_mode else 'dataset_json'} only")
  if _TRACKER_MODE.value and _METHOD.value:
    raise app.UsageError("give --method only (--tracker_mode is its deprecated form)")


def _partial_path(output: str) -> str:
  return output + ".partial.jsonl"


def _check_outputs(dataset_mode: bool) -> dict:
  """Every output path, checked before anything runs: {'output', 'zip', 'partial'} resolved."""
  from o2vis_jax import visualize
  output = cli.check_output_file(_OUTPUT.value, "output")
  paths = dict(output=output, zip=None, partial=None)
  if _ZIP.value:
    paths["zip"] = cli.check_output_file(os.path.splitext(output)[0] + ".zip", "zip")
    if paths["zip"] == output:
      raise cli.InputError(f"--zip would overwrite --output {output!r}: give --output a .json path")
  if _PNG_MASKS.value:
    cli.check_output_dir(_PNG_MASKS.value, "png_masks", create=False)
  if _OVERLAY.value:
    if dataset_mode:   # one overlay per video in it
      cli.check_output_dir(_OVERLAY.value, "overlay", create=False)
    else:
      try:
        kind, target = visualize.overlay_target(_OVERLAY.value)
      except ValueError as e:
        raise cli.InputError(f"--overlay: {e}") from e
      if kind == "png":
        cli.check_output_dir(target, "overlay", create=False)
      else:
        cli.check_output_file(target, "overlay")
  if dataset_mode:
    paths["partial"] = cli.check_output_file(_partial_path(output), "output")
    if os.path.exists(paths["partial"]) and not _RESUME.value:
      raise cli.InputError(f"{paths['partial']!r} holds the finished videos of an earlier run that "
                           "did not complete: rerun with --resume to continue it, or delete the file "
                           "to start over")
  return paths


def _open_video():
  """The --input frame source; a truncated video stops here unless --allow_partial."""
  from o2vis_jax import video_io
  try:
    source = video_io.open_video(_INPUT.value, allow_partial=_ALLOW_PARTIAL.value)
  except video_io.IncompleteVideoError as e:
    raise cli.InputError(f"{e}; pass --allow_partial to run on the {e.frames_read} frames that "
                         "decode") from e
  if getattr(source, "incomplete", None):
    print(f"warning: video file {source.path!r} is truncated or corrupt: {source.incomplete}; "
          f"running on the {len(source)} frames that decode (--allow_partial)", file=sys.stderr)
  return source


def _read_dataset() -> dict:
  """The --dataset_json split, checked: its structure, and that every frame file it lists exists."""
  import json
  path = _DATASET_JSON.value
  if not os.path.isdir(_FRAMES_DIR.value):
    raise cli.InputError(f"--frames_dir {_FRAMES_DIR.value!r} is not a directory")
  try:
    with open(path) as f:
      dataset = json.load(f)
  except (OSError, ValueError) as e:
    raise cli.InputError(f"cannot read --dataset_json {path!r}: {e}") from e
  if (not isinstance(dataset, dict) or not isinstance(dataset.get("videos"), list)
      or "categories" not in dataset):
    raise cli.InputError(f"--dataset_json {path!r} is not a YouTube-VIS JSON (needs 'videos' and "
                         "'categories')")
  if _MAX_VIDEOS.value:
    dataset = dict(dataset, videos=dataset["videos"][:_MAX_VIDEOS.value])
  seen = set()
  for index, video in enumerate(dataset["videos"]):
    if (not isinstance(video, dict) or "id" not in video
        or not isinstance(video.get("file_names"), list) or not video["file_names"]):
      raise cli.InputError(f"--dataset_json {path!r}: videos[{index}] needs an 'id' and a non-empty "
                           "'file_names' list")
    if video["id"] in seen:
      raise cli.InputError(f"--dataset_json {path!r}: videos[{index}] repeats video id {video['id']!r}")
    seen.add(video["id"])
  if not _SKIP_UNREADABLE.value:   # fail now, not after hours of the videos before it
    from o2vis_jax import inference
    missing = [(video, t, name) for video in dataset["videos"]
               for t, name in enumerate(video["file_names"])
               if not os.path.isfile(os.path.join(_FRAMES_DIR.value, name))]
    if missing:
      video, t, name = missing[0]
      more = f" ({len(missing) - 1} more frame files missing)" if len(missing) > 1 else ""
      raise cli.InputError(
          f"--dataset_json {path!r}: video {inference.dataset_video_name(video)}: frame {t} file "
          f"{os.path.join(_FRAMES_DIR.value, name)!r} does not exist{more}; pass --skip_unreadable "
          "to leave such videos out")
  return dataset


def _offline() -> dict:
  """The `offline` argument of `inference.init_params` / `VideoPredictor.from_config`, given only with
  --offline (the stand-in predictors of the command-line tests take the online arguments only)."""
  return dict(offline=True) if _OFFLINE.value else {}


def _load_model():
  from o2vis_jax import config_validation, inference
  if _CHECKPOINT.value:
    from o2vis_jax import checkpoint_conversion
    if not os.path.isdir(_CHECKPOINT.value):
      raise cli.InputError(f"--checkpoint {_CHECKPOINT.value!r} is not a directory")
    config, params = checkpoint_conversion.load_converted(_CHECKPOINT.value)
  else:
    config = _CONFIG.value
    params = None
  config_validation.validate(config)
  method_name = _METHOD.value
  if _TRACKER_MODE.value:
    method_name = _LEGACY_MODES[_TRACKER_MODE.value]
    logging.warning("--tracker_mode is deprecated: use --method %s", method_name)
  if method_name:
    trained_for = association.method_of(config)
    config = config_validation.validate(association.with_method(config, method_name))
    method = association.method_of(config)
    if params is not None and method.trainable and "tracker" in params and method is not trained_for:
      # A trainable method's weights are its own: another method's do not fit them.
      raise cli.InputError(f"--method {method.name}: checkpoint {_CHECKPOINT.value!r} holds the tracker "
                           f"weights of {trained_for.name!r}; give a checkpoint of {method.name!r} or "
                           "a training-free method")
  if params is not None and association.method_of(config).trainable:
    from o2vis_jax.checkpoint_conversion import io as checkpoint_io
    if checkpoint_io.segmenter_stage_only(config, params):   # e.g. a converted CAVIS_segmenter file
      raise cli.InputError(checkpoint_io.segmenter_stage_message(config, _CHECKPOINT.value))
  if params is None:
    logging.warning("random weights (--config without --checkpoint): outputs are meaningless")
    params = inference.init_params(config, seed=_SEED.value, **_offline())   # --offline: a refiner too
  return config, params


def _write_results(paths: dict, results: list) -> None:
  from o2vis_jax.evaluation import results as results_lib
  cli.write_atomically(paths["output"], lambda p: results_lib.write_results(p, results))
  if paths["zip"]:
    cli.write_atomically(paths["zip"], lambda p: results_lib.write_results_zip(p, results))


class _Extras:
  """The per-video PNG masks and overlay, each with its own progress bar (a 3,000-frame video takes
  minutes)."""

  def __init__(self, category_ids, class_names, dataset_mode: bool):
    self.category_ids, self.class_names = category_ids, class_names
    self.dataset_mode = dataset_mode
    self.show = not _NO_PROGRESS.value

  def _bar(self, what: str, total: int):
    from tqdm import tqdm
    return tqdm(total=total, desc=what, unit="frame", disable=not self.show,
                leave=not self.dataset_mode)

  def write(self, name: str, source, prediction, top) -> None:
    from o2vis_jax import visualize
    num_frames = prediction.num_frames
    if _PNG_MASKS.value:
      directory = os.path.join(_PNG_MASKS.value, name) if self.dataset_mode else _PNG_MASKS.value
      with self._bar(f"png masks {name}", num_frames) as bar:
        visualize.write_png_masks(directory, source.frame_names[:num_frames], top, source.height,
                                  source.width, progress=bar.update)
    if _OVERLAY.value:
      drawn = prediction.slot_instances() if _OVERLAY_ALL_SLOTS.value else top
      labels = []
      for inst in drawn:
        category = self.category_ids[inst["label"]] if self.category_ids else inst["label"] + 1
        labels.append(f"{self.class_names.get(category, category)} #{inst['identity']} "
                      f"{inst['score']:.2f}")
      path = _OVERLAY.value
      if self.dataset_mode:   # one file per video; GIF where mp4 cannot be written
        suffix = ".mp4" if visualize.ffmpeg_available() else ".gif"
        path = os.path.join(path, name.replace(os.sep, "_") + suffix)
      fps = _FPS.value or getattr(source, "fps", None) or 10.0
      with self._bar(f"overlay {name}", num_frames) as bar:
        written = visualize.write_overlay(iter(source), drawn, path, fps=fps, labels=labels,
                                          progress=bar.update)
      logging.info("overlay of %s written to %s", name, written)


def _run_video(paths: dict, source, predictor, max_num: int) -> None:
  from tqdm import tqdm
  from o2vis_jax import inference
  with tqdm(total=len(source), desc=f"video {source.name}", unit="frame",
            disable=_NO_PROGRESS.value) as bar:
    prediction = predictor.predict_video(source, progress=bar.update)
  top = prediction.instances(max_num)
  results = inference.to_results(top, 1)
  _write_results(paths, results)   # before the masks and the overlay: minutes of work kept
  print(f"{len(results)} results for 1 video ({prediction.num_frames} frames) written to "
        f"{paths['output']}")
  if paths["zip"]:
    print(f"server archive written to {paths['zip']}")
  _Extras(None, {}, dataset_mode=False).write(source.name, source, prediction, top)


def _run_dataset(paths: dict, dataset: dict, config, predictor, max_num: int) -> None:
  import hashlib
  from o2vis_jax import inference
  categories = sorted(dataset["categories"], key=lambda c: c["id"])
  extras = _Extras([c["id"] for c in categories],
                   {c["id"]: c.get("name", str(c["id"])) for c in categories}, dataset_mode=True)
  # What must not change between a run and its --resume (chunk size and --max_videos may).
  settings = dict(dataset_json=os.path.abspath(_DATASET_JSON.value),
                  frames_dir=os.path.abspath(_FRAMES_DIR.value),
                  checkpoint=os.path.abspath(_CHECKPOINT.value) if _CHECKPOINT.value else None,
                  seed=None if _CHECKPOINT.value else _SEED.value, max_num=max_num,
                  offline=_OFFLINE.value,
                  config_sha256=hashlib.sha256(
                      config.to_json_best_effort(sort_keys=True).encode()).hexdigest())
  if _RESUME.value and not os.path.exists(paths["partial"]):
    print(f"--resume: no {paths['partial']}, starting from the first video")
  finished = inference.FinishedVideos(paths["partial"], settings, resume=_RESUME.value)
  total = len(dataset["videos"])

  def done():   # of this run's videos (a --max_videos other than the first run's may differ)
    return sum(video["id"] in finished for video in dataset["videos"])
  resumed = done()
  if finished.resumed:
    print(f"--resume: {resumed} of {total} videos finished in {paths['partial']}, not run again"
          + (" (a cut last line dropped: that video runs again)" if finished.dropped_line else ""))

  def on_video(video, source, prediction, top):
    name = os.path.dirname(video["file_names"][0]) or str(video["id"])
    extras.write(name, source, prediction, top)

  from o2vis_jax import video_io
  try:
    results = inference.predict_dataset(predictor, dataset, _FRAMES_DIR.value, max_num=max_num,
                                        progress=not _NO_PROGRESS.value, finished=finished,
                                        skip_unreadable=_SKIP_UNREADABLE.value, on_video=on_video)
  except video_io.VideoReadError as e:
    raise cli.InputError(
        f"{e}; the {done()} finished videos are kept in {paths['partial']}: fix or remove the "
        "video, then rerun with --resume (add --skip_unreadable to leave such videos out)") from e
  except KeyboardInterrupt as e:   # cli.run prints its message (exit 130)
    raise KeyboardInterrupt(f"interrupted: the {done()} finished videos are kept in "
                            f"{paths['partial']}: rerun with --resume to continue") from e
  _write_results(paths, results)
  finished.remove()
  print(f"{len(results)} results for {done()} of {total} video(s) written to {paths['output']}"
        + (f" ({resumed} from the earlier run)" if resumed else ""))
  if paths["zip"]:
    print(f"server archive written to {paths['zip']}")
  if results.skipped:
    print(f"warning: {len(results.skipped)} unreadable video(s) left out (--skip_unreadable):",
          file=sys.stderr)
    for name, reason in results.skipped:
      print(f"  {name}: {reason}", file=sys.stderr)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  dataset_mode = bool(_DATASET_JSON.value)
  _check_flags(dataset_mode)
  # Everything that can be wrong with the outputs and inputs shows now, before the model loads.
  paths = _check_outputs(dataset_mode)
  source = None if dataset_mode else _open_video()
  dataset = _read_dataset() if dataset_mode else None
  from o2vis_jax import inference
  config, params = _load_model()
  # e.g. a trainable method on a segmenter-only checkpoint, --offline without refiner weights: the
  # error names the fix
  try:
    predictor = inference.VideoPredictor.from_config(config, params, chunk_size=_CHUNK_SIZE.value,
                                                     **_offline())
  except ValueError as e:
    where = f"--checkpoint {_CHECKPOINT.value}: " if _CHECKPOINT.value else ""
    raise cli.InputError(f"{where}{e}") from e
  max_num = _MAX_NUM.value or predictor.max_num
  if dataset_mode:
    _run_dataset(paths, dataset, config, predictor, max_num)
  else:
    _run_video(paths, source, predictor, max_num)
  return 0


if __name__ == "__main__":
  cli.run(main)
