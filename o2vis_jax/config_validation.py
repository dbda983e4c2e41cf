"""Validation of a whole experiment config right after it is parsed (being written: see ConfigError)."""

from o2vis_jax.cli import InputError


class ConfigError(InputError):
  """A config field with a wrong type, a value outside its allowed set, or an unknown name."""


def validate(config):
  """Checks every section of `config`; returns it. Raises ConfigError naming the field."""
  return config
