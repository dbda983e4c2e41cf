"""The T_E-only model of Table 3(a) row 6 (reference `LOMM_Tracker_E` / `LOMM_online_E`, REFERENCE.md 12).

Selected by `config.tracker.mode = 'te_only'`. There is no T_A: T_E tracks the objects, the OHM
assignment re-orders the frozen segmenter's predictions, and those re-ordered predictions are the
model's outputs. Per frame t (e_t normed / u_t un-normed segmenter queries, z_t its logits, masks_t its
mask logits, f_t = 1 - softmax(z_t)[K]):

  frame 0:   S := e_0;  E := SelfRef_E(u_0);  pi := identity;  O := fg(z_0, masks_0)
  t >= 1:    E := Anchor_E(S; u_t)                                   (query ref_proj_E(S) at every layer)
             pi := Hung(S, e_t)                              training with early matching (always in
                                                             the reference: LOMM_online_E)
             pi := OHM(LN_d(E_last), LN_d(SelfRef_E(u_t)), O)  otherwise (Eq. 6, two stages)
             O := O or fg(z_t[pi], masks_t[pi])              (Eq. 4 with the non-empty-mask test)
             S := (1 - f_t[pi]) S + f_t[pi] e_t[pi]           (Eq. 3 with the segmenter's fg prob)
  outputs:   pred_logits = z_t[pi], pred_masks = masks_t[pi], pred_embeds = u_t[pi]; in training
             T_E's predictions pred(E_j) (`_E` keys) for the `_E` losses.

fg(z, m) = (argmax z != no-object) and (some mask logit > 0). SelfRef / Anchor / Hung / OHM are those of
REFERENCE.md section 2 with T_E's own query projection `ref_proj_E`. The reference builds T_E with
MODEL.TRACKER.DECODER_LAYERS = 6 layers here (not 6 // 2): set `config.tracker.num_layers = 6`.
Parameter names (`transformer_{cross,self}_attention_layers_E_j`, `transformer_ffn_layers_E_j`,
`ref_proj_E`, `decoder_norm`, `class_embed`, `mask_embed`) follow the reference module, so weight import
is `checkpoint_conversion.tracker.te_only_from_reference`.

The frame 0 assignment is the identity; the reference uses Hung(e_0, e_0), which is the identity unless
two rows of e_0 are parallel.
"""

from typing import Dict, Optional

import jax
import jax.numpy as jnp

from o2vis_jax import association, matching
from o2vis_jax.models import tracker as tracker_lib


class TrackerE(tracker_lib.ReferringTrackerBase):
  """T_E with its own query projection `ref_proj_E` and the heads. Use through `bind`."""
  num_layers: int = 6

  def setup(self):
    (self.transformer_cross_attention_layers_E, self.transformer_self_attention_layers_E,
     self.transformer_ffn_layers_E) = self.referring_blocks()
    self.ref_proj_E = self.query_projection()
    self.setup_heads()

  def run_stack(self, kv: jax.Array, anchor: Optional[jax.Array] = None, use_anchor=None) -> jax.Array:
    """SelfRef_E(kv) (anchor None) or Anchor_E(anchor; kv): the L layer outputs [L, N, C].

    use_anchor: optional traced bool choosing anchor (True) or self mode (False) at run time.
    """
    return tracker_lib.run_referring_stack(
        self.transformer_cross_attention_layers_E, self.transformer_self_attention_layers_E,
        self.transformer_ffn_layers_E, self.ref_proj_E, kv, anchor, use_anchor)

  def __call__(self, kv, mask_features):
    """Touches every parameter (for `init`)."""
    return self.predict(self.run_stack(kv)[-1], mask_features)


def build(config) -> TrackerE:
  """T_E of `config` (`config.tracker.num_layers` layers; 6 in the reference T_E-only model)."""
  return TrackerE.from_config(config)


def init_params(config, rng: jax.Array):
  """Fresh T_E params: Xavier-uniform kernels, zero biases, unit norm scales (`tracker.xavier_params`)."""
  return tracker_lib.xavier_params(build(config), rng, config.model.hidden_dim)


def te_only_step(tracker: TrackerE, options, train: bool, carry, frame: Dict[str, jax.Array]):
  """One frame of the T_E-only model (module docstring), for `lax.scan`.

  carry: `video_model.Carry`; its `memory` is S (normed segmenter queries), `segmenter_memory` unused.
  frame: embeds e_t [N, C], embeds_without_norm u_t [N, C], mask_features [h, w, C], segmenter_logits
  z_t [N, K+1], segmenter_masks [N, h, w], valid bool [].
  """
  u, e, started = frame["embeds_without_norm"], frame["embeds"], carry.started
  identity = jnp.arange(u.shape[0], dtype=jnp.int32)
  memory = carry.memory
  # Eq. 5: T_E queried by the memory; at frame 0 in self mode on the frame.
  if train and options.early_matching:
    existing = tracker.run_stack(u, anchor=memory, use_anchor=started)
    # Early matching (Eq. 9): segmenter-space Hungarian against the memory S.
    match = lambda: matching.hungarian(matching.cosine_cost(memory, e), matcher=options.matcher)
  else:
    own = tracker.run_stack(u)  # SelfRef_E(u_t): T_E at frame 0, the current objects later.
    existing = jnp.where(started, tracker.run_stack(u, anchor=memory), own)
    # OHM (Eq. 6) between LN_d(T_E) and LN_d(SelfRef_E(u_t)).
    match = lambda: matching.occupancy_guided_matching(
        tracker.normed(existing[-1]), tracker.normed(own[-1]), carry.occupied, matcher=options.matcher)
  assignment = jax.lax.cond(started, match, lambda: identity)

  take = lambda x: jnp.take(x, assignment, axis=0)
  logits, masks = take(frame["segmenter_logits"]), take(frame["segmenter_masks"])
  occupied = association.occupancy_update(carry.occupied & started, logits, masks)
  memory = jnp.where(started, association.memory_update(memory, take(e), logits), e)
  new_carry = carry._replace(memory=jax.lax.stop_gradient(memory), occupied=occupied,
                             started=jnp.ones_like(started))
  new_carry = jax.tree.map(lambda new, old: jnp.where(frame["valid"], new, old), new_carry, carry)
  outputs = dict(pred_logits=logits, pred_masks=masks, pred_embeds=take(u), memory=new_carry.memory,
                 occupied=new_carry.occupied, assignment=assignment, indices=assignment)
  if train:
    outputs["pred_logits_E"], outputs["pred_masks_E"] = tracker.predict(existing[-1], frame["mask_features"])
    outputs["aux_logits_E"], outputs["aux_masks_E"] = tracker.predict(existing[:-1], frame["mask_features"])
  return new_carry, outputs
