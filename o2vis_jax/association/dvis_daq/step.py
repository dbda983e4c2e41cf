"""The DVIS-DAQ frame step (reference/dvis_daq.md "Per frame"; TM:606-747 `VideoInstanceCutter.inference`)
on a fixed table of S sequence slots.

The reference keeps a dict of sequences (`video_ins_hub`) and a list of live ids; here the table is the
scan carry (`State`): every slot has `occupied` (holds a sequence, live or dead), `live`, its
invalid-frame counter, the last stored embedding (the track query), the fused position and a ring of the
last `POSITION_HISTORY` (9) positions. A new sequence takes the lowest unoccupied slot, in the reference's
creation order (emergence row order), so within one `track` call slot order is creation order and the
ids are deterministic (`seq_id`, the creation index; the reference draws random ids). Dead sequences keep
their slot (the reference keeps them in the hub until post-processing); streaming inference frees them
between chunks (`release`).

Rows: the tracker runs on [S slot rows; N emergence rows]; the non-live slot rows are masked out of every
attention over rows, so live rows get the reference's values whatever S is.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from o2vis_jax.association.dvis_daq import config as config_lib
from o2vis_jax.association.ops import hungarian as hungarian_lib

# Mask logits of a slot in a frame where it stores nothing (the reference's post-processing fills the
# frames outside [sT, sT + len) with -1e4).
EMPTY_MASK_LOGIT = -1e4


class State(NamedTuple):
  """The sequence table (S slots) and the video-level counters."""
  track_queries: jax.Array     # [S, C] last stored embedding (un-normed last-layer output, TM:252-267)
  fused_pos: jax.Array         # [S, C] similarity-guided fused position (TM:69-99)
  pos_history: jax.Array       # [S, 9, C] ring of the last positions
  pos_count: jax.Array         # [S] int32, positions appended so far
  live: jax.Array              # [S] bool
  occupied: jax.Array          # [S] bool, holds a sequence (live or dead)
  invalid_frames: jax.Array    # [S] int32
  seq_id: jax.Array            # [S] int32, creation index of the slot's sequence (-1: none yet)
  track_gt: jax.Array          # [S] int32, training: the GT the track is matched to (-1: none)
  num_created: jax.Array       # [] int32
  num_dropped: jax.Array       # [] int32, sequences that found no free slot
  started: jax.Array           # [] bool, a valid frame has been seen


def init_state(num_slots: int, hidden_dim: int, dtype) -> State:
  zeros = jnp.zeros((num_slots, hidden_dim), dtype)
  ints = jnp.zeros((num_slots,), jnp.int32)
  false = jnp.zeros((num_slots,), bool)
  return State(track_queries=zeros, fused_pos=zeros,
               pos_history=jnp.zeros((num_slots, config_lib.POSITION_HISTORY, hidden_dim), dtype),
               pos_count=ints, live=false, occupied=false, invalid_frames=ints, seq_id=ints - 1,
               track_gt=ints - 1,
               num_created=jnp.zeros((), jnp.int32), num_dropped=jnp.zeros((), jnp.int32),
               started=jnp.zeros((), bool))


def foreground_score(logits):
  """fg(z) = max_{k<K} softmax(z)_k."""
  return jnp.max(jax.nn.softmax(logits, axis=-1)[..., :-1], axis=-1)


def _normalize(x, eps):
  """x / max(|x|, eps), as F.normalize. The norm is sqrt(max(|x|^2, eps^2)) (the same value): the gradient of
  |x| at a zero row (an empty position-history entry) is 0 / 0, which would reach the parameters as NaN."""
  return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def update_positions(fused, history, count, new_pos, update):
  """`VideoInstanceSequence.update_pos` (TM:69-99) on the slots where `update`: the first position is the
  fused one; later, beta = max(0, mean cos(previous, p)) over at most the 9 previous positions and
  fused <- (1 - beta) fused + beta p. history [S, 9, C] is a ring indexed by count % 9."""
  size = history.shape[1]
  cos = jnp.einsum("shc,sc->sh", _normalize(history, 1e-12), _normalize(new_pos, 1e-12))
  held = jnp.arange(size)[None, :] < jnp.minimum(count, size)[:, None]
  mean = jnp.sum(jnp.where(held, cos, 0), axis=1) / jnp.maximum(jnp.minimum(count, size), 1)
  beta = jnp.maximum(mean, 0)[:, None]
  fused_new = jnp.where((count == 0)[:, None], new_pos, (1 - beta) * fused + beta * new_pos)
  ring = jax.nn.one_hot(count % size, size, dtype=bool)          # [S, 9]
  history_new = jnp.where(ring[..., None], new_pos[:, None, :], history)
  return (jnp.where(update[:, None], fused_new, fused),
          jnp.where(update[:, None, None], history_new, history),
          jnp.where(update, count + 1, count))


def slot_branch_queries(track_queries, live, background, query_feat, matcher):
  """s = query_feat[idx] of `match_with_embeds` (TM:749-759) for rows [TQ; B]: cost 1 - cos (x / (|x| +
  1e-6)); idx = the Hungarian column of each row it assigns, else the row's argmin."""
  rows = jax.lax.stop_gradient(jnp.concatenate([track_queries, background]))
  columns = jax.lax.stop_gradient(query_feat)
  unit = lambda x: x / (jnp.linalg.norm(x, axis=-1, keepdims=True) + 1e-6)
  cost = 1 - unit(rows) @ unit(columns).T
  row_valid = jnp.concatenate([live, jnp.ones(background.shape[:1], bool)])
  assigned = hungarian_lib.hungarian(cost, row_valid, None, matcher=matcher)
  index = jnp.where(assigned >= 0, assigned, jnp.argmin(cost, axis=1))
  return jnp.take(query_feat, index, axis=0), row_valid


def tracker_layers(module, state: State, frame):
  """Tracker 1 on [S slot rows; N emergence rows]: the L layer outputs [L, S+N, C] and the row mask (the
  live slots and every emergence row). Emergence rows are placed by the segmenter's masks (A = pos(pool(
  S_t, F_t))), which are also the keys' position. Frame 0 (not started): the rows are e_0, no positions."""
  e, features, started = frame["embeds"], frame["mask_features"], state.started
  anchors = module.position(frame["masks"], features)                      # A (TM:641)
  emergence = jnp.where(started, jnp.broadcast_to(module.emergence_query(), e.shape).astype(e.dtype), e)
  queries = jnp.concatenate([state.track_queries, emergence])
  query_pos = jnp.where(started, jnp.concatenate([state.fused_pos, anchors]), 0).astype(e.dtype)
  memory_pos = jnp.where(started, anchors, 0).astype(e.dtype)
  row_valid = jnp.concatenate([state.live, jnp.ones(e.shape[:1], bool)])
  return module.run_tracker(queries, query_pos, e, memory_pos, row_valid), row_valid


def run_slot_branch(module, options: config_lib.Options, state: State, frame, query_feat, memory_mask=None):
  """Tracker 2 (TM:651-662): the L layer outputs [L, S+B, C] of the slot branch."""
  background = module.background_slots().astype(state.track_queries.dtype)
  slots, row_valid = slot_branch_queries(state.track_queries, state.live, background, query_feat,
                                         options.matcher)
  slot_pos = jnp.concatenate([state.track_queries, background])
  slot_query = jnp.concatenate([state.fused_pos, background])
  return module.run_slots(slots, frame["embeds"], slot_pos, slot_query, row_valid, memory_mask)


def inference_step(module, options: config_lib.Options, query_feat, state: State, frame):
  """One frame of `VideoInstanceCutter.inference` -> (state, outputs). Outputs per slot: the stored
  class logits [S, K+1] and mask logits [S, h, w] (EMPTY_MASK_LOGIT where nothing is stored), slot_valid
  (the sequence stored this frame: a valid frame, or an invalid one before its kick-out), slot_appearance
  (a valid frame) and slot_ids (the slot's sequence, -1 for none)."""
  num_slots = state.live.shape[0]
  started = state.started
  layers, _ = tracker_layers(module, state, frame)
  projected = module.project_features(frame["mask_features"])
  logits, masks = module.predict(layers[-1], projected)
  last = layers[-1]
  positions = module.position(masks, frame["mask_features"])           # E (TM:677-678)
  foreground = foreground_score(logits)
  thr = options.inference_select_threshold

  # Validity (TM:685-699): tracks (YTVIS: the tracker's score; OVIS: and the slot branch's), emergence
  # rows by the tracker's score; at frame 0 the SEGMENTER's score (MA:515-516).
  track_valid = foreground[:num_slots] > thr
  outputs = {}
  if options.ovis_infer:   # the slot branch is computed but unused otherwise: not computed here
    slot_layers = run_slot_branch(module, options, state, frame, query_feat)
    slot_logits = module.predict(slot_layers[-1], projected)[0]
    track_valid &= foreground_score(slot_logits[:num_slots]) > options.keep_threshold
  new_valid = jnp.where(started, foreground[num_slots:] > thr,
                        foreground_score(frame["logits"]) > options.aux_inference_select_threshold)

  # Tracks (TM:724-744): an invalid frame counts; at kick_out_frame_num the sequence dies (stores nothing).
  live = state.live & started
  invalid_frames = jnp.where(track_valid, 0, state.invalid_frames + 1)
  kicked = live & ~track_valid & (invalid_frames >= options.kick_out_frame_num)
  stays = live & ~kicked

  # Births (TM:711-723): valid emergence rows in row order take the lowest unoccupied slots.
  free = ~state.occupied
  rank = jnp.cumsum(new_valid.astype(jnp.int32)) - 1
  free_slots = jnp.argsort(jnp.where(free, 0, num_slots) + jnp.arange(num_slots))
  born_row = new_valid & (rank < jnp.sum(free))
  target = jnp.where(born_row, free_slots[jnp.clip(rank, 0, num_slots - 1)], num_slots)
  source = jnp.full((num_slots,), -1, jnp.int32).at[target].set(
      jnp.arange(new_valid.shape[0], dtype=jnp.int32), mode="drop")
  born = source >= 0
  row = jnp.where(born, num_slots + source, jnp.arange(num_slots))

  stored = stays | born
  appearance = (stays & track_valid) | born
  pos_count = jnp.where(born, 0, state.pos_count)
  fused_pos, pos_history, pos_count = update_positions(state.fused_pos, state.pos_history, pos_count,
                                                       jnp.take(positions, row, axis=0), appearance)
  seq_id = jnp.where(born, state.num_created + jnp.take(rank, jnp.maximum(source, 0)), state.seq_id)
  new_state = State(
      track_queries=jnp.where(stored[:, None], jnp.take(last, row, axis=0), state.track_queries),
      fused_pos=fused_pos, pos_history=pos_history, pos_count=pos_count,
      live=stays | born, occupied=state.occupied | born,
      invalid_frames=jnp.where(born, 0, jnp.where(live, invalid_frames, state.invalid_frames)),
      seq_id=seq_id, track_gt=state.track_gt,
      num_created=state.num_created + jnp.sum(born, dtype=jnp.int32),
      num_dropped=state.num_dropped + jnp.sum(new_valid & ~born_row, dtype=jnp.int32),
      started=jnp.ones_like(started))

  outputs.update(
      pred_logits=jnp.where(stored[:, None], jnp.take(logits, row, axis=0), 0),
      pred_masks=jnp.where(stored[:, None, None], jnp.take(masks, row, axis=0), EMPTY_MASK_LOGIT),
      slot_valid=stored, slot_appearance=appearance, slot_ids=jnp.where(new_state.occupied, seq_id, -1))
  return new_state, outputs
