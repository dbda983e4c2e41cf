"""The tiny config used by the unit tests: every section shrunk (`o2vis_jax.defaults.make_tiny`)."""

from configs import base


def get_config():
  return base.make_tiny(base.get_base_config())
