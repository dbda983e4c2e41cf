r"""How many DVIS-DAQ sequence slots (`association.dvis_daq.num_slots`) a trained DAQ model needs on the
synthetic data: the number the synthetic config's `num_slots` is chosen from (configs/synthetic_tiny_dvis_daq.py).

  python scripts/measure_daq_slots.py --checkpoint assets/synthetic_tiny_dvis_daq --out slots.json

Runs the checkpoint's DAQ tracker with a large table (--num_slots, overflow counted, not an error) over
held-out synthetic videos of the checkpoint's data settings (--videos x --frames, seed --seed) and one long
video (--long_frames), with streaming inference (`inference.VideoPredictor`, chunks of --chunk_size frames,
dead sequences released between chunks), and records per `track` call (one chunk):
  slots_used   slots the call occupied (the sequences live at its start + those it created): what
               num_slots must cover in streaming inference;
  created      the sequences it created;
  live_end     the sequences still live after it;
and per video the sequences created in all (what num_slots must cover when the whole video is one call,
`--chunk_size` >= frames). The maxima are printed and written to --out (JSON), with every video's calls
(`per_video`).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from o2vis_jax import cli  # noqa: E402

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A converted DVIS-DAQ checkpoint directory.",
                                  required=True)
_NUM_SLOTS = flags.DEFINE_integer("num_slots", 256, "The (large) table to measure with.", lower_bound=1)
_VIDEOS = flags.DEFINE_integer("videos", 20, "Held-out synthetic videos.", lower_bound=0)
_FRAMES = flags.DEFINE_integer("frames", 24, "Frames per held-out video.", lower_bound=1)
_LONG_FRAMES = flags.DEFINE_integer("long_frames", 500, "Frames of the long streamed video (0: none).",
                                    lower_bound=0)
_SEED = flags.DEFINE_integer("seed", 20000, "Seed of the held-out videos (the long one: seed + 1).")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", None, "Frames per track call (default: the checkpoint's "
                                   "inference.chunk_size).", lower_bound=1)
_THRESHOLD = flags.DEFINE_float("inference_select_threshold", None, "Override of the checkpoint's "
                                 "association.dvis_daq.inference_select_threshold (and the frame-0 aux one).")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/o2vis_daq_slots", "Where the videos are generated.")
_OUT = flags.DEFINE_string("out", None, "JSON file for the figures (optional).")


def measure(predictor, dataset, frames_dir):
  """[{video, frames, calls: [{slots_used, created, live_end}], created}] over the videos of `dataset`."""
  import numpy as np
  from o2vis_jax import inference
  method, calls = predictor.method, []
  release = method.release

  def observed_release(config, state, accumulator):   # after each chunk (track call), before freeing
    occupied, live = np.asarray(state.occupied), np.asarray(state.live)
    calls.append(dict(slots_used=int(occupied.sum()), live_end=int(live.sum()),
                      num_created=int(state.num_created), num_dropped=int(state.num_dropped)))
    return release(config, state, accumulator)

  method.release = observed_release   # an instance attribute: this process only, for the measurement
  videos = []
  try:
    for video, source in inference.dataset_videos(dataset, frames_dir):
      del calls[:]
      predictor.predict_video(source)
      created = [c["num_created"] for c in calls]
      per_call = [dict(slots_used=c["slots_used"], created=n - p, live_end=c["live_end"])
                  for c, n, p in zip(calls, created, [0] + created[:-1])]
      videos.append(dict(video=video["id"], frames=len(video["file_names"]), calls=per_call,
                         created=created[-1], dropped=calls[-1]["num_dropped"]))
  finally:
    del method.release
  return videos


def summary(videos):
  calls = [c for v in videos for c in v["calls"]]
  return dict(videos=len(videos), track_calls=len(calls),
              max_slots_used_per_call=max(c["slots_used"] for c in calls),
              max_created_per_call=max(c["created"] for c in calls),
              max_live=max(c["live_end"] for c in calls),
              max_created_per_video=max(v["created"] for v in videos),
              mean_created_per_video=sum(v["created"] for v in videos) / len(videos),
              dropped=sum(v["dropped"] for v in videos))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from o2vis_jax import association, inference
  from o2vis_jax.checkpoint_conversion import load_converted
  from o2vis_jax.datasets import synthetic

  config, params = load_converted(_CHECKPOINT.value)
  if association.method_of(config).name != "dvis_daq" or "tracker" not in params:
    raise cli.InputError(f"--checkpoint {_CHECKPOINT.value}: not a trained 'dvis_daq' checkpoint "
                         f"(association.method {association.method_of(config).name!r})")
  config.association.dvis_daq.num_slots = _NUM_SLOTS.value
  config.association.dvis_daq.on_overflow = "drop"
  if _THRESHOLD.value is not None:
    config.association.dvis_daq.inference_select_threshold = _THRESHOLD.value
    config.association.dvis_daq.aux_inference_select_threshold = _THRESHOLD.value
  chunk_size = _CHUNK_SIZE.value or config.inference.chunk_size
  predictor = inference.VideoPredictor.from_config(config, params, chunk_size=chunk_size)
  data = config.data
  common = dict(size=data.synthetic_size, radius_range=tuple(data.synthetic_radius_range),
                appearance=data.get("synthetic_appearance", synthetic.APPEARANCES[0]))
  splits = []
  if _VIDEOS.value:
    splits.append(("held-out", "valid", _VIDEOS.value, _FRAMES.value, _SEED.value))
  if _LONG_FRAMES.value:
    splits.append(("long", "long", 1, _LONG_FRAMES.value, _SEED.value + 1))
  report = dict(checkpoint=os.path.abspath(_CHECKPOINT.value), num_slots=_NUM_SLOTS.value,
                chunk_size=chunk_size,
                inference_select_threshold=config.association.dvis_daq.inference_select_threshold)
  for name, split, num_videos, num_frames, seed in splits:
    root = os.path.join(_WORKDIR.value, split)
    gt_json = synthetic.generate(root, split, num_videos, seed=seed, num_frames=num_frames, **common)
    with open(gt_json) as f:
      dataset = json.load(f)
    videos = measure(predictor, dataset, os.path.join(root, split, "JPEGImages"))
    report[name] = dict(summary(videos), frames=num_frames, seed=seed)
    print(f"{name}: {json.dumps(report[name])}")
    report[name]["per_video"] = videos
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
