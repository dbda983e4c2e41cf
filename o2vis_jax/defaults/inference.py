"""`config.inference`: video inference (SPEC section 4, REFERENCE.md section 8)."""

import ml_collections


def get() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      chunk_size=8,               # frames per segmenter batch / scan chunk; the last chunk is padded.
      min_size_test=480,          # shorter side at test time.
      size_divisibility=32,       # test images are padded to a multiple of this.
      max_num=10,                 # video-level top-k (10 YouTube-VIS, 20 OVIS).
  ))


def tiny(config: ml_collections.ConfigDict) -> None:
  config.inference.chunk_size = 4
  config.inference.min_size_test = 64
