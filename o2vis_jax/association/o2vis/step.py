"""The O2VIS frame step (REFERENCE.md sections 4-5): T_E, OHM, the adaptive anchor, T_A, the IOM.

The Instance Occupancy Memory is the state (`State`): slot queries M (tracker space), the segmenter-space
memory S, the occupancy bits O and `started`. One body serves frame 0 and later frames (selected by
`started`); the driver (`association.driver`) keeps the state on padded frames.
"""

from typing import Dict, NamedTuple

import jax
import jax.numpy as jnp

from o2vis_jax.association.ops import hungarian as hungarian_lib
from o2vis_jax.association.ops import memory as memory_lib
from o2vis_jax.association.o2vis.config import Options


class State(NamedTuple):
  """memory [N, C] (M), segmenter_memory [N, C] (S), occupied bool [N] (O), started bool [] (a valid
  frame has been seen)."""
  memory: jax.Array
  segmenter_memory: jax.Array
  occupied: jax.Array
  started: jax.Array


def init_state(num_queries: int, hidden_dim: int, dtype) -> State:
  """The empty memory before a video's first frame."""
  zeros = jnp.zeros((num_queries, hidden_dim), dtype)
  return State(memory=zeros, segmenter_memory=zeros, occupied=jnp.zeros((num_queries,), bool),
               started=jnp.zeros((), bool))


def take_rows(x, index):
  return jnp.take(x, index, axis=0)


def tracker_step(tracker, options: Options, train: bool, early: bool, state: State,
                 frame: Dict[str, jax.Array]):
  """One frame of the O2VIS trackers (REFERENCE.md sections 4-5).

  tracker: a bound `models.tracker.Tracker`. frame: embeds e_t [N, C], embeds_without_norm u_t [N, C],
  mask_features [h, w, C], optionally logits z_t [N, K+1] (then S and the segmenter-space indices
  sigma_t are tracked; needed for early matching) and masks [N, h, w]. early: early matching (Eq. 9),
  training only; then `matcher_logits` / `matcher_masks` (the segmenter's predictions re-ordered by
  sigma_t, Eq. 14) are output too.
  """
  u, e, started = frame["embeds_without_norm"], frame["embeds"], state.started
  num_slots = u.shape[0]
  identity = jnp.arange(num_slots, dtype=jnp.int32)
  outputs = {}

  # The frame's Hungarian problems (sigma_t in a, the OHM in d) are solved together in d): one host
  # callback per frame with matcher='host' (issue 18).
  problems = []
  # a) Segmenter-space association: sigma_t = Hung(S, e_t) (at frame 0 Hung(e_0, e_0)), S by Eq. 3.
  if "logits" in frame:
    reference_rows = jnp.where(started, state.segmenter_memory, e)
    problems.append(hungarian_lib.single_stage(hungarian_lib.cosine_cost(reference_rows, e)))
  elif early:
    raise ValueError("association method 'o2vis': early matching needs frame['logits'] (REFERENCE.md 7.4)")

  # b) T_E (Eq. 5): anchored on the memory, self mode at frame 0. c) Current objects: T_A in self mode
  # on the frame (also T_A's output at frame 0). Shared work: ref_proj(u_t), the block-0 query of both
  # self modes, once; T_A's keys and values of u_t, once per block for its two passes (c and f).
  # (T_E and T_A-self are independent; batching their different weights gains nothing on a CPU, where
  # a pair of [N, C] x [C, F] matmuls costs the same as one batched matmul, issue 18.)
  query_of_u = tracker.query_projection_of(u)
  existing = tracker.run_stack("E", u, anchor=state.memory, use_anchor=started, query_of_kv=query_of_u)
  current_stack, keys_values_A = tracker.run_stack("A", u, return_keys_values=True, query_of_kv=query_of_u)
  current = current_stack[-1]

  # d) OHM (Eq. 6) between LN_d(T_E) and the current objects; identity at frame 0.
  slots = tracker.normed(existing[-1])
  if options.current_features == "tracker":
    ohm_current, anchor_source = tracker.normed(current), current
  else:
    ohm_current, anchor_source = e, u
  if not early:
    problems.append(hungarian_lib.ohm_stages(hungarian_lib.cosine_cost(slots, ohm_current),
                                             state.occupied))
  solved = hungarian_lib.staged_hungarian(jnp.stack([costs for costs, _ in problems]),
                                          jnp.stack([rows for _, rows in problems]), matcher=options.matcher)
  segmenter_memory = state.segmenter_memory
  if "logits" in frame:
    sigma = solved[0]
    updated = memory_lib.memory_update(state.segmenter_memory, take_rows(e, sigma),
                                       take_rows(frame["logits"], sigma))
    segmenter_memory = jax.lax.stop_gradient(jnp.where(started, updated, e))
    outputs["indices"] = sigma
  if early:
    assignment = jnp.where(started, sigma, identity)
    if "masks" in frame:
      outputs["matcher_logits"] = take_rows(frame["logits"], sigma)
      outputs["matcher_masks"] = take_rows(frame["masks"], sigma)
  else:
    # The OHM (identity at frame 0, where its cost is solved but unused).
    assignment = jnp.where(started, solved[-1], identity)

  # e) Adaptive anchor (Eq. 7).
  matched = take_rows(anchor_source, assignment)
  similarity = memory_lib.cosine_similarity(matched, tracker.normed(state.memory))
  anchor = memory_lib.adaptive_anchor(state.memory, matched, similarity, options.anchor)
  # At frame 0 the reference reports cos(T_E output, u_0).
  similarity = jnp.where(started, similarity, memory_lib.cosine_similarity(existing[-1], u))

  # f) T_A (Eq. 8) on the anchor (its keys and values from c); at frame 0 its self-mode output.
  anchored = tracker.run_stack("A", u, anchor=anchor, keys_values=keys_values_A)
  all_objects = jnp.where(started, anchored, current_stack)
  final = all_objects[-1]

  # The heads only where needed: T_A's last block (inference needs nothing else; computed alone, so
  # evaluation and training give the same bits); in training the other blocks of T_A and all of T_E's
  # in one call (one matmul against the mask features).
  final_normed = tracker.normed(final)
  logits, masks = tracker.predict_normed(final_normed, frame["mask_features"])
  if train:
    num_aux = all_objects.shape[0] - 1
    extra_logits, extra_masks = tracker.predict(jnp.concatenate([all_objects[:-1], existing]),
                                                frame["mask_features"])
    outputs.update(pred_logits_E=extra_logits[-1], pred_masks_E=extra_masks[-1],
                   aux_logits=extra_logits[:num_aux], aux_masks=extra_masks[:num_aux],
                   aux_logits_E=extra_logits[num_aux:-1], aux_masks_E=extra_masks[num_aux:-1])

  # g) Memory (Eq. 3) and occupancy (Eq. 4); frame 0 starts them from T_A's output.
  memory = jnp.where(started, memory_lib.memory_update(state.memory, final, logits), final)
  occupied = memory_lib.occupancy_update(state.occupied & started, logits)

  new_state = State(memory, segmenter_memory, occupied, jnp.ones_like(started))
  outputs.update(pred_logits=logits, pred_masks=masks, pred_embeds=final_normed,
                 assignment=assignment, similarity=similarity)
  return new_state, outputs
