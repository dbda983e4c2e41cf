"""Weight import of the reference LOMM tracker (`tracker.*` keys, REFERENCE.md section 1).

PyTorch -> Flax table (X in {E, A}, j < L, i < 3):
  transformer_cross_attention_layers_X.j.multihead_attn.in_proj_{weight,bias}
      -> transformer_cross_attention_layers_X_j/multihead_attn/{q,k,v}_proj  (rows [0:C], [C:2C], [2C:3C])
  ...multihead_attn.out_proj.{weight,bias}   -> .../multihead_attn/out_proj/{kernel,bias}
  transformer_self_attention_layers_X.j.self_attn.*  -> transformer_self_attention_layers_X_j/self_attn/*
  transformer_{cross,self}_attention_layers_X.j.norm.{weight,bias} -> .../norm/{scale,bias}
  transformer_ffn_layers_X.j.linear{1,2}.{weight,bias} -> transformer_ffn_layers_X_j/linear{1,2}/{kernel,bias}
  transformer_ffn_layers_X.j.norm.*          -> transformer_ffn_layers_X_j/norm/*
  ref_proj.layers.i.*, mask_embed.layers.i.* -> ref_proj/layers_i/*, mask_embed/layers_i/*
  decoder_norm.*, class_embed.*              -> decoder_norm/*, class_embed/*
Linear weights [out, in] are transposed to kernels [in, out].
"""

import re
from typing import Dict, Tuple

import ml_collections
import numpy as np

from o2vis_jax.association.o2vis import config as o2vis_config
from o2vis_jax.checkpoint_conversion.errors import ConversionError
from o2vis_jax.checkpoint_conversion.table import Table, apply_table, to_numpy  # noqa: F401

PREFIX = "tracker."
TRACKERS = ("E", "A")


def _strip_prefix(state_dict) -> Dict[str, np.ndarray]:
  """The `tracker.*` part of a LOMM checkpoint, or the whole dict if it is a bare tracker state dict."""
  if any(k.startswith(PREFIX) for k in state_dict):
    return {k[len(PREFIX):]: to_numpy(v) for k, v in state_dict.items() if k.startswith(PREFIX)}
  return {k: to_numpy(v) for k, v in state_dict.items()}


def infer_dims(sd):
  for key in ("decoder_norm.weight", "class_embed.weight", "transformer_ffn_layers_A.0.linear1.weight"):
    if key not in sd:
      raise ConversionError(f"tracker checkpoint: key {key!r} missing (got {len(sd)} keys, e.g. "
                            f"{sorted(sd)[:5]}); is this a LOMM tracker state dict?")
  hidden_dim = sd["decoder_norm.weight"].shape[0]
  num_classes = sd["class_embed.weight"].shape[0] - 1
  ffn_dim = sd["transformer_ffn_layers_A.0.linear1.weight"].shape[0]
  layers = {int(m.group(1)) for k in sd
            for m in [re.match(r"transformer_ffn_layers_[EA]\.(\d+)\.", k)] if m}
  return hidden_dim, num_classes, ffn_dim, max(layers) + 1


def expected_table(hidden_dim, num_classes, ffn_dim, num_layers):
  """{torch key: (expected shape, [(flax path, transform)])}."""
  c = hidden_dim
  builder = Table(c)
  table, linear, norm, attention = builder.entries, builder.linear, builder.norm, builder.attention
  for x in TRACKERS:
    for j in range(num_layers):
      cross = f"transformer_cross_attention_layers_{x}"
      self_attn = f"transformer_self_attention_layers_{x}"
      ffn = f"transformer_ffn_layers_{x}"
      attention(f"{cross}.{j}.multihead_attn", (f"{cross}_{j}", "multihead_attn"))
      norm(f"{cross}.{j}.norm", (f"{cross}_{j}", "norm"))
      attention(f"{self_attn}.{j}.self_attn", (f"{self_attn}_{j}", "self_attn"))
      norm(f"{self_attn}.{j}.norm", (f"{self_attn}_{j}", "norm"))
      linear(f"{ffn}.{j}.linear1", (f"{ffn}_{j}", "linear1"), ffn_dim, c)
      linear(f"{ffn}.{j}.linear2", (f"{ffn}_{j}", "linear2"), c, ffn_dim)
      norm(f"{ffn}.{j}.norm", (f"{ffn}_{j}", "norm"))
  for mlp in ("ref_proj", "mask_embed"):
    for i in range(3):
      linear(f"{mlp}.layers.{i}", (mlp, f"layers_{i}"), c, c)
  norm("decoder_norm", ("decoder_norm",))
  linear("class_embed", ("class_embed",), num_classes + 1, c)
  return table


def tracker_from_reference(state_dict, num_heads: int) -> Tuple[ml_collections.ConfigDict, dict]:
  """Converts a LOMM tracker state dict (`tracker.*` keys of a checkpoint, or bare keys).

  Args:
    state_dict: {key: numpy array or torch tensor}.
    num_heads: attention heads (not stored in the checkpoint; 8 in the reference configs).
  Returns:
    (config, params): config has `association.method = "o2vis"`, `model` (hidden_dim, num_classes) and
    the full `tracker` section (runs with `association.track(config, params, frames)`);
    params is the `Tracker` params tree (arrays keep the checkpoint's dtype).
  Raises:
    ConversionError naming every missing, unexpected and mis-shaped key.
  """
  sd = _strip_prefix(state_dict)
  hidden_dim, num_classes, ffn_dim, num_layers = infer_dims(sd)
  if hidden_dim % num_heads:
    raise ConversionError(f"tracker checkpoint: hidden_dim {hidden_dim} not divisible by "
                          f"num_heads {num_heads}")
  table = expected_table(hidden_dim, num_classes, ffn_dim, num_layers)
  params = apply_table(sd, table, "tracker checkpoint (C=%d, K=%d, L=%d)" % (
      hidden_dim, num_classes, num_layers))
  config = converted_config("o2vis", hidden_dim, num_classes)
  config.tracker.update(num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim)
  return config, params


def converted_config(method: str, hidden_dim: int, num_classes: int) -> ml_collections.ConfigDict:
  """{association: {method}, model: {hidden_dim, num_classes}, tracker: O2VIS defaults}."""
  config = ml_collections.ConfigDict()
  config.association = ml_collections.ConfigDict(dict(method=method))
  config.model = ml_collections.ConfigDict(dict(hidden_dim=hidden_dim, num_classes=num_classes))
  config.tracker = o2vis_config.default_config()
  return config
