"""Weight import of the offline temporal refiner (`refiner.*` keys of a LOMM / DVIS++ / CAVIS offline
checkpoint; shared/reference/refiner.md, "Construction").

PyTorch -> Flax table (i < L, j < 3):
  transformer_{time,obj}_self_attention_layers.i.self_attn.in_proj_{weight,bias}
      -> transformer_{time,obj}_self_attention_layers_i/self_attn/{q,k,v}_proj  (rows [0:C], [C:2C], [2C:3C])
  ...self_attn.out_proj.{weight,bias}          -> .../self_attn/out_proj/{kernel,bias}
  transformer_cross_attention_layers.i.multihead_attn.* -> transformer_cross_attention_layers_i/multihead_attn/*
  transformer_*_layers.i.norm.{weight,bias}    -> .../norm/{scale,bias}
  conv_short_aggregate_layers.i.{0,2}.weight [C, C, k] -> conv_short_aggregate_layers_i_{0,2}/kernel [k, C, C]
  conv_short_aggregate_layers.i.{0,2}.bias     -> conv_short_aggregate_layers_i_{0,2}/bias
  conv_norms.i.*                               -> conv_norms_i/*
  transformer_ffn_layers.i.linear{1,2}.*, .norm.*  -> transformer_ffn_layers_i/linear{1,2}/*, norm/*
  decoder_norm.*, class_embed.*, activation_proj.*, mask_embed.layers.j.*  -> the same names (layers_j)
Linear weights [out, in] are transposed to kernels [in, out].
"""

import re
from typing import Dict, Tuple

import ml_collections
import numpy as np

from o2vis_jax.checkpoint_conversion.table import Table, apply_table, to_numpy
from o2vis_jax.checkpoint_conversion.errors import ConversionError

PREFIX = "refiner."


def refiner_keys(state_dict) -> Dict[str, np.ndarray]:
  """The `refiner.*` entries of a checkpoint without the prefix, or the whole dict if it holds none."""
  if any(k.startswith(PREFIX) for k in state_dict):
    return {k[len(PREFIX):]: to_numpy(v) for k, v in state_dict.items() if k.startswith(PREFIX)}
  return {k: to_numpy(v) for k, v in state_dict.items()}


def infer_dims(sd):
  """(hidden_dim, num_classes, ffn_dim, num_layers, mask_dim) from the shapes."""
  for key in ("decoder_norm.weight", "class_embed.weight", "transformer_ffn_layers.0.linear1.weight",
              "mask_embed.layers.2.weight"):
    if key not in sd:
      raise ConversionError(f"refiner checkpoint: key {key!r} missing (got {len(sd)} keys, e.g. "
                            f"{sorted(sd)[:5]}); is this a LOMM / DVIS++ refiner state dict?")
  layers = {int(m.group(1)) for k in sd for m in [re.match(r"transformer_ffn_layers\.(\d+)\.", k)] if m}
  return (sd["decoder_norm.weight"].shape[0], sd["class_embed.weight"].shape[0] - 1,
          sd["transformer_ffn_layers.0.linear1.weight"].shape[0], max(layers) + 1,
          sd["mask_embed.layers.2.weight"].shape[0])


def expected_table(hidden_dim, num_classes, ffn_dim, num_layers, mask_dim=None):
  """{torch key: (expected shape, [(flax path, transform)])}."""
  c = hidden_dim
  mask_dim = mask_dim or c
  builder = Table(c)
  table, linear, norm, attention = builder.entries, builder.linear, builder.norm, builder.attention

  def conv(torch_name, flax_name, kernel_size):
    table[torch_name + ".weight"] = (  # [C_out, C_in, k] -> Flax's [k, C_in, C_out]
        (c, c, kernel_size), [((flax_name, "kernel"), lambda w: w.transpose(2, 1, 0))])
    table[torch_name + ".bias"] = ((c,), [((flax_name, "bias"), lambda b: b)])

  for i in range(num_layers):
    for kind in ("time", "obj"):
      name = f"transformer_{kind}_self_attention_layers"
      attention(f"{name}.{i}.self_attn", (f"{name}_{i}", "self_attn"))
      norm(f"{name}.{i}.norm", (f"{name}_{i}", "norm"))
    conv(f"conv_short_aggregate_layers.{i}.0", f"conv_short_aggregate_layers_{i}_0", 5)
    conv(f"conv_short_aggregate_layers.{i}.2", f"conv_short_aggregate_layers_{i}_2", 3)
    norm(f"conv_norms.{i}", (f"conv_norms_{i}",))
    cross = "transformer_cross_attention_layers"
    attention(f"{cross}.{i}.multihead_attn", (f"{cross}_{i}", "multihead_attn"))
    norm(f"{cross}.{i}.norm", (f"{cross}_{i}", "norm"))
    ffn = "transformer_ffn_layers"
    linear(f"{ffn}.{i}.linear1", (f"{ffn}_{i}", "linear1"), ffn_dim, c)
    linear(f"{ffn}.{i}.linear2", (f"{ffn}_{i}", "linear2"), c, ffn_dim)
    norm(f"{ffn}.{i}.norm", (f"{ffn}_{i}", "norm"))
  norm("decoder_norm", ("decoder_norm",))
  linear("class_embed", ("class_embed",), num_classes + 1, c)
  for j in range(3):
    linear(f"mask_embed.layers.{j}", ("mask_embed", f"layers_{j}"), mask_dim if j == 2 else c, c)
  linear("activation_proj", ("activation_proj",), 1, c)
  return table


def refiner_from_reference(state_dict, num_heads: int = 8) -> Tuple[ml_collections.ConfigDict, dict]:
  """Converts the authors' refiner weights (`refiner.*` keys of an offline checkpoint, or bare keys).

  Args:
    state_dict: {key: numpy array or torch tensor}.
    num_heads: attention heads (not stored in the checkpoint; 8 in the reference configs).
  Returns:
    (config, params): config has `model` (hidden_dim, num_classes) and the `refiner` section
    (`o2vis_jax.refiner.default_config()` with num_layers, ffn_dim, num_heads from the checkpoint);
    params is the `TemporalRefiner` params tree (arrays keep the checkpoint's dtype).
  Raises:
    ConversionError naming every missing, unexpected and mis-shaped key.
  """
  from o2vis_jax import refiner as refiner_lib
  sd = refiner_keys(state_dict)
  hidden_dim, num_classes, ffn_dim, num_layers, mask_dim = infer_dims(sd)
  if hidden_dim % num_heads:
    raise ConversionError(f"refiner checkpoint: hidden_dim {hidden_dim} not divisible by "
                          f"num_heads {num_heads}")
  if mask_dim != hidden_dim:
    raise ConversionError(f"refiner checkpoint: mask_embed.layers.2 outputs {mask_dim} channels, expected "
                          f"hidden_dim {hidden_dim} (the reference builds mask_dim = HIDDEN_DIM)")
  table = expected_table(hidden_dim, num_classes, ffn_dim, num_layers)
  params = apply_table(sd, table, f"refiner checkpoint (C={hidden_dim}, K={num_classes}, L={num_layers})")
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict(dict(hidden_dim=hidden_dim, num_classes=num_classes))
  config.refiner = refiner_lib.default_config()
  config.refiner.update(num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim)
  return config, params
