"""A per-video criterion over the videos of a batch: one call per device, inside shard_map."""

from typing import Callable, Dict, Tuple

import jax
import jax.numpy as jnp

Criterion = Callable[..., Tuple[jax.Array, Dict[str, jax.Array]]]


def mean_over_videos(criterion: Criterion, keys: jax.Array,
                     *per_video_args) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """`criterion(key, *args) -> (total, terms)` of every video, averaged over the batch.

  keys: [B] PRNG keys as raw uint32 key data [B, ...] (what the trainer hands out; wrapped here) or
  typed keys [B]. per_video_args: pytrees with a leading batch axis B; bind anything shared by the
  videos (num_masks, the LossConfig) into `criterion`. Returns (mean total, {name: mean term}).
  """
  if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.wrap_key_data(keys)
  totals, terms = jax.vmap(criterion)(keys, *per_video_args)
  return jnp.mean(totals), jax.tree.map(jnp.mean, terms)
