"""`config.data`: datasets and the input pipeline (SPEC section 7)."""

import ml_collections


def get() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      dataset="ytvis_2019",       # ytvis_2019 | ytvis_2021 | ytvis_2022 | ovis | synthetic.
      data_dir="",                # the directory the user names; nothing is downloaded.
      num_frames=5,               # frames per training clip.
      sampling_frame_range=2,
  ))


def tiny(config: ml_collections.ConfigDict) -> None:
  config.data.dataset = "synthetic"
