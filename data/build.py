"""Builds a dataset from a directory the user names (nothing is downloaded).

  python -m data.build --dataset ytvis_2019 --data_dir /data/ytvis2019 --out /data/built --holdout_videos 300
  python -m data.build --dataset coco --data_dir /data/coco --out /data/built \
      --coco_target_json /data/ytvis2019/train.json
  python -m data.synthetic --out /tmp/synth --split train --videos 200 --seed 0 && \
  python -m data.build --dataset synthetic --data_dir /tmp/synth --out /tmp/built

Prints the built dataset directory (the value for `config.data.data_dir`). The command line of
`o2vis_jax.datasets.builders`, where the builders live.
"""

import argparse
import sys
from typing import Optional, Sequence

from o2vis_jax.datasets import builders


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data.build", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--dataset", required=True, choices=builders.DATASETS, help="which dataset layout")
  parser.add_argument("--data_dir", required=True, help="the raw dataset directory as distributed")
  parser.add_argument("--out", required=True, help="where the built TFDS (array_record) dataset is written")
  parser.add_argument("--holdout_videos", type=int, default=0,
                      help="train videos held out as a labelled local validation split named 'holdout'")
  parser.add_argument("--holdout_seed", type=int, default=0, help="seed of the holdout choice")
  parser.add_argument("--coco_target_json", default="",
                      help="coco only: a video dataset JSON whose categories COCO is mapped to by name")
  args = parser.parse_args(argv)
  try:
    path = builders.build(args.dataset, args.data_dir, args.out, args.holdout_videos, args.holdout_seed,
                          args.coco_target_json)
  except builders.DataValidationError as e:
    print(f"refused: {e}", file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
