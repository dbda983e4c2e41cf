"""`config.tracker`: T_E / T_A, the IOM and the matching (SPEC sections 2-3, REFERENCE.md)."""

import ml_collections


def get() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      num_layers=3,               # blocks in T_E and in T_A each.
      ffn_dim=2048,
      num_heads=8,
      semantics="reference",      # reference | paper (REFERENCE.md section 13).
      matcher="host",             # host (scipy via pure_callback) | device (pure JAX, exact).
  ))


def tiny(config: ml_collections.ConfigDict) -> None:
  config.tracker.ffn_dim = 64
  config.tracker.num_heads = 4
