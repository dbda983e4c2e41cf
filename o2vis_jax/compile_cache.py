"""Compile once per (config, shapes, dtype): jitted functions cached under a hashable key of a config's
values (issue 18).

A public entry point that takes a config (unhashable `ml_collections.ConfigDict`) builds its jitted
function through `cached_jit(name, config, build, *static)`: the first call with a given config *value*
builds it (from a private deep copy of the config, so a caller mutating its config later cannot change
the cached program) and wraps it in `jax.jit`; later calls with an equal config (the same object, a copy,
a freshly parsed one) get the same function, which jax.jit compiles once per input shapes and dtypes.
`trace_count(name)` counts the traces of each entry point (the tests hold it at one per shape).
"""

import copy
import threading
from typing import Any, Callable, Dict

import jax


class _Identity:
  """A config value without a value-based hash (a callable, an array): keyed by identity and kept alive
  by the key, so its id is never reused while the entry exists."""
  __slots__ = ("value",)

  def __init__(self, value):
    self.value = value

  def __hash__(self):
    return id(self.value)

  def __eq__(self, other):
    return isinstance(other, _Identity) and other.value is self.value


def config_key(config) -> Any:
  """A hashable key of a config's values: mappings (ConfigDict, FrozenConfigDict, dict) become sorted
  (name, key) tuples, lists and tuples tuples; two configs with equal values have equal keys."""
  if config is None or isinstance(config, (bool, int, float, str, bytes)):
    return config
  if hasattr(config, "items") and callable(config.items):
    return ("{}", tuple(sorted((str(k), config_key(v)) for k, v in config.items())))
  if isinstance(config, (list, tuple)):
    return (type(config).__name__, tuple(config_key(v) for v in config))
  try:
    hash(config)
  except TypeError:
    return _Identity(config)
  return config


_CACHE: Dict[Any, Callable] = {}
_TRACES: Dict[str, int] = {}
_LOCK = threading.Lock()


def trace_count(name: str) -> int:
  """How many times the jitted functions of entry point `name` have been traced (= compiled)."""
  return _TRACES.get(name, 0)


def cached_jit(name: str, config, build: Callable[..., Callable], *static: Any, **jit_kwargs) -> Callable:
  """The jitted `build(config_copy, *static)` for this (name, config value, static), built once.

  `static` must be hashable (method objects, bools, strings). `jit_kwargs` go to `jax.jit`.
  """
  key = (name, config_key(config), static)
  with _LOCK:
    function = _CACHE.get(key)
    if function is None:
      body = build(copy.deepcopy(config), *static)

      def counted(*args, **kwargs):
        _TRACES[name] = _TRACES.get(name, 0) + 1   # runs at trace time only
        return body(*args, **kwargs)
      function = _CACHE[key] = jax.jit(counted, **jit_kwargs)
  return function
