"""Weight import of the reference T_E-only tracker (`LOMM_Tracker_E`, `tracker_E.*` keys): O2VIS's table
(`association/o2vis/convert.py`) restricted to T_E, with T_E's own query projection `ref_proj_E`."""

from typing import Tuple

import ml_collections

from o2vis_jax.association.o2vis import convert as o2vis_convert
from o2vis_jax.checkpoint_conversion.errors import ConversionError

TE_ONLY_PREFIX = "tracker_E."


def te_only_from_reference(state_dict, num_heads: int) -> Tuple[ml_collections.ConfigDict, dict]:
  """Converts the reference T_E-only tracker (`LOMM_Tracker_E`: `tracker_E.*` keys of a
  LOMM_online_E checkpoint, or bare keys) to the params of `o2vis_jax.models.tracker.TrackerE`.

  Same layouts as `tracker_from_reference`, with only the `_E` layers and T_E's own `ref_proj_E`.
  Returns (config with association.method='o2vis_te_only', params); raises ConversionError like it.
  """
  if any(k.startswith(TE_ONLY_PREFIX) for k in state_dict):
    state_dict = {k[len(TE_ONLY_PREFIX):]: v for k, v in state_dict.items() if k.startswith(TE_ONLY_PREFIX)}
  sd = {k.replace("ref_proj_E.", "ref_proj."): o2vis_convert.to_numpy(v) for k, v in state_dict.items()}
  if "transformer_ffn_layers_E.0.linear1.weight" not in sd or any("_layers_A." in k for k in sd):
    raise ConversionError("T_E-only tracker checkpoint: expected `transformer_*_layers_E.*` keys and no "
                          f"T_A keys (got {len(sd)} keys, e.g. {sorted(sd)[:5]})")
  # The full-model table, restricted to T_E: fake the T_A layer-0 key that `infer_dims` reads.
  probe = dict(sd)
  probe["transformer_ffn_layers_A.0.linear1.weight"] = sd["transformer_ffn_layers_E.0.linear1.weight"]
  hidden_dim, num_classes, ffn_dim, num_layers = o2vis_convert.infer_dims(probe)
  table = {k: v for k, v in o2vis_convert.expected_table(hidden_dim, num_classes, ffn_dim, num_layers).items()
           if "_layers_A." not in k}
  table = {k: (shape, [(("ref_proj_E",) + path[1:] if path[0] == "ref_proj" else path, transform)
                       for path, transform in targets])
           for k, (shape, targets) in table.items()}
  params = o2vis_convert.apply_table(
      sd, table, f"T_E-only tracker checkpoint (C={hidden_dim}, K={num_classes}, L={num_layers})")
  config = o2vis_convert.converted_config("o2vis_te_only", hidden_dim, num_classes)
  config.tracker.update(num_layers=num_layers, num_heads=num_heads, ffn_dim=ffn_dim)
  return config, params
