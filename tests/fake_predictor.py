"""A stand-in for `inference.VideoPredictor` without a model, for the tests of what surrounds inference
(dataset runs, resumption, the command line): it reads every frame of the source it is given, so
unreadable frames fail exactly as in a real run, and returns a `VideoPrediction` of two fixed tracks.

`install()` puts it behind `inference.VideoPredictor.from_config` (and makes `init_params` free), so
that `scripts/infer.py` run in a subprocess goes through its whole flow in a second instead of
compiling a model; `interrupt_at` raises KeyboardInterrupt (Ctrl-C) when that video's turn comes.
"""

import numpy as np

from o2vis_jax import inference

NUM_SLOTS = 2


class FakePredictor:
  """Reads the frames; predicts slot s = the top-left (s + 1) x (s + 1) square in every frame."""

  max_num = 2

  def __init__(self, interrupt_at=None):
    self.interrupt_at = interrupt_at   # 1-based index of the video that "gets" Ctrl-C
    self.videos_seen = 0

  def predict_video(self, source, progress=None, **unused):
    self.videos_seen += 1
    if self.interrupt_at == self.videos_seen:
      raise KeyboardInterrupt
    count = 0
    for _ in source:
      count += 1
      if progress is not None:
        progress(1)
    height, width = source.height, source.width
    slot_rles = []
    for slot in range(NUM_SLOTS):
      mask = np.zeros((1, height, width), bool)
      mask[0, :slot + 1, :slot + 1] = True
      slot_rles.append(inference.encode_rle(mask) * count)
    logits = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])

    def score_instances(max_num):
      return [dict(score=0.9 - 0.1 * s, label=s % 2, slot=s) for s in range(min(max_num, NUM_SLOTS))]
    return inference.VideoPrediction(slot_rles=slot_rles, height=height, width=width,
                                     score_instances=score_instances, mean_logits=logits)


def install(interrupt_at=None):
  """Every predictor built from a config is a FakePredictor; random weights cost nothing."""
  inference.init_params = lambda config, seed=0: {}
  inference.VideoPredictor.from_config = classmethod(
      lambda cls, config, params, chunk_size=None, mask_padding=False: FakePredictor(interrupt_at))
