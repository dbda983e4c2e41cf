"""The training-free baselines (`training_free`) of Table 3(a) rows 1-5 (REFERENCE.md section 11).

On the segmenter's outputs only: each frame's normed queries e_t are matched to a memory of the slots
(plain Hungarian or OHM, Eq. 6) and the segmenter's logits and masks are re-ordered into the slots.

  memory:   'none' (M := x, row 1, MinVIS), 'similarity' (row 2), 'momentum' (row 3), 'iom' (Eq. 3, rows 4-5)
  matching: 'hungarian' (rows 1-4) | 'ohm' (row 5; occupancy = non-empty mask and argmax != no-object)

Video-level scoring keeps `top_k` instances (MinVIS.inference_video keeps 10, whatever MAX_NUM says).
"""

from typing import Any, Dict, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from o2vis_jax import config_validation
from o2vis_jax.association import base
from o2vis_jax.association.ops import hungarian as hungarian_lib
from o2vis_jax.association.ops import memory as memory_lib

MATCHING = ("hungarian", "ohm")


class State(NamedTuple):
  """memory [N, C] (the baseline's memory of e), occupied bool [N], started bool []."""
  memory: jax.Array
  occupied: jax.Array
  started: jax.Array


def baseline_step(memory_mode: str, use_ohm: bool, matcher: str, state: State,
                  frame: Dict[str, jax.Array]):
  """One frame (REFERENCE.md section 11). frame: embeds e_t [N, C], logits z_t [N, K+1], masks [N, h, w].
  Outputs the segmenter's predictions re-ordered into slots by the matching."""
  e, started = frame["embeds"], state.started
  identity = jnp.arange(e.shape[0], dtype=jnp.int32)
  occupied_before = state.occupied & started
  # Plain cosine (no eps); with nothing occupied OHM is the plain Hungarian, as in the reference.
  assignment = jax.lax.cond(
      started,
      lambda: hungarian_lib.occupancy_guided_matching(state.memory, e, occupied_before, matcher=matcher,
                                                      norm_eps=0.0),
      lambda: identity)
  take = lambda x: jnp.take(x, assignment, axis=0)
  matched, logits, masks = take(e), take(frame["logits"]), take(frame["masks"])
  memory = jnp.where(started, memory_lib.baseline_memory_update(state.memory, matched, logits, memory_mode),
                     matched)
  occupied = memory_lib.occupancy_update(occupied_before, logits, masks) if use_ohm else occupied_before
  new_state = State(memory, occupied, jnp.ones_like(started))
  return new_state, dict(pred_logits=logits, pred_masks=masks, assignment=assignment)


class TrainingFree(base.Method):
  """Table 3(a) rows 1-5: memory x matching on the segmenter's outputs, no parameters."""
  name = "training_free"
  description = ("training-free association of the segmenter's outputs, Table 3(a) rows 1-5: "
                 "config.training_free.memory (none / similarity / momentum / iom) x .matching "
                 "(hungarian / ohm), default IOM + OHM (row 5)")
  required_inputs = ("embeds", "logits", "masks")

  def default_config(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        memory="iom",           # none | similarity | momentum | iom.
        matching="ohm",         # hungarian | ohm.
        top_k=10,               # MinVIS.inference_video keeps 10 (not inference.max_num).
        matcher="host",         # host (scipy via pure_callback) | device (pure JAX, exact).
    ))

  def resolved(self, config):
    """(memory, use_ohm, matcher) of the section, checked."""
    return self.resolve_section(self.section(config))

  def resolve_section(self, section):
    """(memory, use_ohm, matcher) of `section`, each checked against its allowed values."""
    path = f"config.{self.section_name}"
    memory = config_validation.check_choice(f"{path}.memory", section.get("memory", "iom"),
                                            memory_lib.BASELINE_MEMORIES)
    matching = config_validation.check_choice(f"{path}.matching", section.get("matching", "ohm"), MATCHING)
    matcher = config_validation.check_choice(f"{path}.matcher", section.get("matcher", "host"),
                                             hungarian_lib.MATCHERS)
    return memory, matching == "ohm", matcher

  def validate_section(self, section, config) -> None:
    super().validate_section(section, config)
    self.resolve_section(section)
    config_validation.check_positive(section, f"config.{self.section_name}", ("top_k",))

  def init_state(self, config, *, num_queries, hidden_dim, dtype):
    return State(memory=jnp.zeros((num_queries, hidden_dim), dtype),
                 occupied=jnp.zeros((num_queries,), bool), started=jnp.zeros((), bool))

  def state_dtype(self, config, params, inputs_dtype):
    del params
    dtype = self.section(config).get("dtype", None)
    return jnp.dtype(dtype) if dtype is not None else jnp.dtype(inputs_dtype)

  def step(self, config, params, state, frame, *, train):
    del params, train
    memory, use_ohm, matcher = self.resolved(config)
    return baseline_step(memory, use_ohm, matcher, state, frame)

  def state_outputs(self, state) -> Dict[str, Any]:
    return {"memory": state.memory, "occupied": state.occupied}

  def max_num(self, config, default: int) -> int:
    return int(self.section(config).get("top_k", default))


METHOD = base.register(TrainingFree())
