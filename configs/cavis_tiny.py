"""The tiny CAVIS config of the unit tests and the short training run: configs/tiny.py with the association
method 'cavis' (its section shrunk by `make_tiny`); variant `:segmenter` for the segmenter stage."""

from configs import base, cavis_common
from o2vis_jax import association


def get_config(arg: str = ""):
  """'' : the tracker stage; 'segmenter': the segmenter stage (configs/cavis_common.py's fields, tiny)."""
  config = base.make_tiny(association.with_method(base.get_base_config(), "cavis"))
  config.train.task = "tracker"
  if arg == "segmenter":
    cavis_common.segmenter_fields(config)
    config.train.decay_steps = ()
    config.num_train_steps = 4
  elif arg:
    raise ValueError(f"configs/cavis_tiny.py: variant must be '' or 'segmenter', got {arg!r}")
  return config
