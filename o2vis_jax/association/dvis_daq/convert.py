"""Weight import of DVIS-DAQ's tracker (`tracker.*` keys of a DAQ online / offline checkpoint) and of the
segmenter's learned queries the slot branch reads (`sem_seg_head.predictor.query_feat.weight` -> params
`query_feat`).

PyTorch -> Flax table (j < L, i < 3):
  transformer_cross_attention_layers.j.multihead_attn.* / .norm.*  -> transformer_cross_attention_layers_j/...
  transformer_self_attention_layers.j.self_attn.* / .norm.*        -> transformer_self_attention_layers_j/...
  transformer_ffn_layers.j.linear{1,2}.* / .norm.*                 -> transformer_ffn_layers_j/...
  slot_cross_attention_layers.j.multihead_attn.* / .norm.*         -> slot_cross_attention_layers_j/...
  slot_cross_attention_layers.j.slot_attn.norm_inputs.*            -> .../slot_attn/norm_inputs/{scale,bias}
  slot_cross_attention_layers.j.slot_attn.project_q.0.*            -> .../slot_attn/project_q_0/{scale,bias}
  slot_cross_attention_layers.j.slot_attn.project_{q.1,k}.weight   -> .../slot_attn/project_{q_1,k}/kernel
  slot_ffn_layers.j.*                                              -> slot_ffn_layers_j/...
  pos_embed.layers.i.*, mask_embed.layers.i.*                      -> pos_embed/layers_i, mask_embed/layers_i
  decoder_norm.*, class_embed.*                                    -> decoder_norm, class_embed
  mask_feature_proj.{weight [C, C, 1, 1], bias}                    -> mask_feature_proj/{kernel, bias}
  new_ins_embeds.weight [1, C], bg_slots.weight [B, C]             -> {new_ins_embeds, bg_slots}/embedding
"""

import re
from typing import Tuple

import ml_collections

from o2vis_jax.association.dvis_daq import config as config_lib
from o2vis_jax.checkpoint_conversion.errors import ConversionError
from o2vis_jax.checkpoint_conversion.table import Table, apply_table, to_numpy

PREFIX = "tracker."
QUERY_FEAT = "sem_seg_head.predictor.query_feat.weight"
MARKER = "new_ins_embeds.weight"     # only DAQ's tracker has it


def is_daq(state_dict) -> bool:
  return PREFIX + MARKER in state_dict or MARKER in state_dict


def _tracker_keys(state_dict):
  if any(k.startswith(PREFIX) for k in state_dict):
    return {k[len(PREFIX):]: to_numpy(v) for k, v in state_dict.items() if k.startswith(PREFIX)}
  return {k: to_numpy(v) for k, v in state_dict.items() if k not in (QUERY_FEAT, "query_feat")}


def expected_table(hidden_dim, num_classes, ffn_dim, num_layers, num_bg_slots):
  c = hidden_dim
  builder = Table(c)
  table, linear, norm, attention = builder.entries, builder.linear, builder.norm, builder.attention
  for j in range(num_layers):
    for block, attn in (("transformer_cross_attention_layers", "multihead_attn"),
                        ("transformer_self_attention_layers", "self_attn"),
                        ("slot_cross_attention_layers", "multihead_attn")):
      attention(f"{block}.{j}.{attn}", (f"{block}_{j}", attn))
      norm(f"{block}.{j}.norm", (f"{block}_{j}", "norm"))
    for ffn in ("transformer_ffn_layers", "slot_ffn_layers"):
      linear(f"{ffn}.{j}.linear1", (f"{ffn}_{j}", "linear1"), ffn_dim, c)
      linear(f"{ffn}.{j}.linear2", (f"{ffn}_{j}", "linear2"), c, ffn_dim)
      norm(f"{ffn}.{j}.norm", (f"{ffn}_{j}", "norm"))
    slot = (f"slot_cross_attention_layers_{j}", "slot_attn")
    torch_slot = f"slot_cross_attention_layers.{j}.slot_attn"
    norm(f"{torch_slot}.norm_inputs", slot + ("norm_inputs",))
    norm(f"{torch_slot}.project_q.0", slot + ("project_q_0",))
    for torch_name, flax_name in (("project_q.1", "project_q_1"), ("project_k", "project_k")):
      table[f"{torch_slot}.{torch_name}.weight"] = ((c, c), [(slot + (flax_name, "kernel"), lambda w: w.T)])
  for mlp in ("pos_embed", "mask_embed"):
    for i in range(3):
      linear(f"{mlp}.layers.{i}", (mlp, f"layers_{i}"), c, c)
  norm("decoder_norm", ("decoder_norm",))
  linear("class_embed", ("class_embed",), num_classes + 1, c)
  table["mask_feature_proj.weight"] = ((c, c, 1, 1), [(("mask_feature_proj", "kernel"), lambda w: w[:, :, 0, 0].T)])
  table["mask_feature_proj.bias"] = ((c,), [(("mask_feature_proj", "bias"), lambda b: b)])
  table["new_ins_embeds.weight"] = ((1, c), [(("new_ins_embeds", "embedding"), lambda w: w)])
  table["bg_slots.weight"] = ((num_bg_slots, c), [(("bg_slots", "embedding"), lambda w: w)])
  return table


def from_reference(state_dict, num_heads: int) -> Tuple[ml_collections.ConfigDict, dict]:
  """(config, params) of method 'dvis_daq' from a DAQ checkpoint's `tracker.*` keys and the segmenter's
  `sem_seg_head.predictor.query_feat.weight` (or bare keys and `query_feat`).

  config: association.method, association.dvis_daq (sizes from the shapes, thresholds at the YTVIS
  defaults: set ovis_infer / inference_select_threshold for OVIS), model (hidden_dim, num_classes,
  num_queries). Raises ConversionError naming every missing, unexpected and mis-shaped key."""
  query_key = QUERY_FEAT if QUERY_FEAT in state_dict else "query_feat"
  if query_key not in state_dict:
    raise ConversionError(f"DVIS-DAQ checkpoint: {QUERY_FEAT!r} missing (the slot branch matches the "
                          f"tracks to the segmenter's learned queries)")
  query_feat = to_numpy(state_dict[query_key])
  sd = _tracker_keys(state_dict)
  for key in ("decoder_norm.weight", "class_embed.weight", "transformer_ffn_layers.0.linear1.weight",
              "bg_slots.weight"):
    if key not in sd:
      raise ConversionError(f"DVIS-DAQ tracker checkpoint: key {key!r} missing (got {len(sd)} keys, e.g. "
                            f"{sorted(sd)[:5]})")
  hidden_dim = sd["decoder_norm.weight"].shape[0]
  num_classes = sd["class_embed.weight"].shape[0] - 1
  ffn_dim = sd["transformer_ffn_layers.0.linear1.weight"].shape[0]
  num_bg_slots = sd["bg_slots.weight"].shape[0]
  num_layers = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"transformer_ffn_layers\.(\d+)\.", k)] if m)
  if hidden_dim % num_heads:
    raise ConversionError(f"DVIS-DAQ tracker checkpoint: hidden_dim {hidden_dim} not divisible by "
                          f"num_heads {num_heads}")
  if query_feat.ndim != 2 or query_feat.shape[1] != hidden_dim:
    raise ConversionError(f"DVIS-DAQ checkpoint: {query_key} has shape {query_feat.shape}, expected "
                          f"[N, {hidden_dim}]")
  params = apply_table(sd, expected_table(hidden_dim, num_classes, ffn_dim, num_layers, num_bg_slots),
                       f"DVIS-DAQ tracker checkpoint (C={hidden_dim}, K={num_classes}, L={num_layers})")
  params["query_feat"] = query_feat
  config = ml_collections.ConfigDict()
  config.association = ml_collections.ConfigDict(dict(method="dvis_daq"))
  config.association.dvis_daq = config_lib.default_config()
  config.association.dvis_daq.update(num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim,
                                     num_bg_slots=num_bg_slots)
  config.model = ml_collections.ConfigDict(dict(hidden_dim=hidden_dim, num_classes=num_classes,
                                                num_queries=query_feat.shape[0]))
  return config, params
