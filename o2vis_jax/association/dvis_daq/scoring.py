"""DVIS-DAQ's video-level scoring (reference/dvis_daq.md "Video loop and post-processing", MA:704-753) as
host accumulators fed chunk by chunk, and the release of dead sequences between chunks.

Per sequence: the sum of its stored logits (valid AND invalid frames), how many frames it stored, and
whether it stored the video's last frame. A sequence shorter than `noise_frame_num` that ends before the
last frame is noise; the others score softmax(mean logits)[:K], top `max_num` over (sequence x class),
ties broken by creation order (the reference's hub order).

Entries: the released sequences (in release order) then the S slots; `instances` returns the entry index
as 'slot'. Streaming inference keeps its per-slot RLEs in the same order (`release` says which slots it
emptied).
"""

from typing import Any, Dict, List, Tuple

import jax.numpy as jnp
import numpy as np

from o2vis_jax import config_validation
from o2vis_jax.association import base
from o2vis_jax.association.dvis_daq import config as config_lib


class SlotTableFull(config_validation.ConfigError):
  """More sequences than `num_slots` with on_overflow='error' (a config error: the CLIs report it in one
  line naming the field)."""


def init(num_slots: int, num_classes: int) -> Dict[str, Any]:
  return dict(logit_sum=np.zeros((num_slots, num_classes + 1), np.float64),
              stored=np.zeros((num_slots,), np.int64), at_last=np.zeros((num_slots,), bool),
              seq_ids=np.full((num_slots,), -1, np.int64), frames=0, dropped=0,
              retired=dict(logit_sum=[], stored=[], seq_ids=[]))


def update(section, accumulator: Dict[str, Any], outputs: Dict[str, np.ndarray]) -> Dict[str, Any]:
  """Adds a chunk of valid frames: pred_logits [t, S, K+1], slot_valid [t, S], slot_ids [t, S],
  num_dropped [t] (cumulative). Within a chunk a slot holds one sequence."""
  valid = np.asarray(outputs["slot_valid"], bool)
  if valid.shape[0] == 0:
    return accumulator
  logits = np.asarray(outputs["pred_logits"], np.float64)
  acc = dict(accumulator)
  acc["logit_sum"] = acc["logit_sum"] + np.where(valid[..., None], logits, 0).sum(0)
  acc["stored"] = acc["stored"] + valid.sum(0)
  acc["at_last"] = valid[-1].copy()
  ids = np.asarray(outputs["slot_ids"])[-1]
  acc["seq_ids"] = np.where(ids >= 0, ids, acc["seq_ids"])
  acc["frames"] = acc["frames"] + valid.shape[0]
  acc["dropped"] = int(np.asarray(outputs["num_dropped"]).reshape(-1)[-1])
  if acc["dropped"] and section.get("on_overflow", "error") == "error":
    raise SlotTableFull(
        f"config.{config_lib.SECTION}.num_slots={valid.shape[1]}: the sequence table is full, "
        f"{acc['dropped']} new sequence(s) found no free slot by frame {acc['frames']}; raise num_slots "
        f"(or set on_overflow='drop' to count and skip them)")
  return acc


def _entries(accumulator) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(logit_sum [M, K+1], stored [M], at_last [M], seq_ids [M]) of the released sequences then the slots."""
  retired = accumulator["retired"]
  width = accumulator["logit_sum"].shape[1]
  logit_sum = np.concatenate([np.reshape(retired["logit_sum"], (-1, width)), accumulator["logit_sum"]])
  stored = np.concatenate([np.asarray(retired["stored"], np.int64), accumulator["stored"]])
  at_last = np.concatenate([np.zeros(len(retired["stored"]), bool), accumulator["at_last"]])
  seq_ids = np.concatenate([np.asarray(retired["seq_ids"], np.int64), accumulator["seq_ids"]])
  return logit_sum, stored, at_last, seq_ids


def mean_logits(accumulator) -> np.ndarray:
  """Each entry's mean stored logits [M, K+1] (zeros for an entry that stored nothing)."""
  logit_sum, stored, _, _ = _entries(accumulator)
  return logit_sum / np.maximum(stored, 1)[:, None]


def instances(section, accumulator, max_num: int) -> List[Dict[str, Any]]:
  """The top `max_num` (sequence, class) of the kept sequences, best first: [{'score', 'label', 'slot'}]
  with 'slot' the entry index."""
  logit_sum, stored, at_last, seq_ids = _entries(accumulator)
  noise = int(section.get("noise_frame_num", 5))
  kept = (stored > 0) & ((stored >= noise) | at_last)
  # Creation order (the hub's) decides ties: the flat index of the reference is sequence * K + class.
  order = np.flatnonzero(kept)
  order = order[np.argsort(seq_ids[order], kind="stable")]
  if order.size == 0:
    return []
  probs = base.class_probabilities(logit_sum[order] / stored[order][:, None])
  scores, labels, rows = base.score_topk(probs, max_num)
  return [dict(score=float(s), label=int(l), slot=int(order[r])) for s, l, r in zip(scores, labels, rows)]


def release(state, accumulator) -> Tuple[Any, Dict[str, Any], List[int]]:
  """Frees the slots of dead sequences (occupied, not live): their accumulators move to the released
  entries and the slot is unoccupied again, so the device table holds only live sequences and the ones
  that died in the last chunk. Returns (state, accumulator, freed slot indices in increasing order)."""
  occupied, live = np.asarray(state.occupied), np.asarray(state.live)
  dead = np.flatnonzero(occupied & ~live)
  if dead.size == 0:
    return state, accumulator, []
  acc = dict(accumulator)
  retired = {k: list(v) for k, v in acc["retired"].items()}
  for n in dead:
    retired["logit_sum"].append(acc["logit_sum"][n].copy())
    retired["stored"].append(int(acc["stored"][n]))
    retired["seq_ids"].append(int(acc["seq_ids"][n]))
  acc["retired"] = retired
  for name, empty in (("logit_sum", 0.0), ("stored", 0), ("at_last", False), ("seq_ids", -1)):
    acc[name] = acc[name].copy()
    acc[name][dead] = empty
  freed = np.zeros_like(occupied)
  freed[dead] = True
  state = state._replace(occupied=jnp.asarray(occupied & ~freed),
                         seq_id=jnp.where(jnp.asarray(freed), -1, state.seq_id))
  return state, acc, [int(n) for n in dead]
