"""Conversion by rule tables: for every leaf of our params tree, the source key and how its array is laid
out (PyTorch conv [O, I, kh, kw] -> flax [kh, kw, I, O], Linear [O, I] -> [I, O], and the q / k / v row
blocks of a fused `in_proj_weight` / `qkv.weight`). `apply_rules` uses every source key (a few
bookkeeping keys excepted) and finds every target leaf with the shape the model expects; otherwise its
error lists the missing, unexpected and mis-shaped keys by name. Used by the segmenter (segmenter.py)
and the ResNet / Swin backbones (resnet_swin.py)."""

import re
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import jax
import numpy as np

from o2vis_jax.checkpoint_conversion.errors import ConversionError

Array = np.ndarray
# A rule: our params path -> (source key, transform name, extra).
Rule = Tuple[str, str, Optional[int]]

# Keys that detectron2 / HF checkpoints carry but that are not network weights (Swin's
# `relative_position_index` buffers are checked against ours by resnet_swin.check_buffers).
IGNORED = (re.compile(r"(^|\.)num_batches_tracked$"), re.compile(r"^criterion\."),
           re.compile(r"^pixel_(mean|std)$"), re.compile(r"^sem_seg_head\.predictor\.reid_embed\."),
           re.compile(r"(^|\.)relative_position_index$"))


def _conv(w, _):
  return np.transpose(w, (2, 3, 1, 0))


def _linear(w, _):
  return np.transpose(w, (1, 0))


def _copy(w, _):
  return w


def _fused_weight(w, block):
  rows = w.shape[0] // 3
  return np.transpose(w[block * rows:(block + 1) * rows], (1, 0))


def _fused_bias(b, block):
  rows = b.shape[0] // 3
  return b[block * rows:(block + 1) * rows]


def _channels_last(w, _):
  """[1, C, H, W] (a PyTorch map parameter) -> [H, W, C]."""
  return np.transpose(w[0], (1, 2, 0))


TRANSFORMS: Dict[str, Callable[[Array, Optional[int]], Array]] = dict(
    conv=_conv, linear=_linear, copy=_copy, fused_weight=_fused_weight, fused_bias=_fused_bias,
    channels_last=_channels_last)


def dense(rules, ours, theirs, bias=True):
  rules[f"{ours}/kernel"] = (f"{theirs}.weight", "linear", None)
  if bias:
    rules[f"{ours}/bias"] = (f"{theirs}.bias", "copy", None)


def norm(rules, ours, theirs, frozen_bn=False):
  if frozen_bn:
    for leaf, key in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")):
      rules[f"{ours}/{leaf}"] = (f"{theirs}.{key}", "copy", None)
  else:
    rules[f"{ours}/scale"] = (f"{theirs}.weight", "copy", None)
    rules[f"{ours}/bias"] = (f"{theirs}.bias", "copy", None)


def conv(rules, ours, theirs, bias=False):
  rules[f"{ours}/kernel"] = (f"{theirs}.weight", "conv", None)
  if bias:
    rules[f"{ours}/bias"] = (f"{theirs}.bias", "copy", None)


def fused_qkv(rules, ours: Iterable[str], weight_key, bias_key=None):
  """Rows [0:C], [C:2C], [2C:3C] of a fused projection -> the three Dense layers `ours` (q, k, v)."""
  for block, path in enumerate(ours):
    rules[f"{path}/kernel"] = (weight_key, "fused_weight", block)
    if bias_key:
      rules[f"{path}/bias"] = (bias_key, "fused_bias", block)


def fused_attention(rules, ours, theirs):
  """nn.MultiheadAttention (`in_proj_weight`, `out_proj`) -> q_proj / k_proj / v_proj / out_proj."""
  fused_qkv(rules, [f"{ours}/{name}" for name in ("q_proj", "k_proj", "v_proj")],
            f"{theirs}.in_proj_weight", f"{theirs}.in_proj_bias")
  dense(rules, f"{ours}/out_proj", f"{theirs}.out_proj")


def flat_shapes(tree) -> Dict[str, Tuple[int, ...]]:
  return {"/".join(p.key for p in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten(flat: Mapping[str, Array]) -> Dict:
  tree: Dict = {}
  for path, value in flat.items():
    node = tree
    parts = path.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return tree


def apply_rules(state_dict: Mapping[str, Array], rules: Mapping[str, Rule], shapes: Mapping[str, Tuple[int, ...]],
                dtype, what: str, problems: Optional[List[str]] = None) -> Dict:
  """The params tree of `rules` over `state_dict`, every leaf checked against `shapes`; raises
  ConversionError naming every missing / unexpected / mis-shaped key (and the `problems` found before)."""
  problems = list(problems or [])
  missing_targets = sorted(set(shapes) - set(rules))
  if missing_targets:   # a bug in the tables, not in the checkpoint
    problems.append(f"no conversion rule for params {missing_targets}")
  used = set()
  missing, misshaped, flat = [], [], {}
  for path, (key, transform, block) in rules.items():
    if key not in state_dict:
      missing.append(key)
      continue
    used.add(key)
    value = TRANSFORMS[transform](np.asarray(state_dict[key]), block)
    if path not in shapes:
      problems.append(f"rule for unknown param {path}")
    elif tuple(value.shape) != shapes[path]:
      misshaped.append(f"{key} {tuple(np.asarray(state_dict[key]).shape)} (-> {path} {tuple(value.shape)}, "
                       f"model expects {shapes[path]})")
    else:
      flat[path] = np.asarray(value, dtype)
  unexpected = sorted(k for k in state_dict if k not in used and not any(p.search(k) for p in IGNORED))
  if missing:
    problems.append(f"missing keys ({len(missing)}): {sorted(set(missing))}")
  if unexpected:
    problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
  if misshaped:
    problems.append(f"mis-shaped keys ({len(misshaped)}): {misshaped}")
  if problems:
    raise ConversionError(f"{what}:\n  " + "\n  ".join(problems))
  return unflatten(flat)
