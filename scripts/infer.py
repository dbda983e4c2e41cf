r"""Runs O2VIS on your own video or on a YouTube-VIS / OVIS split and writes the results file.

  # a video file (mp4 needs `pip install imageio-ffmpeg`) or a directory of frames, any length:
  python scripts/infer.py --checkpoint /ckpt/converted --input clip.mp4 \
      --output results.json --overlay overlay.mp4 --png_masks masks/

  # a dataset split (YouTube-VIS JSON + its JPEGImages folder), zipped for the evaluation server:
  python scripts/infer.py --checkpoint /ckpt/converted --dataset_json valid.json \
      --frames_dir valid/JPEGImages --output results.json --zip

  # smoke test without a checkpoint: a config and random weights
  python scripts/infer.py --config configs/tiny.py --input frames/ --output /tmp/r.json

  # a training-free association (Table 3(a) rows 1-5) on a segmenter-only checkpoint
  python scripts/infer.py --checkpoint /ckpt/segmenter --method minvis --input clip.mp4

Frames stream through the model in fixed-size chunks (--chunk_size): one compilation per frame
size, device memory independent of the video length. Results are YouTube-VIS results dicts
(video_id, category_id, score, per-frame RLE). --overlay draws the top-k instances with one stable
colour per identity (tracker slot); without imageio-ffmpeg a video path falls back to PNG frames.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from o2vis_jax import association  # noqa: E402  (the registry: the choices of --method)

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
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", None, "Frames per chunk (default: "
                                   "config.inference.chunk_size).")
_MAX_NUM = flags.DEFINE_integer("max_num", None, "Results per video, top-k over slot x class "
                                "(default: config.inference.max_num, 10 YouTube-VIS, 20 OVIS; "
                                "the training-free methods keep their section's top_k, e.g. "
                                "config.training_free.top_k).")
_FPS = flags.DEFINE_float("fps", None, "Frame rate of the overlay (default: the input's, else 10).")
_MAX_VIDEOS = flags.DEFINE_integer("max_videos", None, "With --dataset_json: only the first N videos.")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "Disable the progress bars.")


class CommandLineError(ValueError):
  """Flags that cannot run together; printed in one line, without the usage text."""


def _load_model():
  from o2vis_jax import inference
  if bool(_CHECKPOINT.value) == bool(_CONFIG.value):
    raise app.UsageError("give exactly one of --checkpoint DIR and --config FILE")
  if _CHECKPOINT.value:
    from o2vis_jax import checkpoint_conversion
    if not os.path.isdir(_CHECKPOINT.value):
      raise app.UsageError(f"--checkpoint {_CHECKPOINT.value!r} is not a directory")
    config, params = checkpoint_conversion.load_converted(_CHECKPOINT.value)
  else:
    config = _CONFIG.value
    params = None
  method_name = _METHOD.value
  if _TRACKER_MODE.value:
    if method_name:
      raise CommandLineError("give --method only (--tracker_mode is its deprecated form)")
    method_name = _LEGACY_MODES[_TRACKER_MODE.value]
    logging.warning("--tracker_mode is deprecated: use --method %s", method_name)
  if method_name:
    trained_for = association.method_of(config)
    config = association.with_method(config, method_name)
    method = association.method_of(config)
    if params is not None and method.trainable and "tracker" in params and method is not trained_for:
      # A trainable method's weights are its own: another method's do not fit them.
      raise CommandLineError(f"--method {method.name}: checkpoint {_CHECKPOINT.value!r} holds the tracker "
                             f"weights of {trained_for.name!r}; give a checkpoint of {method.name!r} or "
                             "a training-free method")
  if params is None:
    logging.warning("random weights (--config without --checkpoint): outputs are meaningless")
    params = inference.init_params(config, seed=_SEED.value)
  return config, params


def _videos():
  """(number of videos, iterator of (video_id, name, frame source), categories or None)."""
  from o2vis_jax import inference, video_io
  if bool(_INPUT.value) == bool(_DATASET_JSON.value):
    raise app.UsageError("give exactly one of --input and --dataset_json")
  if _INPUT.value:
    source = video_io.open_video(_INPUT.value)
    return 1, iter([(1, source.name, source)]), None
  import json
  if not _FRAMES_DIR.value:
    raise app.UsageError("--dataset_json needs --frames_dir")
  if not os.path.isdir(_FRAMES_DIR.value):
    raise video_io.VideoReadError(f"--frames_dir {_FRAMES_DIR.value!r} is not a directory")
  try:
    with open(_DATASET_JSON.value) as f:
      dataset = json.load(f)
  except (OSError, ValueError) as e:
    raise video_io.VideoReadError(f"cannot read --dataset_json {_DATASET_JSON.value!r}: {e}") from e
  if not isinstance(dataset.get("videos"), list) or "categories" not in dataset:
    raise video_io.VideoReadError(f"{_DATASET_JSON.value!r} is not a YouTube-VIS JSON (needs "
                                  "'videos' and 'categories')")
  if _MAX_VIDEOS.value:
    dataset = dict(dataset, videos=dataset["videos"][:_MAX_VIDEOS.value])
  videos = ((video["id"], os.path.dirname(video["file_names"][0]) or str(video["id"]), source)
            for video, source in inference.dataset_videos(dataset, _FRAMES_DIR.value))
  return len(dataset["videos"]), videos, sorted(dataset["categories"], key=lambda c: c["id"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from tqdm import tqdm
  from o2vis_jax import inference, visualize
  from o2vis_jax.evaluation import results as results_lib

  num_videos, videos, categories = _videos()   # unreadable inputs fail here, before the model
  config, params = _load_model()
  try:   # e.g. a trainable method on a segmenter-only checkpoint: the error names the fix
    predictor = inference.VideoPredictor.from_config(config, params, chunk_size=_CHUNK_SIZE.value)
  except ValueError as e:
    source = f"--checkpoint {_CHECKPOINT.value}: " if _CHECKPOINT.value else ""
    raise CommandLineError(f"{source}{e}") from e
  category_ids = [c["id"] for c in categories] if categories else None
  class_names = {c["id"]: c.get("name", str(c["id"])) for c in categories or []}
  max_num = _MAX_NUM.value or predictor.max_num
  show = not _NO_PROGRESS.value
  dataset_mode = bool(_DATASET_JSON.value)
  all_results = []
  for video_id, name, source in tqdm(videos, total=num_videos, desc="videos",
                                     disable=not show or not dataset_mode):
    with tqdm(total=len(source), desc=f"video {name}", unit="frame", disable=not show,
              leave=not dataset_mode) as bar:
      prediction = predictor.predict_video(source, progress=bar.update)
    top = prediction.instances(max_num)
    results = inference.to_results(top, video_id, category_ids)
    all_results.extend(results)
    if _PNG_MASKS.value:
      directory = os.path.join(_PNG_MASKS.value, name) if dataset_mode else _PNG_MASKS.value
      visualize.write_png_masks(directory, source.frame_names, top, source.height, source.width)
    if _OVERLAY.value:
      drawn = prediction.slot_instances() if _OVERLAY_ALL_SLOTS.value else top
      labels = []
      for inst in drawn:
        category = category_ids[inst["label"]] if category_ids else inst["label"] + 1
        labels.append(f"{class_names.get(category, category)} #{inst['identity']} "
                      f"{inst['score']:.2f}")
      path = _OVERLAY.value
      if dataset_mode:   # one file per video; GIF where mp4 cannot be written
        suffix = ".mp4" if visualize.ffmpeg_available() else ".gif"
        path = os.path.join(path, name.replace(os.sep, "_") + suffix)
      fps = _FPS.value or getattr(source, "fps", None) or 10.0
      written = visualize.write_overlay(iter(source), drawn, path, fps=fps, labels=labels)
      logging.info("overlay of %s written to %s", name, written)
  os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
  results_lib.write_results(_OUTPUT.value, all_results)
  print(f"{len(all_results)} results for {num_videos} video(s) written to {_OUTPUT.value}")
  if _ZIP.value:
    zip_path = os.path.splitext(_OUTPUT.value)[0] + ".zip"
    results_lib.write_results_zip(zip_path, all_results)
    print(f"server archive written to {zip_path}")
  return 0


def run():
  try:
    app.run(main)
  except Exception as e:  # pylint: disable=broad-except
    from o2vis_jax import video_io
    if isinstance(e, (video_io.VideoReadError, CommandLineError)):
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    raise


if __name__ == "__main__":
  run()
