"""Association methods: one package per method behind one interface (`Method`), chosen by
`config.association.method` from a registry.

  base.py     the `Method` interface, video-level scoring defaults, the registry
  driver.py   `track` / `run_chunk` / `init_state` (lax.scan, padded frames, batch), `video_instances`
  ops/        shared operations, each equation once: Hungarian (host / device), OHM (Eq. 6), the IOM
              (Eq. 3, 4), the adaptive anchor (Eq. 7), the baseline memories
  o2vis/ o2vis_te_only/ training_free/ minvis/   the methods (state + step, loss, config, conversion)

Adding a method: a package here whose `__init__` defines a `Method` subclass and calls
`base.register(...)`, and one import line below (README, "Adding an association method").
"""

from o2vis_jax.association.base import (STANDARD_INPUTS, Method, association_config, class_probabilities,
                                        get, method_name, method_of, names, register, score_topk,
                                        unregister, video_topk, with_method)
from o2vis_jax.association.driver import init_state, run_chunk, track, video_instances
from o2vis_jax.association.ops.hungarian import (MATCHERS, cosine_cost, hungarian,
                                                 occupancy_guided_matching)
from o2vis_jax.association.ops.memory import (adaptive_anchor, baseline_memory_update, memory_update,
                                              occupancy_update)

# The methods (each registers itself).
from o2vis_jax.association import o2vis  # noqa: E402,F401
from o2vis_jax.association import o2vis_te_only  # noqa: E402,F401
from o2vis_jax.association import training_free  # noqa: E402,F401
from o2vis_jax.association import minvis  # noqa: E402,F401
from o2vis_jax.association import cavis  # noqa: E402,F401
from o2vis_jax.association import dvis_daq  # noqa: E402,F401

__all__ = [
    "Method", "STANDARD_INPUTS", "register", "unregister", "get", "names", "method_name", "method_of",
    "association_config", "with_method", "track", "run_chunk", "init_state", "video_instances",
    "video_topk", "score_topk", "class_probabilities", "hungarian", "cosine_cost", "occupancy_guided_matching",
    "MATCHERS", "memory_update", "occupancy_update", "adaptive_anchor", "baseline_memory_update",
]
