"""What every weight-import table shares: checkpoint arrays to NumPy, and applying a table
{checkpoint key: (expected shape, [(params path, transform)])} with one error naming every missing,
unexpected and mis-shaped key (used by the association methods' and the refiner's converters)."""

from typing import Dict

import numpy as np

from o2vis_jax.checkpoint_conversion.errors import ConversionError


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
