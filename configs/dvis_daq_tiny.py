"""The tiny DVIS-DAQ config of the unit tests: configs/tiny.py with the association method 'dvis_daq' (its
section shrunk by `make_tiny`)."""

from configs import base
from o2vis_jax import association


def get_config():
  config = base.make_tiny(association.with_method(base.get_base_config(), "dvis_daq"))
  config.train.task = "tracker"
  return config
