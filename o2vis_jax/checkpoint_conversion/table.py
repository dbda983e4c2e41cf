"""What every weight-import table shares: checkpoint arrays to NumPy, and applying a table
{checkpoint key: (expected shape, [(params path, transform)])} with one error naming every missing,
unexpected and mis-shaped key (used by the association methods' and the refiner's converters)."""

from typing import Dict

import numpy as np

from o2vis_jax.checkpoint_conversion.errors import ConversionError


class Table:
  """Builds a conversion table {torch key: (expected shape, [(params path, transform)])} for the PyTorch
  layers every converter meets: Linear (weight [out, in] -> kernel [in, out]), LayerNorm (weight -> scale)
  and nn.MultiheadAttention's fused in_proj (rows [0:C], [C:2C], [2C:3C] -> q / k / v). `entries` is the
  table; other entries may be added to it directly."""

  def __init__(self, channels: int):
    self.channels = channels
    self.entries = {}

  def linear(self, torch_name, flax_path, out_dim, in_dim):
    self.entries[torch_name + ".weight"] = ((out_dim, in_dim), [(flax_path + ("kernel",), lambda w: w.T)])
    self.entries[torch_name + ".bias"] = ((out_dim,), [(flax_path + ("bias",), lambda b: b)])

  def norm(self, torch_name, flax_path):
    c = self.channels
    self.entries[torch_name + ".weight"] = ((c,), [(flax_path + ("scale",), lambda w: w)])
    self.entries[torch_name + ".bias"] = ((c,), [(flax_path + ("bias",), lambda b: b)])

  def attention(self, torch_name, flax_path):
    c = self.channels
    parts = [(flax_path + (f"{p}_proj",), slice(i * c, (i + 1) * c)) for i, p in enumerate("qkv")]
    self.entries[torch_name + ".in_proj_weight"] = (
        (3 * c, c), [(path + ("kernel",), lambda w, s=s: w[s].T) for path, s in parts])
    self.entries[torch_name + ".in_proj_bias"] = (
        (3 * c,), [(path + ("bias",), lambda b, s=s: b[s]) for path, s in parts])
    self.linear(torch_name + ".out_proj", flax_path + ("out_proj",), c, c)


def to_numpy(value):
  if hasattr(value, "detach"):  # torch.Tensor
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def apply_table(sd: Dict[str, np.ndarray], table, where: str) -> dict:
  """Checks `sd` against `table` ({key: (shape, [(params path, transform)])}) and builds the params tree.

  Raises ConversionError naming every missing, unexpected and mis-shaped key."""
  missing = sorted(set(table) - set(sd))
  unexpected = sorted(set(sd) - set(table))
  misshaped = sorted(f"{k}: {tuple(sd[k].shape)}, expected {table[k][0]}" for k in set(table) & set(sd)
                     if tuple(sd[k].shape) != table[k][0])
  if missing or unexpected or misshaped:
    problems = [f"{name} ({len(keys)}): {keys}" for name, keys in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    raise ConversionError(f"{where}: " + "; ".join(problems))
  params = {}
  for key, (_, targets) in table.items():
    for path, transform in targets:
      node = params
      for name in path[:-1]:
        node = node.setdefault(name, {})
      node[path[-1]] = np.ascontiguousarray(transform(sd[key]))
  return params
