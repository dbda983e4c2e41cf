"""The T_E-only model (`o2vis_te_only`) of Table 3(a) row 6 (reference `LOMM_Tracker_E` /
`LOMM_online_E`, REFERENCE.md 12).

Selected by `config.association.method = 'o2vis_te_only'`; it reads O2VIS's section `config.tracker`. There is no T_A: T_E tracks the objects, the OHM
assignment re-orders the frozen segmenter's predictions, and those re-ordered predictions are the
model's outputs. Per frame t (e_t normed / u_t un-normed segmenter queries, z_t its logits, masks_t its
mask logits, f_t = 1 - softmax(z_t)[K]):

  frame 0:   S := e_0;  E := SelfRef_E(u_0);  pi := identity;  O := fg(z_0, masks_0)
  t >= 1:    E := Anchor_E(S; u_t)                                   (query ref_proj_E(S) at every layer)
             pi := Hung(S, e_t)                              training (early matching: always in the
                                                             reference LOMM_online_E; off only if
                                                             config.tracker.early_matching=False)
             pi := OHM(LN_d(E_last), LN_d(SelfRef_E(u_t)), O)  otherwise (Eq. 6, two stages)
             O := O or fg(z_t[pi], masks_t[pi])              (Eq. 4 with the non-empty-mask test)
             S := (1 - f_t[pi]) S + f_t[pi] e_t[pi]           (Eq. 3 with the segmenter's fg prob)
  outputs:   pred_logits = z_t[pi], pred_masks = masks_t[pi], pred_embeds = u_t[pi]; in training
             T_E's predictions pred(E_j) (`_E` keys) for the `_E` losses.

fg(z, m) = (argmax z != no-object) and (some mask logit > 0). SelfRef / Anchor / Hung / OHM are those of
REFERENCE.md section 2 with T_E's own query projection `ref_proj_E`. The reference builds T_E with
MODEL.TRACKER.DECODER_LAYERS = 6 layers here (not 6 // 2): `configs/ablations_r50.py:a6_te_only` sets
`config.tracker.num_layers = 6`.
Parameter names (`transformer_{cross,self}_attention_layers_E_j`, `transformer_ffn_layers_E_j`,
`ref_proj_E`, `decoder_norm`, `class_embed`, `mask_embed`) follow the reference module, so weight import
is `convert.te_only_from_reference` (`tracker_E.*` keys). The Flax module is `models.tracker.TrackerE`.

The frame 0 assignment is the identity; the reference uses Hung(e_0, e_0), which is the identity unless
two rows of e_0 are parallel.
"""

from typing import Dict, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from o2vis_jax.association import base
from o2vis_jax.association.o2vis import ReferringTrackerMethod
from o2vis_jax.association.o2vis import config as o2vis_config
from o2vis_jax.association.o2vis import loss as o2vis_loss
from o2vis_jax.association.o2vis import step as o2vis_step
from o2vis_jax.association.o2vis_te_only import convert, loss as loss_lib
from o2vis_jax.association.ops import hungarian as hungarian_lib
from o2vis_jax.association.ops import memory as memory_lib
from o2vis_jax.models import tracker as tracker_lib


class State(NamedTuple):
  """memory [N, C]: S (normed segmenter queries); occupied bool [N]; started bool []."""
  memory: jax.Array
  occupied: jax.Array
  started: jax.Array


def te_only_step(tracker: tracker_lib.TrackerE, matcher: str, train: bool, early: bool, state: State,
                 frame: Dict[str, jax.Array]):
  """One frame of the T_E-only model (module docstring).

  frame: embeds e_t [N, C], embeds_without_norm u_t [N, C], mask_features [h, w, C], logits z_t [N, K+1],
  masks [N, h, w]. early: training with early matching (Hung(S, e_t) instead of OHM).
  """
  u, e, started = frame["embeds_without_norm"], frame["embeds"], state.started
  identity = jnp.arange(u.shape[0], dtype=jnp.int32)
  memory = state.memory
  # Eq. 5: T_E queried by the memory; at frame 0 in self mode on the frame.
  if early:
    existing = tracker.run_stack(u, anchor=memory, use_anchor=started)
    # Early matching (Eq. 9): segmenter-space Hungarian against the memory S.
    match = lambda: hungarian_lib.hungarian(hungarian_lib.cosine_cost(memory, e), matcher=matcher)
  else:
    own = tracker.run_stack(u)  # SelfRef_E(u_t): T_E at frame 0, the current objects later.
    existing = jnp.where(started, tracker.run_stack(u, anchor=memory), own)
    # OHM (Eq. 6) between LN_d(T_E) and LN_d(SelfRef_E(u_t)).
    match = lambda: hungarian_lib.occupancy_guided_matching(
        tracker.normed(existing[-1]), tracker.normed(own[-1]), state.occupied, matcher=matcher)
  assignment = jax.lax.cond(started, match, lambda: identity)

  take = lambda x: o2vis_step.take_rows(x, assignment)
  logits, masks = take(frame["logits"]), take(frame["masks"])
  occupied = memory_lib.occupancy_update(state.occupied & started, logits, masks)
  memory = jnp.where(started, memory_lib.memory_update(memory, take(e), logits), e)
  new_state = State(memory=jax.lax.stop_gradient(memory), occupied=occupied,
                    started=jnp.ones_like(started))
  outputs = dict(pred_logits=logits, pred_masks=masks, pred_embeds=take(u), assignment=assignment,
                 indices=assignment)
  if train:
    outputs["pred_logits_E"], outputs["pred_masks_E"] = tracker.predict(existing[-1], frame["mask_features"])
    outputs["aux_logits_E"], outputs["aux_masks_E"] = tracker.predict(existing[:-1], frame["mask_features"])
  return new_state, outputs


class O2VISTEOnly(ReferringTrackerMethod):
  """T_E alone re-ordering the segmenter's predictions (Table 3(a) row 6)."""
  name = "o2vis_te_only"
  description = "the T_E-only model of Table 3(a) row 6"
  module_class = tracker_lib.TrackerE
  # The T_E-only reference always trains with early matching (REFERENCE.md 12); one phase, so it is
  # never switched off half-way.
  early_matching_default = True
  required_inputs = ("embeds", "embeds_without_norm", "mask_features", "logits", "masks")
  checkpoint_prefixes = (convert.TE_ONLY_PREFIX,)

  def default_config(self) -> ml_collections.ConfigDict:
    section = o2vis_config.default_config()
    section.num_layers = 6      # the reference builds T_E with DECODER_LAYERS = 6 here.
    return section

  def init_state(self, config, *, num_queries, hidden_dim, dtype):
    return State(memory=jnp.zeros((num_queries, hidden_dim), dtype),
                 occupied=jnp.zeros((num_queries,), bool), started=jnp.zeros((), bool))

  def step(self, config, params, state, frame, *, train):
    options = self.options(config)
    return te_only_step(self.bound_module(config, params, frame), options.matcher, train,
                        train and options.early_matching, state, frame)

  def loss(self, config, key, outputs, targets, num_masks, *, phase):
    del phase
    return loss_lib.te_only_criterion(key, o2vis_loss.tracker_outputs_from_track(outputs), targets,
                                      num_masks, self.loss_config(config))

  def from_reference(self, state_dict, num_heads):
    return convert.te_only_from_reference(state_dict, num_heads)


METHOD = base.register(O2VISTEOnly())
