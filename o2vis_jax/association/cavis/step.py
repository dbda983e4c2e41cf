"""The CAVIS frame step (shared/reference/cavis.md sections 1-2): the context-aware ReID head on the frame's
segmenter outputs, then one frame of CAIT.

State (the scan carry): the previous frame's segmenter features in tracker order `last_frame_embeds`
[N, 2C] and the aligned context-aware query `last_ctx_aware_query` [N, 2C]. One body serves frame 0 and
later frames (selected by `started`, static shapes, one program):

  f_t = [e_t | r_t] (r_t the ReID embedding), key K = E(f_t), values u_t, E = ctx_query_embed;
  sigma_t = H(f_t, f_t) at frame 0, H(last_frame_embeds, f_t) later, in the code's orientation: for every
    CURRENT index j the REFERENCE index matched to it, then used to index the CURRENT set (M:303-316);
  frame 0:  x_1 = Block_0(e_0, E(f_0), K, u_0); x_{j+1} = Block_j(x_j, E([x_j | r_0]), K, u_0);
  t >= 1:   Q = E(last_ctx_aware_query) for every layer; x_1 = Block_0(e_t[sigma_t], Q, K, u_t), ...;
  after:    rho_t = H(x_L, u_t) (same orientation); last_ctx_aware_query = [x_L | r_t[rho_t]];
            last_frame_embeds = f_0 at frame 0 (unpermuted, as the code), f_t[sigma_t] later.
"""

from typing import Dict, NamedTuple

import jax
import jax.numpy as jnp

from o2vis_jax.association.ops import hungarian as hungarian_lib
from o2vis_jax.models import cavis as cavis_model


class State(NamedTuple):
  """last_frame_embeds [N, 2C], last_ctx_aware_query [N, 2C], started bool []."""
  last_frame_embeds: jax.Array
  last_ctx_aware_query: jax.Array
  started: jax.Array


def init_state(num_queries: int, hidden_dim: int, dtype) -> State:
  zeros = jnp.zeros((num_queries, 2 * hidden_dim), dtype)
  return State(last_frame_embeds=zeros, last_ctx_aware_query=zeros, started=jnp.zeros((), bool))


def code_orientation_matching(reference: jax.Array, current: jax.Array, matcher: str) -> jax.Array:
  """The authors' `match_embds(reference, current)`: linear_sum_assignment of (1 - cos)^T, i.e. for every
  CURRENT index j the REFERENCE index matched to it [N] (cosine with x / (||x|| + 1e-6), NaN -> 0)."""
  return hungarian_lib.hungarian(hungarian_lib.cosine_cost(current, reference), matcher=matcher)


def reid_features(model: cavis_model.CAVIS, filter_size: int, frame: Dict[str, jax.Array]) -> jax.Array:
  """r_t [N, C]: the ReID head on the frame's normed queries, mask logits and mask features."""
  context = cavis_model.context_features(frame["masks"], frame["mask_features"], filter_size)
  return model.reid(frame["embeds"], context.astype(frame["embeds"].dtype))


def cavis_step(model: cavis_model.CAVIS, filter_size: int, matcher: str, train: bool, state: State,
               frame: Dict[str, jax.Array]):
  """One frame (module docstring). model: a bound `models.cavis.CAVIS`. frame: embeds e_t [N, C],
  embeds_without_norm u_t [N, C], masks [N, h, w] (mask logits), mask_features [h, w, C], and for
  segmenter-guided training logits [N, K+1]."""
  e, u, started = frame["embeds"], frame["embeds_without_norm"], state.started
  dtype = state.last_frame_embeds.dtype
  e, u = e.astype(dtype), u.astype(dtype)
  # The segmenter and its ReID head are frozen in the tracker stage (the authors detach pred_embds).
  reid = jax.lax.stop_gradient(reid_features(model, filter_size, dict(frame, embeds=e)).astype(dtype))
  features = jnp.concatenate([e, reid], axis=-1)
  key = model.context_query(features)

  previous = jnp.where(started, state.last_frame_embeds, features)
  sigma = code_orientation_matching(previous, features, matcher)
  take = lambda x: jnp.take(x, sigma, axis=0)
  reference_query = model.context_query(state.last_ctx_aware_query)

  x = jnp.where(started, take(e), e)
  query = jnp.where(started, reference_query, key)
  layers = []
  for j in range(model.num_layers):
    if j > 0:   # frame 0 recomputes the query from the previous layer and the frame's own ReID.
      query = jnp.where(started, reference_query,
                        model.context_query(jnp.concatenate([x, reid], axis=-1)))
    x = model.block(j, x, query, key, u)
    layers.append(x)

  rho = code_orientation_matching(x, u, matcher)
  new_state = State(last_frame_embeds=jnp.where(started, take(features), features),
                    last_ctx_aware_query=jnp.concatenate([x, jnp.take(reid, rho, axis=0)], axis=-1),
                    started=jnp.ones_like(started))

  mask_features = frame["mask_features"].astype(dtype)
  logits, masks = model.predict(x, mask_features)
  outputs = dict(pred_logits=logits, pred_masks=masks, reid=reid, assignment=sigma,
                 pred_embeds=model.normed(x))
  if train:
    stacked = jnp.stack(layers[:-1])
    outputs["aux_logits"], outputs["aux_masks"] = model.predict(stacked, mask_features)
    # pred_references: E(last_ctx_aware_query), the query of frames t >= 1 (zeros at frame 0).
    outputs["references"] = jnp.where(started, reference_query, jnp.zeros_like(reference_query))
    if "logits" in frame:   # segmenter-guided matching: the segmenter's predictions re-ordered by sigma_t
      outputs["matcher_logits"] = take(frame["logits"])
      outputs["matcher_masks"] = take(frame["masks"])
  return new_state, outputs
