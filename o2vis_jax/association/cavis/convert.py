"""Weight import of a CAVIS checkpoint (shared/reference/cavis.md; the authors' `CAVIS_online` /
`CAVIS_offline` state dicts).

PyTorch -> Flax table (j < L, i < 3, m < num_reid_head_layers):
  sem_seg_head.predictor.reid_embed.layers.m.*     -> reid_embed/layers_m/{kernel,bias}
  sem_seg_head.predictor.laplacian                 -> (checked: [[-1,-1,-1],[-1,8,-1],[-1,-1,-1]], not a param)
  tracker.transformer_cross_attention_layers.j.multihead_attn.* -> transformer_cross_attention_layers_j/
                                                      multihead_attn/{q,k,v,out}_proj (in_proj rows split)
  tracker.transformer_cross_attention_layers.j.norm.*          -> .../norm/{scale,bias}
  tracker.transformer_self_attention_layers.j.self_attn.*, .norm.* -> transformer_self_attention_layers_j/...
  tracker.transformer_ffn_layers.j.linear{1,2}.*, .norm.*         -> transformer_ffn_layers_j/...
  tracker.ctx_query_embed.*, tracker.decoder_norm.*, tracker.class_embed.* -> the same names
  tracker.mask_embed.layers.i.*                    -> mask_embed/layers_i/*
Linear weights [out, in] are transposed to kernels [in, out]. The context filter is not in the checkpoints
(a plain attribute in the authors' code): its size is `config.association.cavis.context_filter_size` (9).
The segmenter's own `sem_seg_head.predictor.decoder_norm` is not needed here: the head reads the frame's
already normed queries.
A CAVIS SEGMENTER-stage file (`CAVIS_segmenter`: the ReID head and the Laplacian, no tracker.*) converts with
`reid_head_from_reference` (the same table rows) into the tracker of the segmenter stage, {'reid_embed': ...},
from which the tracker stage starts (`tasks.with_segmenter_stage_params`).
"""

import re
from typing import Dict, Tuple

import ml_collections
import numpy as np

from o2vis_jax.association.cavis import config as config_lib
from o2vis_jax.checkpoint_conversion.errors import ConversionError
from o2vis_jax.checkpoint_conversion.table import Table, apply_table, to_numpy

TRACKER_PREFIX = "tracker."
HEAD_PREFIX = "sem_seg_head.predictor."
REID_PREFIX = HEAD_PREFIX + "reid_embed."
LAPLACIAN_KEY = HEAD_PREFIX + "laplacian"
PREFIXES = (TRACKER_PREFIX, REID_PREFIX, LAPLACIAN_KEY)
SIGNATURE = REID_PREFIX + "layers.0.weight"   # in every CAVIS file (segmenter, online, offline), never in LOMM's
LAPLACIAN = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float64)


def select(state_dict) -> Dict[str, np.ndarray]:
  """CAVIS's keys with the tracker / head prefixes stripped (`reid_embed.*`, `laplacian`, tracker keys);
  a dict without any `tracker.` key is taken as bare keys. Other keys (the segmenter's) are left out."""
  if not any(k.startswith(TRACKER_PREFIX) for k in state_dict):
    if any(k.startswith(HEAD_PREFIX) for k in state_dict):
      raise ConversionError("CAVIS checkpoint: no tracker.* keys (a segmenter-stage checkpoint?); the "
                            "association method needs the online (CAVIS_online / CAVIS_offline) weights (a "
                            "segmenter-stage ReID head converts with reid_head_from_reference)")
    return {k: to_numpy(v) for k, v in state_dict.items()}
  selected = {}
  for key, value in state_dict.items():
    if key.startswith(TRACKER_PREFIX):
      selected[key[len(TRACKER_PREFIX):]] = to_numpy(value)
    elif key.startswith(REID_PREFIX) or key == LAPLACIAN_KEY:
      selected[key[len(HEAD_PREFIX):]] = to_numpy(value)
  return selected


def infer_dims(sd) -> Dict[str, int]:
  for key in ("decoder_norm.weight", "class_embed.weight", "transformer_ffn_layers.0.linear1.weight",
              "reid_embed.layers.0.weight"):
    if key not in sd:
      raise ConversionError(f"CAVIS checkpoint: key {key!r} missing (got {len(sd)} keys, e.g. "
                            f"{sorted(sd)[:5]}); is this a CAVIS online / offline state dict?")
  count = lambda pattern: max({int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}) + 1
  return dict(hidden_dim=sd["decoder_norm.weight"].shape[0],
              num_classes=sd["class_embed.weight"].shape[0] - 1,
              ffn_dim=sd["transformer_ffn_layers.0.linear1.weight"].shape[0],
              num_layers=count(r"transformer_ffn_layers\.(\d+)\."), **_reid_dims(sd))


def expected_table(hidden_dim, num_classes, ffn_dim, num_layers, reid_hidden_dim, num_reid_head_layers):
  """{torch key: (expected shape, [(flax path, transform)])}."""
  c = hidden_dim
  builder = Table(c)
  linear, norm, attention = builder.linear, builder.norm, builder.attention
  for j in range(num_layers):
    cross, self_attn, ffn = (f"transformer_cross_attention_layers", "transformer_self_attention_layers",
                             "transformer_ffn_layers")
    attention(f"{cross}.{j}.multihead_attn", (f"{cross}_{j}", "multihead_attn"))
    norm(f"{cross}.{j}.norm", (f"{cross}_{j}", "norm"))
    attention(f"{self_attn}.{j}.self_attn", (f"{self_attn}_{j}", "self_attn"))
    norm(f"{self_attn}.{j}.norm", (f"{self_attn}_{j}", "norm"))
    linear(f"{ffn}.{j}.linear1", (f"{ffn}_{j}", "linear1"), ffn_dim, c)
    linear(f"{ffn}.{j}.linear2", (f"{ffn}_{j}", "linear2"), c, ffn_dim)
    norm(f"{ffn}.{j}.norm", (f"{ffn}_{j}", "norm"))
  for i in range(3):
    linear(f"mask_embed.layers.{i}", ("mask_embed", f"layers_{i}"), c, c)
  norm("decoder_norm", ("decoder_norm",))
  linear("class_embed", ("class_embed",), num_classes + 1, c)
  linear("ctx_query_embed", ("ctx_query_embed",), c, 2 * c)
  _reid_head_entries(builder, reid_hidden_dim, num_reid_head_layers)
  return builder.entries


def _reid_head_entries(builder: Table, reid_hidden_dim: int, num_reid_head_layers: int) -> None:
  """The ReID head MLP_L (2C -> hidden -> ... -> C) and the Laplacian buffer, into `builder`'s table."""
  c = builder.channels
  for m in range(num_reid_head_layers):
    in_dim = 2 * c if m == 0 else reid_hidden_dim
    out_dim = c if m == num_reid_head_layers - 1 else reid_hidden_dim
    builder.linear(f"reid_embed.layers.{m}", ("reid_embed", f"layers_{m}"), out_dim, in_dim)
  builder.entries["laplacian"] = ((1, 1, 3, 3), [])


def _reid_dims(sd) -> Dict[str, int]:
  count = max({int(m.group(1)) for k in sd for m in [re.match(r"reid_embed\.layers\.(\d+)\.", k)] if m}) + 1
  return dict(reid_hidden_dim=sd["reid_embed.layers.0.weight"].shape[0], num_reid_head_layers=count)


def _check_laplacian(sd) -> None:
  if "laplacian" in sd and not np.array_equal(np.asarray(sd["laplacian"], np.float64).reshape(3, 3),
                                              LAPLACIAN):
    raise ConversionError(f"CAVIS checkpoint: {LAPLACIAN_KEY} is {np.asarray(sd['laplacian']).tolist()}, "
                          f"expected the 8-neighbour Laplacian {LAPLACIAN.tolist()}")


def _config(num_heads: int, hidden_dim: int, num_classes=None, **section) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.association = ml_collections.ConfigDict(dict(method="cavis", cavis=config_lib.default_config()))
  config.association.cavis.update(num_heads=num_heads, **section)
  model = dict(hidden_dim=hidden_dim) if num_classes is None else dict(hidden_dim=hidden_dim,
                                                                         num_classes=num_classes)
  config.model = ml_collections.ConfigDict(model)
  return config


def cavis_from_reference(state_dict, num_heads: int) -> Tuple[ml_collections.ConfigDict, dict]:
  """Converts a CAVIS checkpoint's association weights (module docstring).

  Args:
    state_dict: {key: numpy array or torch tensor}: a whole CAVIS online / offline checkpoint (the
      segmenter's and refiner's keys are left out), or its `tracker.*` + `sem_seg_head.predictor.reid_embed.*`
      (+ laplacian) keys, or bare keys (`reid_embed.*`, tracker keys without prefix).
    num_heads: attention heads (not stored; 8 in the authors' configs).
  Returns:
    (config, params): config.association.method == 'cavis', config.association.cavis (sizes from the
    shapes, context_filter_size 9), config.model (hidden_dim, num_classes); params for `models.cavis.CAVIS`.
  Raises:
    ConversionError naming every missing, unexpected and mis-shaped key, or a wrong Laplacian.
  """
  sd = select(state_dict)
  dims = infer_dims(sd)
  if dims["hidden_dim"] % num_heads:
    raise ConversionError(f"CAVIS checkpoint: hidden_dim {dims['hidden_dim']} not divisible by "
                          f"num_heads {num_heads}")
  _check_laplacian(sd)
  table = expected_table(**dims)
  if "laplacian" not in sd:   # optional (a bare dict may leave the buffer out)
    del table["laplacian"]
  params = apply_table(sd, table, "CAVIS checkpoint (C=%d, K=%d, L=%d)" % (
      dims["hidden_dim"], dims["num_classes"], dims["num_layers"]))
  config = _config(num_heads, dims.pop("hidden_dim"), dims.pop("num_classes"), **dims)
  return config, params


def reid_head_from_reference(state_dict, num_heads: int) -> Tuple[ml_collections.ConfigDict, dict]:
  """Converts the ReID head of a CAVIS SEGMENTER-stage checkpoint (CAVIS_segmenter trains it with L_CTX and
  L_PCC; the tracker stage runs it frozen): the tracker of the segmenter stage.

  Args:
    state_dict: {key: numpy array or torch tensor}: `sem_seg_head.predictor.reid_embed.*` (+ the laplacian,
      checked) with their prefixes or bare (`reid_embed.*`, `laplacian`); other keys are left out.
    num_heads: attention heads of CAIT (not stored; 8 in the authors' configs).
  Returns:
    (config, params): config.association.method == 'cavis', config.association.cavis sized from the shapes
    (reid_hidden_dim, num_reid_head_layers; context_filter_size 9, CAIT's sizes the defaults),
    config.model.hidden_dim; params {'reid_embed': ...}, the segmenter-stage subtree of `models.cavis.CAVIS`.
  Raises:
    ConversionError naming every missing, unexpected and mis-shaped key, or a wrong Laplacian.
  """
  sd = {}
  for key, value in state_dict.items():
    bare = key[len(HEAD_PREFIX):] if key.startswith(HEAD_PREFIX) else key
    if bare.startswith("reid_embed.") or bare == "laplacian":
      sd[bare] = to_numpy(value)
  if "reid_embed.layers.0.weight" not in sd:
    raise ConversionError(f"CAVIS segmenter checkpoint: key {SIGNATURE!r} missing (got {len(state_dict)} "
                          f"keys, e.g. {sorted(state_dict)[:5]})")
  dims = _reid_dims(sd)
  in_dim = sd["reid_embed.layers.0.weight"].shape[1]
  if in_dim % 2:
    raise ConversionError(f"CAVIS segmenter checkpoint: {SIGNATURE} has shape "
                          f"{tuple(sd['reid_embed.layers.0.weight'].shape)}: its input is [query, context] "
                          "(2C), an even width")
  hidden_dim = in_dim // 2
  _check_laplacian(sd)
  builder = Table(hidden_dim)
  _reid_head_entries(builder, **dims)
  if "laplacian" not in sd:
    del builder.entries["laplacian"]
  params = apply_table(sd, builder.entries, f"CAVIS segmenter-stage ReID head (C={hidden_dim})")
  return _config(num_heads, hidden_dim, **dims), params
