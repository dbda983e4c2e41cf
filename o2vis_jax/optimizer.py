"""AdamW with the Mask2Former / LOMM solver conventions (SPEC 5, REFERENCE 10).

- Learning rate: `lr * warmup(step) * decay(step)`; detectron2's linear warm-up multiplier
  `factor * (1 - a) + a` with `a = step / warmup_steps` (the reference uses factor 1.0, i.e. none),
  then x `decay_factor` at each of `decay_steps`.
- Weight decay 0 on normalisation parameters and on learned query embeddings.
- Backbone parameters get `backbone_lr_multiplier` (0.1 when the segmenter trains).
- Gradients are clipped by their global L2 norm over the whole trainable model (0.01).
- The backbone's frozen BatchNorm parameters never change.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
  base = train_config.learning_rate
  warmup_steps = int(train_config.warmup_steps)
  warmup_factor = float(train_config.get("warmup_factor", 1.0))
  decay_steps = tuple(int(s) for s in train_config.decay_steps)
  decay_factor = float(train_config.decay_factor)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    if warmup_steps > 0:
      alpha = jnp.minimum(step / warmup_steps, 1.0)
      warmup = warmup_factor * (1.0 - alpha) + alpha
    else:
      warmup = 1.0
    num_decays = sum((step >= s).astype(jnp.float32) for s in decay_steps) if decay_steps else 0.0
    return base * warmup * decay_factor ** num_decays

  return schedule


def _path_names(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path).lower()


def weight_decay_mask(params: Any) -> Any:
  """True where weight decay applies: not on norm parameters, not on query embeddings, not on Swin's
  relative position bias tables (Mask2Former's build_optimizer: WEIGHT_DECAY_EMBED 0 for them)."""
  def decays(path, _):
    name = _path_names(path)
    modules = set(name.split("/"))   # whole module names: CAVIS's Linear `ctx_query_embed` decays
    return not ("norm" in name or "embedding" in name or "relative_position_bias_table" in name
                or modules & {"query_feat", "query_embed", "level_embed"})
  return jax.tree_util.tree_map_with_path(decays, params)


def frozen_mask(params: Any, frozen_subtrees: Sequence[str] = ()) -> Any:
  """True for parameters that never train: the backbone's frozen BatchNorm (scale, bias, mean, var),
  which detectron2 keeps as buffers, and the subtrees named in `frozen_subtrees` (top-level names, or
  paths 'a/b'; a task's fixed part, e.g. CAVIS's ReID head in the tracker stage, its tracker in the
  segmenter stage). A backbone GroupNorm (`backbone.norm=
  'group_norm'`: no `mean`/`var` next to its scale and bias) trains."""
  paths = {_path_names(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  subtrees = [s.lower().split("/") for s in frozen_subtrees]

  def frozen(path, _):
    names = _path_names(path).split("/")
    module = "/".join(names[:-1])
    if any(names[:len(s)] == s for s in subtrees):
      return True
    return ("backbone" in names and any("norm" in n for n in names[:-1])
            and {f"{module}/mean", f"{module}/var"} <= paths)
  return jax.tree_util.tree_map_with_path(frozen, params)


def _scale_backbone(backbone_multiplier: float) -> optax.GradientTransformation:
  """Multiplies the backbone's updates by `backbone_multiplier` (detectron2 BACKBONE_MULTIPLIER).
  Works from the paths of the updates it gets, so it composes with optax's masking."""
  def update(updates, state, params=None):
    del params
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, u: u * backbone_multiplier if "backbone" in _path_names(path) else u, updates)
    return scaled, state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def create_optimizer(train_config: ml_collections.ConfigDict, params: Any,
                     frozen_subtrees: Sequence[str] = ()) -> optax.GradientTransformation:
  """The trainable part's optimiser; `params` only provides the tree structure for the masks;
  `frozen_subtrees`: top-level subtrees kept fixed (`frozen_mask`)."""
  schedule = learning_rate_schedule(train_config)
  backbone_multiplier = float(train_config.get("backbone_lr_multiplier", 1.0))
  chain = [
      optax.clip_by_global_norm(train_config.clip_grad_norm),
      optax.scale_by_adam(b1=0.9, b2=0.999, eps=float(train_config.get("adam_eps", 1e-8))),
      optax.add_decayed_weights(train_config.weight_decay, mask=weight_decay_mask(params)),
  ]
  if backbone_multiplier != 1.0:
    chain.append(_scale_backbone(backbone_multiplier))
  chain.append(optax.scale_by_learning_rate(schedule))
  trainable = optax.chain(*chain)
  frozen = frozen_mask(params, frozen_subtrees)
  if not any(jax.tree.leaves(frozen)):
    return trainable
  labels = jax.tree.map(lambda f: "frozen" if f else "trainable", frozen)
  return optax.multi_transform({"trainable": trainable, "frozen": optax.set_to_zero()}, labels)
