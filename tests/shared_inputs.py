"""Inputs several test files share: a small video with a moving square, and a batch iterator that repeats
one batch."""

import numpy as np


def moving_square_video(height: int, width: int, num_frames: int, seed: int = 7):
  """uint8 frames [height, width, 3]: a fixed noisy background and a yellow square moving down-right."""
  rng = np.random.default_rng(seed)
  background = rng.integers(0, 160, size=(height, width, 3), dtype=np.uint8)
  frames = []
  for t in range(num_frames):
    frame = background.copy()
    frame[10 + t: 30 + t, 5 + 6 * t: 25 + 6 * t] = (240, 220, 30)
    frames.append(frame)
  return frames


class FixedBatch:
  """Repeats one batch (with the grain iterator's get/set_state interface), so that the loss of a few
  steps must fall: the model fits that batch."""

  def __init__(self, batch):
    self.batch = batch

  def __next__(self):
    return self.batch

  def get_state(self):
    return {}

  def set_state(self, state):
    del state


def lighten_segmenter(config):
  """The training tests' segmenter, lighter than the tiny default: ResNet-18, one pixel-decoder encoder
  layer, two decoder layers (so two sets of auxiliary losses). A training step then compiles in about
  half the time; what these tests check (the trainer's mechanics, the methods' losses and gradients) does
  not depend on the segmenter's depth. -> `config`, changed in place."""
  config.model.backbone.depth = 18
  config.model.pixel_decoder.num_encoder_layers = 1
  config.model.transformer_decoder.num_layers = 2
  return config
