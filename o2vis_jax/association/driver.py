"""The driver: runs an association method's frame step over a clip or a video under `lax.scan`.

- `track(config, params, frames)`: a whole clip or video from the empty state.
- `init_state(...)` + `run_chunk(config, params, state, frames)`: chunked video inference; running a
  video chunk by chunk (passing the state on) equals one call on all its frames.
- A padded frame (`valid` False) leaves the state unchanged. This guard lives only here, so fixed-size
  chunks run any video length with one compilation and no method has to think about padding.
- An optional leading batch axis of videos ([B, T, ...]) is `vmap`ped here.
- `video_instances(config, outputs, max_num)`: the method's video-level scoring over whole outputs.

Compile once: `run_chunk` and `track` run one jitted scan per (method, config, train, phase), cached
under a hashable key of the config's values (`o2vis_jax.compile_cache`); jax.jit compiles it once per
input shapes and dtypes. A second call with an equal config (the same object or a copy) reuses the
compiled program; `trace_count()` counts the traces (a test holds it at one per shape).
"""

from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from o2vis_jax import compile_cache
from o2vis_jax.association import base

# Inputs `track` casts to the state dtype (e_t, as before the seam); the rest keep their producer's dtype.
_CAST_INPUTS = ("embeds",)


def _keep_if_padded(valid, new_state, state):
  return jax.tree.map(lambda new, old: jnp.where(valid, new, old), new_state, state)


def _step_fn(method: base.Method, config, params, train: bool, phase: Optional[str]):
  # A method with several phases takes `phase=` (None: the method's own default, e.g. from its config).
  kwargs = {"phase": phase} if len(method.phases) > 1 else {}

  def step(state, frame):
    frame = dict(frame)
    valid = frame.pop("valid")
    new_state, outputs = method.step(config, params, state, frame, train=train, **kwargs)
    new_state = _keep_if_padded(valid, new_state, state)
    outputs = dict(outputs)
    outputs.update(method.state_outputs(new_state))
    return new_state, outputs
  return step


def init_state(config, params, frames: Dict[str, Any], batch_shape=()):
  """The empty state of `config`'s method for `frames` (sizes from `frames['embeds']` [..., T, N, C],
  dtype from `method.state_dtype`), broadcast over `batch_shape`."""
  method = base.method_of(config)
  embeds = frames["embeds"]
  num_queries, hidden_dim = embeds.shape[-2:]
  dtype = method.state_dtype(config, params, _inputs_dtype(frames))
  state = method.init_state(config, num_queries=num_queries, hidden_dim=hidden_dim, dtype=dtype)
  return jax.tree.map(lambda x: jnp.broadcast_to(x, tuple(batch_shape) + x.shape), state)


def _inputs_dtype(frames):
  key = "embeds_without_norm" if "embeds_without_norm" in frames else "embeds"
  return jnp.asarray(frames[key]).dtype


def run_chunk(config, params, state, frames: Dict[str, Any], *, train: bool = False,
              phase: Optional[str] = None):
  """Runs `config.association.method`'s step over a chunk of frames from `state`.

  frames: per-frame arrays with a leading time axis [T, ...] (or [B, T, ...] with a batched state),
  including `valid` bool [T] (or [B, T]). Returns (final state, outputs stacked over time).
  """
  method = base.method_of(config)
  frames = dict(frames)
  if "valid" not in frames:
    raise KeyError("association.run_chunk: frames['valid'] (bool [T] or [B, T]) is required")
  base.required(method, frames)
  valid = jnp.asarray(frames["valid"], bool)
  frames["valid"] = valid
  if valid.ndim not in (1, 2):
    raise ValueError(f"association.run_chunk: frames['valid'] must be [T] or [B, T], got {valid.shape}")
  leading = valid.shape
  for name, value in frames.items():
    if jnp.shape(value)[:len(leading)] != leading:
      raise ValueError(f"association: frames[{name!r}] has shape {jnp.shape(value)}, expected leading "
                       f"axes {leading} like frames['valid']")
  if phase is not None and phase not in method.phases:
    raise ValueError(f"association method {method.name!r}: phase {phase!r} is not one of {method.phases}")
  return _compiled_scan(method, config, train, phase)(params, state, frames)


def track(config, params, frames: Dict[str, Any], *, train: bool = False,
          phase: Optional[str] = None) -> Dict[str, jax.Array]:
  """Runs `config.association.method` over precomputed segmenter outputs of a clip or video.

  frames: per-frame arrays with a leading time axis [T, ...] (optional leading batch axis [B, T, ...]):
  the method's `required_inputs` among embeds, embeds_without_norm, logits, masks, mask_features (see
  `association.base`), and optionally `valid` bool [T] (default all True; False = a padded frame, which
  leaves the state unchanged). `config` needs only `association.method`; an absent method section is
  the method's `default_config()`. train: the training outputs (O2VIS: T_E and the per-layer aux
  predictions). phase: the training phase (a method with several `phases`).
  Returns the per-frame outputs stacked over time [(B,) T, ...].
  """
  method = base.method_of(config)
  frames = {k: jnp.asarray(v) for k, v in frames.items()}
  base.required(method, frames)
  embeds = frames["embeds"]
  if embeds.ndim not in (3, 4):
    raise ValueError(f"association.track: frames['embeds'] must be [T, N, C] or [B, T, N, C], got "
                     f"{embeds.shape}")
  batch_shape = embeds.shape[:-3]
  if "valid" not in frames:
    frames["valid"] = jnp.ones(embeds.shape[:-2], bool)
  state = init_state(config, params, frames, batch_shape)
  dtype = method.state_dtype(config, params, _inputs_dtype(frames))
  for name in _CAST_INPUTS:
    if name in frames and jnp.issubdtype(frames[name].dtype, jnp.floating):
      frames[name] = frames[name].astype(dtype)
  _, outputs = run_chunk(config, params, state, frames, train=train, phase=phase)
  return outputs


def video_instances(config, outputs: Dict[str, Any], max_num: Optional[int] = None,
                    valid: Optional[Any] = None) -> List[Dict[str, Any]]:
  """The method's video-level scoring over whole per-frame outputs [T, S, ...] of one video ->
  [{'score', 'label', 'slot'}, ...], best first. `valid` bool [T] drops padded frames. `max_num`
  defaults to `config.inference.max_num` (as the method adjusts it). Video inference accumulates the
  same hooks chunk by chunk and gives the same result."""
  method = base.method_of(config)
  host = {k: np.asarray(outputs[k]) for k in method.score_inputs}
  if valid is not None:
    keep = np.asarray(valid, bool)
    host = {k: v[keep] for k, v in host.items()}
  num_slots, num_classes = host["pred_logits"].shape[-2], host["pred_logits"].shape[-1] - 1
  accumulator = method.score_init(config, num_slots, num_classes)
  accumulator = method.score_update(config, accumulator, host)
  if max_num is None:
    inference = config.get("inference") if hasattr(config, "get") else None
    max_num = method.max_num(config, inference.max_num if inference is not None else 10)
  return method.score_instances(config, accumulator, max_num)


def trace_count() -> int:
  """How many times the compiled scans of `run_chunk` / `track` have been traced (once per method,
  config value, train, phase, input shapes and dtypes; a retrace is a recompilation)."""
  return compile_cache.trace_count(_NAME)


_NAME = "association.run_chunk"


def _build_scan(config, method: base.Method, train: bool, phase: Optional[str]):
  def scan_frames(params, state, frames):
    body = lambda s, f: jax.lax.scan(_step_fn(method, config, params, train, phase), s, f)
    if frames["valid"].ndim == 2:
      body = jax.vmap(body)
    return body(state, frames)
  return scan_frames


def _compiled_scan(method: base.Method, config, train: bool, phase: Optional[str]):
  return compile_cache.cached_jit(_NAME, config, _build_scan, method, bool(train), phase)
