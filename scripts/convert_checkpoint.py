"""Converts a segmenter (or whole LOMM) checkpoint into an o2vis-jax checkpoint directory.

  python scripts/convert_checkpoint.py --input model_final.pkl --output_dir /tmp/converted
  python scripts/convert_checkpoint.py --input model.safetensors --hf_config config.json --output_dir ...

Input: a HuggingFace `Mask2FormerForUniversalSegmentation` state dict (needs --hf_config, the
model's config.json) or a detectron2 layout checkpoint (Mask2Former / MinVIS / DVIS / LOMM:
backbone.*, sem_seg_head.*, and for LOMM also tracker.*; CAVIS online / offline: tracker.* and the
ReID head sem_seg_head.predictor.reid_embed.*, recognised as association method 'cavis'; a CAVIS segmenter
file's ReID head becomes the segmenter-stage tracker {'reid_embed'} of 'cavis'). File formats: see
o2vis_jax/checkpoint_conversion/io.py. Output: `config.json` (configs/base.py with the converted
model / tracker sections) and an orbax checkpoint `params/` holding {'segmenter': ...,
'tracker': ...}; read both back with `o2vis_jax.checkpoint_conversion.load_converted(dir)`.
The released checkpoint is recognised by its keys and named (Mask2Former COCO, MinVIS / LOMM, CAVIS, DVIS++,
DVIS-DAQ; segmenter / online / offline; R50 / Swin-L / ViT-L: checkpoint_conversion/released.py). Parts of
methods not built here (the DVIS++ tracker and refiner, the DVIS-DAQ refiner, segmenter-stage ReID heads)
go to `unconverted.npz` (the authors' arrays under their key names) with `UNCONVERTED.txt` saying what they are.
"""

import os
import shutil
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from o2vis_jax import checkpoint_conversion as cc, cli, config_validation  # noqa: E402
from o2vis_jax.checkpoint_conversion import io, released  # noqa: E402
from o2vis_jax.defaults import data as defaults_data  # noqa: E402
from o2vis_jax.models import backbones  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "checkpoint file (.pkl, .pth, .bin, .safetensors, .npz)")
flags.DEFINE_string("output_dir", None, "directory to write config.json and params/ into (new)")
flags.DEFINE_string("hf_config", None, "transformers config.json (HF layout only)")
flags.DEFINE_enum("layout", "auto", ["auto", "hf", "detectron2"], "state dict layout")
flags.DEFINE_integer("num_heads", 8, "attention heads of the segmenter decoder and the tracker "
                     "(detectron2 checkpoints do not store them)", lower_bound=1)
flags.DEFINE_enum("dataset", None, list(defaults_data.DATASETS), "optional config.data.dataset to record")
flags.mark_flags_as_required(["input", "output_dir"])


def check_output_dir(path: str) -> str:
  """--output_dir can take a new checkpoint: writable, and not already holding one (kept, never
  overwritten: a converted checkpoint may be the only copy of a training export)."""
  path = cli.check_output_dir(path, "output_dir", create=False)
  held = [name for name in (io.CONFIG_FILE, io.PARAMS_DIR) if os.path.exists(os.path.join(path, name))]
  if held:
    raise cli.InputError(f"--output_dir {path!r} already holds a checkpoint ({', '.join(held)}); "
                         "choose a new directory (the existing one is kept)")
  return path


def write_checkpoint(output_dir: str, config, params) -> None:
  """`save_converted` into a staging directory, then config.json and params/ moved into `output_dir`:
  an interrupted conversion leaves no half-written checkpoint there (only the staging directory)."""
  staging = output_dir.rstrip("/") + ".incomplete"
  shutil.rmtree(staging, ignore_errors=True)
  cc.save_converted(staging, config, params)
  os.makedirs(output_dir, exist_ok=True)
  os.replace(os.path.join(staging, io.PARAMS_DIR), os.path.join(output_dir, io.PARAMS_DIR))
  os.replace(os.path.join(staging, io.CONFIG_FILE), os.path.join(output_dir, io.CONFIG_FILE))
  os.rmdir(staging)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  source = cli.check_input_file(FLAGS.input, "input")
  hf_config = cli.check_input_file(FLAGS.hf_config, "hf_config") if FLAGS.hf_config else None
  output_dir = check_output_dir(FLAGS.output_dir)
  try:
    converted = released.convert_released(source, FLAGS.layout, hf_config, FLAGS.num_heads)
  except ValueError as e:   # ConversionError and the layout / HF config errors: all about --input
    if isinstance(e, cli.input_error_types()):
      raise
    raise cli.InputError(f"--input {source}: {e}") from e
  config, params = converted.config, converted.params
  if FLAGS.dataset:
    config.data.dataset = FLAGS.dataset
  config_validation.validate(config)
  write_checkpoint(output_dir, config, params)
  for line in converted.describe():
    print(line)
  kept = released.save_unconverted(output_dir, converted)   # parts of methods not built here, with a note
  if kept:
    print(f"wrote {kept} (see {released.UNCONVERTED_NOTE})")
  print(f"wrote {output_dir}: segmenter {backbones.describe(config.model.backbone)}, K={config.model.num_classes}, "
        f"N={config.model.num_queries}; parts: {sorted(params)}")
  if "tracker" in params and io.segmenter_stage_only(config, params):   # a CAVIS segmenter file
    print(f"association method {config.association.method!r}, segmenter stage only (tracker: "
          f"{sorted(params['tracker'])}): train its tracker stage with --config.init_checkpoint={output_dir}, "
          "or run a training-free method (python scripts/infer.py --method training_free)")
  elif "tracker" in params:   # which association method the weights are (LOMM: o2vis; CAVIS: cavis; ...)
    method = config.association.method
    print(f"association method {method!r} (recorded as config.association.method): run it with "
          f"python scripts/infer.py --checkpoint {output_dir}")


if __name__ == "__main__":
  cli.run(main)
