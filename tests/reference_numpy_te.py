"""A float64 NumPy re-implementation of the T_E-only model, REFERENCE.md section 12 (`LOMM_Tracker_E`),
written from that document and the section 2 building blocks of `reference_numpy` (scipy's LSA for Hung).

State dict keys as the reference `tracker_E.*` module: `transformer_*_layers_E.j`, `ref_proj_E`,
`decoder_norm`, `class_embed`, `mask_embed` (PyTorch layouts).
"""

import numpy as np

import reference_numpy as ref


def _as_shared(sd):
  """The section-2 helpers read `ref_proj`: point it at T_E's own `ref_proj_E`."""
  return {k.replace("ref_proj_E.", "ref_proj."): v for k, v in sd.items()}


def random_state_dict(rng, hidden_dim, num_classes, ffn_dim, num_layers, ref_proj_gain=2.0):
  full = ref.random_state_dict(rng, hidden_dim, num_classes, ffn_dim, num_layers,
                               ref_proj_gain=ref_proj_gain)
  return {k.replace("ref_proj.", "ref_proj_E."): v for k, v in full.items() if "_layers_A." not in k}


def is_fg(logits, masks):
  """Segmenter occupancy: argmax != no-object and a mask logit > 0. [Q]."""
  return (logits.argmax(-1) != logits.shape[-1] - 1) & ((masks > 0).sum(axis=(-2, -1)) > 0)


def run_te_only(sd, embeds, embeds_without_norm, mask_features, logits, masks, num_layers, num_heads,
                early_matching=False):
  """e_t, u_t [T, Q, C]; mask_features [T, h, w, C]; segmenter logits [T, Q, K+1] and masks [T, Q, h, w].

  Returns a dict of per-frame lists: pi, pred_logits / pred_masks (re-ordered segmenter outputs),
  pred_embeds (u_t[pi]), memory S, occupied O, E (T_E layer outputs [L, Q, C]), logits_E / masks_E.
  """
  sd = _as_shared(sd)
  out = {k: [] for k in ("pi", "pred_logits", "pred_masks", "pred_embeds", "memory", "occupied", "E",
                         "logits_E", "masks_E")}
  memory = occupied = None
  for t in range(len(embeds)):
    e, u = embeds[t], embeds_without_norm[t]
    fg_prob = 1.0 - ref.softmax(logits[t])[:, -1]
    if t == 0:
      memory = e.copy()
      layers = ref.self_ref(sd, "E", u, num_layers, num_heads)
      pi = np.arange(len(e))
      occupied = is_fg(logits[0], masks[0])
    else:
      layers = ref.anchor_ref(sd, "E", memory, u, num_layers, num_heads)
      if early_matching:
        pi = ref.hung(memory, e)
      else:
        current = ref.decoder_norm(sd, ref.self_ref(sd, "E", u, num_layers, num_heads)[-1])
        pi = ref.ohm(ref.decoder_norm(sd, layers[-1]), current, occupied)
      occupied = occupied | is_fg(logits[t][pi], masks[t][pi])
      memory = (1 - fg_prob[pi])[:, None] * memory + fg_prob[pi][:, None] * e[pi]
    out["pi"].append(pi)
    out["pred_logits"].append(logits[t][pi])
    out["pred_masks"].append(masks[t][pi])
    out["pred_embeds"].append(u[pi])
    out["memory"].append(memory.copy())
    out["occupied"].append(occupied.copy())
    out["E"].append(np.stack(layers))
    out["logits_E"].append(np.stack([ref.class_logits(sd, x) for x in layers]))
    out["masks_E"].append(np.stack([ref.mask_logits(sd, x, mask_features[t]) for x in layers]))
  return out
