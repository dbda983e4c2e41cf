"""A float64 NumPy re-implementation of REFERENCE.md sections 2, 4, 5 and 11, written from that document
only (scipy's LSA for Hung). Tests compare the JAX tracker step against it.

Parameters use PyTorch layouts (Linear weight [out, in], fused `in_proj_weight` [3C, C]) in a flat dict
keyed like the reference `tracker.*` state dict, so the same dict feeds the checkpoint-conversion test.
"""

import numpy as np
import scipy.optimize


# ------------------------------------------------------------------ section 2: building blocks
def layer_norm(x, weight, bias, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * weight + bias


def linear(sd, prefix, x):
  return x @ sd[prefix + ".weight"].T + sd[prefix + ".bias"]


def mlp(sd, prefix, x, num_layers=3):
  for i in range(num_layers):
    x = linear(sd, f"{prefix}.layers.{i}", x)
    if i < num_layers - 1:
      x = np.maximum(x, 0)
  return x


def mha(sd, prefix, q, k, v, num_heads):
  c = q.shape[-1]
  w, b = sd[prefix + ".in_proj_weight"], sd[prefix + ".in_proj_bias"]
  qq = q @ w[:c].T + b[:c]
  kk = k @ w[c:2 * c].T + b[c:2 * c]
  vv = v @ w[2 * c:].T + b[2 * c:]
  d = c // num_heads
  out = np.zeros((q.shape[0], c))
  for h in range(num_heads):
    sl = slice(h * d, (h + 1) * d)
    logits = qq[:, sl] @ kk[:, sl].T / np.sqrt(d)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out[:, sl] = weights @ vv[:, sl]
  return linear(sd, prefix + ".out_proj", out)


def tracker_layer(sd, which, j, identity, query, kv, num_heads):
  """FFN(SA(RCA(id, q, kv))) of tracker `which` ('E' or 'A'), layer j."""
  ca = f"transformer_cross_attention_layers_{which}.{j}"
  x = identity + mha(sd, ca + ".multihead_attn", query, kv, kv, num_heads)
  x = layer_norm(x, sd[ca + ".norm.weight"], sd[ca + ".norm.bias"])
  sa = f"transformer_self_attention_layers_{which}.{j}"
  x = layer_norm(x + mha(sd, sa + ".self_attn", x, x, x, num_heads),
                 sd[sa + ".norm.weight"], sd[sa + ".norm.bias"])
  ff = f"transformer_ffn_layers_{which}.{j}"
  hidden = np.maximum(linear(sd, ff + ".linear1", x), 0)
  x = layer_norm(x + linear(sd, ff + ".linear2", hidden), sd[ff + ".norm.weight"], sd[ff + ".norm.bias"])
  return x


def self_ref(sd, which, kv, num_layers, num_heads):
  outs, identity, source = [], 0.0, kv
  for j in range(num_layers):
    x = tracker_layer(sd, which, j, identity, mlp(sd, "ref_proj", source), kv, num_heads)
    outs.append(x)
    identity, source = x, x
  return outs


def anchor_ref(sd, which, anchor, kv, num_layers, num_heads):
  query = mlp(sd, "ref_proj", anchor)
  outs, identity = [], 0.0
  for j in range(num_layers):
    identity = tracker_layer(sd, which, j, identity, query, kv, num_heads)
    outs.append(identity)
  return outs


def decoder_norm(sd, x):
  return layer_norm(x, sd["decoder_norm.weight"], sd["decoder_norm.bias"])


def class_logits(sd, x):
  return linear(sd, "class_embed", decoder_norm(sd, x))


def mask_logits(sd, x, mask_features):
  """mask_features [h, w, C] -> [N, h, w]."""
  return np.einsum("nc,hwc->nhw", mlp(sd, "mask_embed", decoder_norm(sd, x)), mask_features)


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def cos(a, b):
  """torch cosine_similarity: each norm clamped at >= 1e-8."""
  na = np.maximum(np.linalg.norm(a, axis=-1), 1e-8)
  nb = np.maximum(np.linalg.norm(b, axis=-1), 1e-8)
  return (a * b).sum(-1) / (na * nb)


def hung(ref, cur, eps=1e-6):
  r = ref / (np.linalg.norm(ref, axis=-1, keepdims=True) + eps)
  c = cur / (np.linalg.norm(cur, axis=-1, keepdims=True) + eps)
  cost = 1.0 - r @ c.T
  cost = np.where(np.isnan(cost), 0.0, cost)
  if cost.size == 0:
    return np.zeros((0,), np.int64)
  return scipy.optimize.linear_sum_assignment(cost)[1]


def ohm(slots, cur, occupied, eps=1e-6):
  """Section 5d (and the baselines' OHM of section 11 with eps=0)."""
  if not occupied.any():
    return hung(slots, cur, eps)
  assignment = np.zeros(len(slots), np.int64)
  occ, free = np.flatnonzero(occupied), np.flatnonzero(~occupied)
  assignment[occ] = hung(slots[occ], cur, eps)
  remaining = np.setdiff1d(np.arange(len(cur)), assignment[occ])
  assignment[free] = remaining[hung(slots[free], cur[remaining], eps)]
  return assignment


# ------------------------------------------------------------------ sections 4-5: the frame steps
def run_tracker(sd, embeds, embeds_without_norm, mask_features, fg_prob, num_layers, num_heads,
                anchor_mode="adaptive", current_features="tracker", early_matching=False):
  """embeds e_t / u_t [T, Q, C], mask_features [T, h, w, C], fg_prob f_t [T, Q]. Returns a dict of lists.

  anchor_mode / current_features: the options of SPEC section 2 ('adaptive' / 'tracker' = the reference
  code; 'segmenter' uses e_t in the OHM and u_t as the matched current query); early_matching: pi := sigma_t
  (training option, section 7.4).
  """
  out = {k: [] for k in ("pred_logits", "pred_masks", "pred_logits_E", "pred_masks_E", "memory", "occupied",
                         "similarity", "assignment", "indices", "aux_logits", "aux_masks", "aux_logits_E",
                         "aux_masks_E", "pred_embeds", "segmenter_memory", "occupied_before")}
  memory = seg_memory = occupied = None
  for t in range(len(embeds)):
    e, u, feats = embeds[t], embeds_without_norm[t], mask_features[t]
    out["occupied_before"].append(np.zeros(len(e), bool) if t == 0 else occupied.copy())
    if t == 0:
      seg_memory = e
      indices = hung(e, e)
      E = self_ref(sd, "E", u, num_layers, num_heads)
      sim = cos(E[-1], u)
      A = self_ref(sd, "A", u, num_layers, num_heads)
      logits = class_logits(sd, A[-1])
      memory = A[-1]
      occupied = logits.argmax(-1) != logits.shape[-1] - 1
      assignment = np.arange(len(e))
    else:
      indices = hung(seg_memory, e)
      f = fg_prob[t][indices][:, None]
      seg_memory = (1 - f) * seg_memory + f * e[indices]
      E = anchor_ref(sd, "E", memory, u, num_layers, num_heads)
      slots = decoder_norm(sd, E[-1])
      current_raw = self_ref(sd, "A", u, num_layers, num_heads)[-1]
      current_ohm, current_anchor = ((decoder_norm(sd, current_raw), current_raw)
                                     if current_features == "tracker" else (e, u))
      assignment = indices if early_matching else ohm(slots, current_ohm, occupied)
      matched = current_anchor[assignment]
      sim = cos(matched, decoder_norm(sd, memory))
      anchor = {"adaptive": sim[:, None] * memory + (1 - sim[:, None]) * matched,
                "adaptive_paper": sim[:, None] * matched + (1 - sim[:, None]) * memory,
                "current": matched, "memory": memory}[anchor_mode]
      A = anchor_ref(sd, "A", anchor, u, num_layers, num_heads)
      logits = class_logits(sd, A[-1])
      p_bg = softmax(logits)[:, -1:]
      memory = p_bg * memory + (1 - p_bg) * A[-1]
      occupied = occupied | (logits.argmax(-1) != logits.shape[-1] - 1)
    out["pred_logits"].append(logits)
    out["pred_masks"].append(mask_logits(sd, A[-1], feats))
    out["pred_logits_E"].append(class_logits(sd, E[-1]))
    out["pred_masks_E"].append(mask_logits(sd, E[-1], feats))
    out["aux_logits"].append([class_logits(sd, x) for x in A[:-1]])
    out["aux_masks"].append([mask_logits(sd, x, feats) for x in A[:-1]])
    out["aux_logits_E"].append([class_logits(sd, x) for x in E[:-1]])
    out["aux_masks_E"].append([mask_logits(sd, x, feats) for x in E[:-1]])
    out["pred_embeds"].append(decoder_norm(sd, A[-1]))
    out["memory"].append(memory)
    out["segmenter_memory"].append(seg_memory)
    out["occupied"].append(occupied.copy())
    out["similarity"].append(sim)
    out["assignment"].append(assignment)
    out["indices"].append(indices)
  return out


# ------------------------------------------------------------------ section 11: training-free baselines
def run_baseline(embeds, logits, masks, memory_mode, use_ohm):
  """embeds e_t [T, Q, C], logits z_t [T, Q, K+1], masks [T, Q, h, w] -> reordered logits, masks."""
  memory = embeds[0]
  out_logits, out_masks = [logits[0]], [masks[0]]
  no_object = logits.shape[-1] - 1
  if use_ohm:
    occupied = (masks[0] > 0).reshape(len(memory), -1).any(-1) & (logits[0].argmax(-1) != no_object)
  for t in range(1, len(embeds)):
    cur = embeds[t]
    if use_ohm and occupied.any():
      assignment = ohm(memory, cur, occupied, eps=0.0)
    else:
      assignment = hung(memory, cur, eps=0.0)
    x, z, m = cur[assignment], logits[t][assignment], masks[t][assignment]
    if memory_mode == "none":
      memory = x
    elif memory_mode == "similarity":
      s = cos(memory, x)[:, None]
      memory = (1 - s) * memory + s * x
    elif memory_mode == "momentum":
      memory = 0.99 * memory + 0.01 * x
    elif memory_mode == "iom":
      p = 1 - softmax(z)[:, -1:]
      memory = (1 - p) * memory + p * x
    if use_ohm:
      occupied = occupied | ((m > 0).reshape(len(memory), -1).any(-1) & (z.argmax(-1) != no_object))
    out_logits.append(z)
    out_masks.append(m)
  return np.stack(out_logits), np.stack(out_masks)


# ------------------------------------------------------------------ random weights in the reference layout
def random_state_dict(rng, hidden_dim, num_classes, ffn_dim, num_layers=3, scale=0.3, ref_proj_gain=1.0):
  """A random LOMM tracker state dict (bare keys, float64) with PyTorch layouts.

  ref_proj_gain multiplies each ref_proj weight: larger queries sharpen the attention, so that the slots
  differ enough for mixed occupancy.
  """
  c = hidden_dim
  sd = {}

  def linear(name, out_dim, in_dim):
    sd[name + ".weight"] = rng.normal(scale=1.0 / np.sqrt(in_dim), size=(out_dim, in_dim))
    sd[name + ".bias"] = rng.normal(scale=scale, size=(out_dim,))

  def norm(name):
    sd[name + ".weight"] = 1.0 + rng.normal(scale=scale, size=(c,))
    sd[name + ".bias"] = rng.normal(scale=scale, size=(c,))

  def attention(name):
    sd[name + ".in_proj_weight"] = rng.normal(scale=1.0 / np.sqrt(c), size=(3 * c, c))
    sd[name + ".in_proj_bias"] = rng.normal(scale=scale, size=(3 * c,))
    linear(name + ".out_proj", c, c)

  for x in ("E", "A"):
    for j in range(num_layers):
      attention(f"transformer_cross_attention_layers_{x}.{j}.multihead_attn")
      norm(f"transformer_cross_attention_layers_{x}.{j}.norm")
      attention(f"transformer_self_attention_layers_{x}.{j}.self_attn")
      norm(f"transformer_self_attention_layers_{x}.{j}.norm")
      linear(f"transformer_ffn_layers_{x}.{j}.linear1", ffn_dim, c)
      linear(f"transformer_ffn_layers_{x}.{j}.linear2", c, ffn_dim)
      norm(f"transformer_ffn_layers_{x}.{j}.norm")
  for mlp_name in ("ref_proj", "mask_embed"):
    for i in range(3):
      linear(f"{mlp_name}.layers.{i}", c, c)
  for i in range(3):
    sd[f"ref_proj.layers.{i}.weight"] *= ref_proj_gain
  norm("decoder_norm")
  linear("class_embed", num_classes + 1, c)
  return sd
