"""The O2VIS frame step as a pure scan body, and the functions that run it over a video.

The Instance Occupancy Memory is the scan carry (`Carry`): slot queries M (tracker space), the
segmenter-space memory S, the occupancy bits O and `started`. One body serves frame 0 and later frames
(selected by `started`, REFERENCE.md sections 4-5); a padded frame (`valid` False) leaves the carry
unchanged, so fixed-size chunks of frames run any video length with one compilation, and running a
video chunk by chunk (passing the carry on) equals running it in one go.

Entry points:
  * `track(config, params, embeds, embeds_without_norm, mask_features, ...)`: a whole clip or video.
  * `init_carry(...)` + `run_chunk(config, params, carry, frames)`: chunked video inference.
  * `resolve_options(config.tracker)`: the single switches behind `semantics` (REFERENCE.md section 13).
Shapes: N slots = segmenter queries, C channels, K classes; an optional leading batch axis of videos.
"""

import dataclasses
from typing import Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp

from o2vis_jax import association, matching, te_only
from o2vis_jax.models import tracker as tracker_lib

SEMANTICS = ("reference", "paper")
CURRENT_FEATURES = ("tracker", "segmenter")
MODES = ("trackers", "baseline", "te_only")  # te_only: Table 3(a) row 6, o2vis_jax/te_only.py.
BASELINE_MATCHING = ("hungarian", "ohm")


class Carry(NamedTuple):
  """The scan carry. memory [..., N, C] (M; for the baselines their memory), segmenter_memory
  [..., N, C] (S), occupied bool [..., N] (O), started bool [...] (a valid frame has been seen)."""
  memory: jax.Array
  segmenter_memory: jax.Array
  occupied: jax.Array
  started: jax.Array


@dataclasses.dataclass(frozen=True)
class Options:
  """The resolved switches of `config.tracker` (static: they select code paths)."""
  mode: str = "trackers"
  anchor: str = "adaptive"
  current_features: str = "tracker"
  early_matching: bool = False
  matcher: str = "host"
  baseline_memory: str = "iom"
  baseline_matching: str = "ohm"


def _check(name, value, allowed):
  if value not in allowed:
    raise ValueError(f"config.tracker.{name} must be one of {allowed}, got {value!r}")
  return value


def resolve_options(tracker_config) -> Options:
  """Fills the switches left at None from `semantics` (table in configs/parts/tracker.py)."""
  semantics = _check("semantics", tracker_config.semantics, SEMANTICS)
  paper = semantics == "paper"
  pick = lambda name, reference, paper_value: (
      tracker_config.get(name) if tracker_config.get(name) is not None
      else (paper_value if paper else reference))
  baseline = tracker_config.get("baseline", {})
  mode = _check("mode", tracker_config.get("mode", "trackers"), MODES)
  return Options(
      mode=mode,
      anchor=_check("anchor", pick("anchor", "adaptive", "adaptive_paper"), association.ANCHORS),
      current_features=_check("current_features", pick("current_features", "tracker", "segmenter"),
                              CURRENT_FEATURES),
      # The T_E-only reference always trains with early matching (REFERENCE.md 12).
      early_matching=bool(pick("early_matching", mode == "te_only", True)),
      matcher=_check("matcher", tracker_config.matcher, matching.MATCHERS),
      baseline_memory=_check("baseline.memory", baseline.get("memory", "iom"),
                             association.BASELINE_MEMORIES),
      baseline_matching=_check("baseline.matching", baseline.get("matching", "ohm"), BASELINE_MATCHING))


def init_carry(num_queries: int, hidden_dim: int, dtype=jnp.float32, batch_shape=()) -> Carry:
  """The empty memory before a video's first frame (`batch_shape` = (B,) for a batch of videos)."""
  zeros = jnp.zeros(tuple(batch_shape) + (num_queries, hidden_dim), dtype)
  return Carry(memory=zeros, segmenter_memory=zeros,
               occupied=jnp.zeros(tuple(batch_shape) + (num_queries,), bool),
               started=jnp.zeros(tuple(batch_shape), bool))


def _take_rows(x, index):
  return jnp.take(x, index, axis=0)


def _keep_if_padded(valid, new_carry: Carry, carry: Carry) -> Carry:
  return jax.tree.map(lambda new, old: jnp.where(valid, new, old), new_carry, carry)


def tracker_step(tracker: tracker_lib.Tracker, options: Options, train: bool, carry: Carry,
                 frame: Dict[str, jax.Array]):
  """One frame of the O2VIS trackers (REFERENCE.md sections 4-5), for `lax.scan`.

  tracker: a bound `Tracker`. frame: embeds e_t [N, C], embeds_without_norm u_t [N, C], mask_features
  [h, w, C], valid bool [], optionally segmenter_logits [N, K+1] (then S and the segmenter-space
  indices sigma_t are tracked; needed for early matching).
  """
  u, e, started = frame["embeds_without_norm"], frame["embeds"], carry.started
  num_slots = u.shape[0]
  identity = jnp.arange(num_slots, dtype=jnp.int32)
  outputs = {}

  # a) Segmenter-space association: sigma_t = Hung(S, e_t) (at frame 0 Hung(e_0, e_0)), S by Eq. 3.
  segmenter_memory = carry.segmenter_memory
  if "segmenter_logits" in frame:
    reference_rows = jnp.where(started, carry.segmenter_memory, e)
    sigma = matching.hungarian(matching.cosine_cost(reference_rows, e), matcher=options.matcher)
    updated = association.memory_update(carry.segmenter_memory, _take_rows(e, sigma),
                                        _take_rows(frame["segmenter_logits"], sigma))
    segmenter_memory = jax.lax.stop_gradient(jnp.where(started, updated, e))
    outputs["indices"] = sigma
  elif train and options.early_matching:
    raise ValueError("video_model: early_matching needs frame['segmenter_logits'] (REFERENCE.md 7.4)")

  # b) T_E (Eq. 5): anchored on the memory, self mode at frame 0.
  existing = tracker.run_stack("E", u, anchor=carry.memory, use_anchor=started)
  # c) Current objects: T_A in self mode on the frame (also T_A's output at frame 0).
  current_stack = tracker.run_stack("A", u)
  current = current_stack[-1]

  # d) OHM (Eq. 6) between LN_d(T_E) and the current objects; identity at frame 0.
  slots = tracker.normed(existing[-1])
  if options.current_features == "tracker":
    ohm_current, anchor_source = tracker.normed(current), current
  else:
    ohm_current, anchor_source = e, u
  if train and options.early_matching:
    assignment = jnp.where(started, sigma, identity)
  else:
    assignment = jax.lax.cond(
        started,
        lambda: matching.occupancy_guided_matching(slots, ohm_current, carry.occupied,
                                                   matcher=options.matcher),
        lambda: identity)

  # e) Adaptive anchor (Eq. 7).
  matched = _take_rows(anchor_source, assignment)
  similarity = association.cosine_similarity(matched, tracker.normed(carry.memory))
  anchor = association.adaptive_anchor(carry.memory, matched, similarity, options.anchor)
  # At frame 0 the reference reports cos(T_E output, u_0).
  similarity = jnp.where(started, similarity, association.cosine_similarity(existing[-1], u))

  # f) T_A (Eq. 8) on the anchor; at frame 0 its self-mode output.
  anchored = tracker.run_stack("A", u, anchor=anchor)
  all_objects = jnp.where(started, anchored, current_stack)
  final = all_objects[-1]

  # g) Memory (Eq. 3) and occupancy (Eq. 4); frame 0 starts them from T_A's output.
  logits, masks = tracker.predict(final, frame["mask_features"])
  memory = jnp.where(started, association.memory_update(carry.memory, final, logits), final)
  occupied = association.occupancy_update(carry.occupied & started, logits)

  new_carry = _keep_if_padded(frame["valid"], Carry(memory, segmenter_memory, occupied,
                                                    jnp.ones_like(started)), carry)
  outputs.update(pred_logits=logits, pred_masks=masks, pred_embeds=tracker.normed(final),
                 memory=new_carry.memory, occupied=new_carry.occupied, assignment=assignment,
                 similarity=similarity)
  if train:
    outputs["pred_logits_E"], outputs["pred_masks_E"] = tracker.predict(existing[-1], frame["mask_features"])
    outputs["aux_logits"], outputs["aux_masks"] = tracker.predict(all_objects[:-1], frame["mask_features"])
    outputs["aux_logits_E"], outputs["aux_masks_E"] = tracker.predict(existing[:-1], frame["mask_features"])
  return new_carry, outputs


def baseline_step(options: Options, carry: Carry, frame: Dict[str, jax.Array]):
  """One frame of the training-free baselines on segmenter outputs (REFERENCE.md section 11).

  frame: embeds e_t [N, C], segmenter_logits z_t [N, K+1], segmenter_masks [N, h, w], valid.
  Outputs the segmenter predictions re-ordered into slots by the matching.
  """
  e, started = frame["embeds"], carry.started
  use_ohm = options.baseline_matching == "ohm"
  identity = jnp.arange(e.shape[0], dtype=jnp.int32)
  occupied_before = carry.occupied & started
  # Plain cosine (no eps); with nothing occupied OHM is the plain Hungarian, as in the reference.
  assignment = jax.lax.cond(
      started,
      lambda: matching.occupancy_guided_matching(carry.memory, e, occupied_before,
                                                 matcher=options.matcher, norm_eps=0.0),
      lambda: identity)
  matched = _take_rows(e, assignment)
  logits = _take_rows(frame["segmenter_logits"], assignment)
  masks = _take_rows(frame["segmenter_masks"], assignment)
  memory = jnp.where(started, association.baseline_memory_update(carry.memory, matched, logits,
                                                                 options.baseline_memory), matched)
  if use_ohm:
    occupied = association.occupancy_update(occupied_before, logits, masks)
  else:
    occupied = occupied_before
  new_carry = _keep_if_padded(frame["valid"], Carry(memory, carry.segmenter_memory, occupied,
                                                    jnp.ones_like(started)), carry)
  return new_carry, dict(pred_logits=logits, pred_masks=masks, memory=new_carry.memory,
                         occupied=new_carry.occupied, assignment=assignment)


def run_chunk(config, params, carry: Carry, frames: Dict[str, jax.Array], train: bool = False):
  """Runs the step of `config.tracker.mode` over a chunk of frames, starting from `carry`.

  frames: dict of per-frame arrays with a leading time axis [T, ...] (or [B, T, ...] when the carry
  has a batch axis, i.e. `carry.started.shape == (B,)`): embeds, embeds_without_norm, mask_features,
  valid (bool [T]), and optionally segmenter_logits / segmenter_masks (see the step functions).
  Returns (final carry, outputs stacked over time). Chunking is exact: `run_chunk(c1, frames[:k])`
  followed by `run_chunk(c2, frames[k:])` equals one call on all frames; padded frames change nothing.
  For the baselines `params` is unused (may be None).
  """
  options = resolve_options(config.tracker)
  if options.mode == "baseline":
    step = lambda c, f: baseline_step(options, c, f)
  elif options.mode == "te_only":
    tracker_e = te_only.build(config).bind({"params": params})
    step = lambda c, f: te_only.te_only_step(tracker_e, options, train, c, f)
  else:
    tracker = tracker_lib.build(config).bind({"params": params})
    step = lambda c, f: tracker_step(tracker, options, train, c, f)
  scan = lambda c, f: jax.lax.scan(step, c, f)
  if carry.started.ndim == 1:
    scan = jax.vmap(scan)
  elif carry.started.ndim != 0:
    raise ValueError(f"video_model.run_chunk: carry.started must be [] or [B], got {carry.started.shape}")
  return scan(carry, frames)


def carry_dtype(config, params, inputs_dtype):
  """The dtype of the tracker's outputs (= of the memory) for inputs of `inputs_dtype`."""
  if config.tracker.get("dtype") is not None:
    return jnp.dtype(config.tracker.dtype)
  leaves = [] if params is None else jax.tree.leaves(params)
  return jnp.result_type(inputs_dtype, *[leaf.dtype for leaf in leaves])


def track(config, params, embeds, embeds_without_norm=None, mask_features=None,
          frame_valid: Optional[jax.Array] = None, segmenter_logits=None, segmenter_masks=None,
          train: bool = False) -> Dict[str, jax.Array]:
  """Runs the trackers (or, with `config.tracker.mode='baseline'`, the training-free baseline) over
  precomputed segmenter outputs of a clip or video.

  Args (optional leading batch axis B on all):
    embeds: e_t [T, N, C] (normed segmenter queries, `pred_embds`).
    embeds_without_norm: u_t [T, N, C] (`pred_embds_without_norm`); trackers only.
    mask_features: [T, h, w, C]; trackers only.
    frame_valid: bool [T]; False for padding frames (they leave the memory unchanged).
    segmenter_logits: z_t [T, N, K+1]; optional for the trackers (enables S / `indices`), required for
      the baselines, as is segmenter_masks [T, N, h, w].
    train: also return T_E predictions and the per-layer aux predictions.
  Returns a dict of per-frame arrays [(B,) T, ...]: pred_logits [N, K+1], pred_masks [N, h, w],
  memory [N, C] (after the frame), occupied [N], assignment [N] (slot n took current object
  assignment[n]; identity at frame 0), similarity [N] (the anchor's s), pred_embeds [N, C] (LN_d of
  T_A's output), indices [N] (sigma_t, with segmenter_logits); with train=True also pred_logits_E /
  pred_masks_E, aux_logits / aux_masks [L-1, ...] (T_A layers 0..L-2) and aux_logits_E / aux_masks_E.
  The baselines return pred_logits / pred_masks (segmenter outputs re-ordered into slots), memory,
  occupied, assignment.
  """
  options = resolve_options(config.tracker)
  embeds = jnp.asarray(embeds)
  batch_shape = embeds.shape[:-3]
  num_frames, num_queries, hidden_dim = embeds.shape[-3:]
  if frame_valid is None:
    frame_valid = jnp.ones(batch_shape + (num_frames,), bool)
  frames = dict(embeds=embeds, valid=jnp.asarray(frame_valid, bool))
  if options.mode == "baseline":
    if segmenter_logits is None or segmenter_masks is None:
      raise ValueError("video_model.track: mode='baseline' needs segmenter_logits and segmenter_masks")
    frames.update(segmenter_logits=segmenter_logits, segmenter_masks=segmenter_masks)
    dtype = embeds.dtype
  else:
    if embeds_without_norm is None or mask_features is None:
      raise ValueError("video_model.track: the trackers need embeds_without_norm and mask_features")
    frames.update(embeds_without_norm=embeds_without_norm, mask_features=mask_features)
    if segmenter_logits is not None:
      frames["segmenter_logits"] = segmenter_logits
    if options.mode == "te_only":
      if segmenter_logits is None or segmenter_masks is None:
        raise ValueError("video_model.track: mode='te_only' needs segmenter_logits and segmenter_masks")
      frames["segmenter_masks"] = segmenter_masks
    dtype = carry_dtype(config, params, jnp.asarray(embeds_without_norm).dtype)
  for name, value in frames.items():
    if value.shape[:len(batch_shape) + 1] != batch_shape + (num_frames,):
      raise ValueError(f"video_model.track: {name} has shape {value.shape}, expected leading axes "
                       f"{batch_shape + (num_frames,)} like embeds")
  frames["embeds"] = embeds.astype(dtype)
  carry = init_carry(num_queries, hidden_dim, dtype, batch_shape)
  _, outputs = run_chunk(config, params, carry, frames, train=train)
  return outputs
