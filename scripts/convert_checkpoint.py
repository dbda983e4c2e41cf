"""Converts a segmenter (or whole LOMM) checkpoint into an o2vis-jax checkpoint directory.

  python scripts/convert_checkpoint.py --input model_final.pkl --output_dir /tmp/converted
  python scripts/convert_checkpoint.py --input model.safetensors --hf_config config.json --output_dir ...

Input: a HuggingFace `Mask2FormerForUniversalSegmentation` state dict (needs --hf_config, the
model's config.json) or a detectron2 layout checkpoint (Mask2Former / MinVIS / DVIS / LOMM:
backbone.*, sem_seg_head.*, and for LOMM also tracker.*). File formats: see
o2vis_jax/checkpoint_conversion/io.py. Output: `config.json` (configs/base.py with the converted
model / tracker sections) and an orbax checkpoint `params/` holding {'segmenter': ...,
'tracker': ...}; read both back with `o2vis_jax.checkpoint_conversion.load_converted(dir)`.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from o2vis_jax import checkpoint_conversion as cc  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "checkpoint file (.pkl, .pth, .bin, .safetensors, .npz)")
flags.DEFINE_string("output_dir", None, "directory to write config.json and params/ into (new)")
flags.DEFINE_string("hf_config", None, "transformers config.json (HF layout only)")
flags.DEFINE_enum("layout", "auto", ["auto", "hf", "detectron2"], "state dict layout")
flags.DEFINE_integer("num_heads", 8, "attention heads of the segmenter decoder and the tracker "
                     "(detectron2 checkpoints do not store them)")
flags.DEFINE_string("dataset", None, "optional config.data.dataset to record (e.g. ytvis_2019)")
flags.mark_flags_as_required(["input", "output_dir"])


def main(argv):
  del argv
  config, params = cc.convert_file(FLAGS.input, FLAGS.layout, FLAGS.hf_config, FLAGS.num_heads)
  if FLAGS.dataset:
    config.data.dataset = FLAGS.dataset
  cc.save_converted(FLAGS.output_dir, config, params)
  print(f"wrote {FLAGS.output_dir}: segmenter R{config.model.backbone.depth}, K={config.model.num_classes}, "
        f"N={config.model.num_queries}; parts: {sorted(params)}")


if __name__ == "__main__":
  app.run(main)
