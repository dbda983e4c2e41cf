"""The synthetic occlusion dataset (SPEC section 7), written in the real YouTube-VIS layout.

The command line of `o2vis_jax.datasets.synthetic` (the generator and its description live there):

  python -m data.synthetic --out /tmp/synth --split train --videos 100 --seed 0 [--size 128 --frames 24]
  python -m data.synthetic --out /tmp/long --split valid --videos 1 --seed 1 --frames 5000   # a long video
"""

import argparse
import sys
from typing import Optional, Sequence

from o2vis_jax.datasets import synthetic


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m data.synthetic", description=__doc__.split("\n\n")[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--out", required=True, help="output directory; writes <out>/<split>.json and "
                      "<out>/<split>/JPEGImages/<video>/<frame>.jpg")
  parser.add_argument("--split", default="train", help="split name (train, valid, ...)")
  parser.add_argument("--videos", type=int, default=100, help="number of videos")
  parser.add_argument("--seed", type=int, default=0, help="random seed; use different seeds per split")
  parser.add_argument("--size", type=int, default=128, help="frame height and width in pixels")
  parser.add_argument("--frames", type=int, default=24,
                      help="frames per video; thousands make long videos (streamed, constant image memory)")
  parser.add_argument("--max_objects", type=int, default=5, help="most annotated objects per video (>= 2)")
  parser.add_argument("--jpeg_quality", type=int, default=92, help="JPEG quality of the frames")
  parser.add_argument("--radius_range", type=float, nargs=2, default=synthetic.RADIUS_RANGE,
                      metavar=("MIN", "MAX"), help="object radius range as a fraction of --size")
  parser.add_argument("--appearance", default=synthetic.APPEARANCES[0], choices=synthetic.APPEARANCES,
                      help="'class': a colour family and texture per class besides the shape; 'random': "
                      "any colour and texture (only the shape tells the class)")
  args = parser.parse_args(argv)
  path = synthetic.generate(args.out, args.split, args.videos, args.seed, size=args.size,
                            num_frames=args.frames, max_objects=args.max_objects,
                            jpeg_quality=args.jpeg_quality, radius_range=args.radius_range,
                            appearance=args.appearance)
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
