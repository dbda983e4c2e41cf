"""The base config every setting starts from: the library's defaults (`o2vis_jax.defaults`)."""

from o2vis_jax import defaults


def get_base_config():
  return defaults.base_config()


def make_tiny(config):
  """Shrinks every section in place for unit tests (2-core CPU)."""
  return defaults.make_tiny(config)
