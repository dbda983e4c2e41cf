"""The offline temporal refiner: config section, construction, and the forward as plain functions.

The refiner (`models/refiner.py`, shared/reference/refiner.md) re-reads the online tracker's aligned slot
embeddings of a whole video and predicts one class per slot for the video and a mask per slot and frame.

  config = ...; config.refiner = refiner.default_config()
  params = refiner.init_params(config, rng, num_classes=K, hidden_dim=C)
  out = refiner.refine(config, params, instance_embeds, frame_embeds, mask_features)

For long videos whose mask features stay on the host, `refine_queries` runs the layers and the heads
once over all T frames (the temporal attention needs every frame) and returns per-frame mask embeddings;
`masks_from_embeddings` then makes the masks chunk by chunk. `refine` is exactly these two composed
(the reference's eval-mode `windows_prediction` is the same numbers computed in windows of `windows`
frames: `config.refiner.windows` is that chunk length, for the caller).

Differences from the authors' module (layout only): one video, frames first ([T, N, C] rather than
[b, C, T, N]); `pred_logits` is the video-level [N, K+1] rather than the same row repeated T times;
`pred_masks` is [T, N, h, w]. Outputs keep the compute dtype, promoted to at least float32 (the reference's
eval mode casts to float32 on the CPU; float64 stays float64 here, so tests can compare in float64).
"""

import functools
from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from o2vis_jax import compile_cache, config_validation
from o2vis_jax.models import refiner as refiner_model
from o2vis_jax.models.layers import resolve_dtype

SECTION = "refiner"
DTYPES = ("float32", "bfloat16", "float64")
masks_from_embeddings = refiner_model.masks_from_embeddings


def default_config() -> ml_collections.ConfigDict:
  """The experiment config's `refiner` section (the reference's offline configs: 6 layers, FFN 2048,
  8 heads, windows = MASK_FORMER.TEST.WINDOW_SIZE 3)."""
  return ml_collections.ConfigDict(dict(
      num_layers=6,
      ffn_dim=2048,
      num_heads=8,
      windows=3,                  # frames per mask chunk at inference (memory only; same numbers).
      # Long temporal attention: None = plain softmax over all T (memory ~ T^2); an int B = blockwise
      # (online softmax over B x B tiles of query and key frames); the same numbers up to round-off.
      # Blockwise is the default: on CPU it was as fast at T = 50 and faster at T = 500 (README).
      attention_block=ml_collections.FieldReference(64, field_type=int),
      # The per-frame steps (object self-attention, cross-attention, FFN) over chunks of this many frames,
      # the temporal steps (steps 1-2, per slot) over chunks of this many slots (None = all at once); the
      # same numbers, the memory of one chunk's intermediates. With the defaults the memory is linear in
      # T (scripts/benchmark.py refiner); slot_chunk (e.g. 10) trims it by a further ~20%.
      frame_chunk=ml_collections.FieldReference(64, field_type=int),
      slot_chunk=ml_collections.FieldReference(None, field_type=int),
      dtype=ml_collections.FieldReference(None, field_type=str),  # None = follow the inputs.
      param_dtype="float32",
  ))


def tiny(section: ml_collections.ConfigDict) -> None:
  """In place: small enough for unit tests on a 2-core CPU."""
  section.ffn_dim = 64
  section.num_heads = 4
  section.num_layers = 2


def validate(section, config=None) -> None:
  """The section's values: positive sizes, the dtypes, attention_block None or >= 1, and
  `model.hidden_dim` divisible by the heads. Raises config_validation.ConfigError naming the field."""
  path = f"config.{SECTION}"
  config_validation.check_fields(path, section, default_config())
  config_validation.check_positive(section, path, ("num_layers", "ffn_dim", "num_heads", "windows",
                                                    "attention_block", "frame_chunk", "slot_chunk"))
  for name in ("dtype", "param_dtype"):
    if section.get(name) is not None:
      config_validation.check_choice(f"{path}.{name}", section.get(name), DTYPES)
  model = config.get("model") if config is not None and hasattr(config, "get") else None
  if model is not None and model.get("hidden_dim") and section.get("num_heads"):
    config_validation.check_divisible("config.model.hidden_dim", model.hidden_dim, f"{path}.num_heads",
                                      section.num_heads)


def _section(config):
  """`config.refiner`, or `config` itself when it is the section."""
  return config[SECTION] if SECTION in config else config


def build(config, *, hidden_dim: int, num_classes: int) -> refiner_model.TemporalRefiner:
  """The `TemporalRefiner` of `config.refiner` (or of the section itself), C = hidden_dim, K = num_classes."""
  section = _section(config)
  block = section.get("attention_block")
  return refiner_model.TemporalRefiner(
      hidden_dim=hidden_dim, num_classes=num_classes, num_layers=section.num_layers,
      num_heads=section.num_heads, ffn_dim=section.ffn_dim,
      attention_block=None if block is None else int(block),
      dtype=resolve_dtype(section.get("dtype")),
      param_dtype=resolve_dtype(section.get("param_dtype", "float32")))


def sizes_of(params) -> Dict[str, int]:
  """{hidden_dim, num_classes} read from a refiner params tree."""
  return dict(hidden_dim=int(params["decoder_norm"]["scale"].shape[0]),
              num_classes=int(params["class_embed"]["bias"].shape[0]) - 1)


def param_shapes(config, *, num_classes: int, hidden_dim: int):
  """The shapes of `init_params` (a pytree of `jax.ShapeDtypeStruct`), traced: nothing is computed."""
  model = build(config, hidden_dim=hidden_dim, num_classes=num_classes)
  embeds = jax.ShapeDtypeStruct((2, 3, hidden_dim), jnp.float32)
  features = jax.ShapeDtypeStruct((2, 1, 1, hidden_dim), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), embeds, embeds, features)["params"]


def init_params(config, rng: jax.Array, *, num_classes: int, hidden_dim: int):
  """Fresh params, initialised like the authors' PyTorch module: the attention and FFN layers' weight
  matrices Xavier-uniform (their `_reset_parameters`; for attention over the fused [3C, C] in_proj, as
  PyTorch draws it), the attention biases zero (nn.MultiheadAttention), the FFN / conv / head weights and
  biases PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), LayerNorms (1, 0). Values come from NumPy
  with a seed taken from `rng` (shapes from `jax.eval_shape`: no compile), like
  `models.tracker.xavier_params`."""
  model = build(config, hidden_dim=hidden_dim, num_classes=num_classes)
  dtype = jnp.float32
  embeds = jnp.zeros((2, 3, hidden_dim), dtype)
  shapes = jax.eval_shape(model.init, rng, embeds, embeds, jnp.zeros((2, 1, 1, hidden_dim), dtype))["params"]
  seed = np.asarray(jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
                    else rng).astype(np.uint32)
  generator = np.random.default_rng(seed.tolist())
  c = hidden_dim

  def draw(path, leaf):
    names = [p.key for p in path]
    name, owner = names[-1], names[-2]
    siblings = shapes
    for n in names[:-1]:
      siblings = siblings[n]
    if "scale" in siblings:  # LayerNorm
      value = np.ones(leaf.shape) if name == "scale" else np.zeros(leaf.shape)
    elif len(names) >= 3 and names[-3] in ("self_attn", "multihead_attn"):
      if name == "bias":
        value = np.zeros(leaf.shape)
      else:  # q/k/v: a third of the fused [3C, C] in_proj; out_proj: [C, C].
        fan_out = 3 * c if owner in ("q_proj", "k_proj", "v_proj") else c
        bound = np.sqrt(6.0 / (c + fan_out))
        value = generator.uniform(-bound, bound, leaf.shape)
    elif name == "kernel" and names[0].startswith("transformer_ffn_layers"):
      bound = np.sqrt(6.0 / sum(leaf.shape))
      value = generator.uniform(-bound, bound, leaf.shape)
    else:  # PyTorch's nn.Linear / nn.Conv1d default: kernel [..., in, out], fan-in = prod(shape[:-1]).
      bound = 1.0 / np.sqrt(np.prod(siblings["kernel"].shape[:-1]))
      value = generator.uniform(-bound, bound, leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _output_dtype(x):
  return jnp.promote_types(x.dtype, jnp.float32)


def refine_queries(config, params, instance_embeds: jax.Array, frame_embeds: jax.Array, *,
                   train: bool = False) -> Dict[str, Any]:
  """`_refine_queries` (below), compiled once per (refiner section, train, shapes, dtype): the jitted
  function is cached on the section's values (`compile_cache`), so repeated calls do not trace again."""
  section = _section(config)
  build = lambda section_copy, train: functools.partial(_refine_queries, section_copy, train=train)
  return compile_cache.cached_jit("refiner.refine_queries", section, build, bool(train))(
      params, instance_embeds, frame_embeds)


def trace_count() -> int:
  """How many times `refine_queries` (and so `refine`) has been traced: once per section, mode and shape."""
  return compile_cache.trace_count("refiner.refine_queries")


def _refine_queries(config, params, instance_embeds: jax.Array, frame_embeds: jax.Array, *,
                    train: bool = False) -> Dict[str, Any]:
  """The refiner's layers and heads without the masks.

  Args:
    config: the experiment config (only its `refiner` section is read) or the section.
    params: the refiner's params tree (C and K are read from it).
    instance_embeds: [T, N, C] the online tracker's aligned slot embeddings (its decoder_norm output).
    frame_embeds: [T, N_seg, C] the segmenter's queries WITHOUT the decoder LayerNorm.
    train: also return the heads of layers 0..L-2.
  Returns:
    {"pred_logits": [N, K+1] video-level logits of the last layer,
     "mask_embeddings": [T, N, C] mask_embed(decoder_norm(X_{L-1})),
     "aux_outputs": [{"pred_logits", "mask_embeddings"} of layers 0..L-2] (train=True; [] otherwise)}.
  """
  model = build(config, **sizes_of(params))
  section = _section(config)
  chunk = lambda name: None if section.get(name) is None else int(section.get(name))
  layer_outputs = refiner_model.run_layers(                              # [L or 1, T, N, C]
      model, params, instance_embeds, frame_embeds, frame_chunk=chunk("frame_chunk"),
      slot_chunk=chunk("slot_chunk"), last_only=not train)
  logits, mask_embeddings = model.apply({"params": params}, layer_outputs,
                                        method=refiner_model.TemporalRefiner.heads)
  logits = logits.astype(_output_dtype(logits))
  mask_embeddings = mask_embeddings.astype(_output_dtype(mask_embeddings))
  return {"pred_logits": logits[-1], "mask_embeddings": mask_embeddings[-1],
          "aux_outputs": [{"pred_logits": logits[l], "mask_embeddings": mask_embeddings[l]}
                          for l in range(logits.shape[0] - 1)]}


def refine(config, params, instance_embeds: jax.Array, frame_embeds: jax.Array, mask_features: jax.Array,
           *, train: bool = False) -> Dict[str, Any]:
  """The refiner over one video: `refine_queries` + `masks_from_embeddings`.

  mask_features: [T, h, w, C] (the pixel decoder's 1/4-resolution features). Returns
  {"pred_logits": [N, K+1], "pred_masks": [T, N, h, w], "aux_outputs": [{"pred_logits", "pred_masks"}
  of layers 0..L-2] (train=True; [] otherwise)}.
  """
  queries = refine_queries(config, params, instance_embeds, frame_embeds, train=train)
  masks = lambda out: masks_from_embeddings(out["mask_embeddings"], mask_features)
  return {"pred_logits": queries["pred_logits"], "pred_masks": masks(queries),
          "aux_outputs": [{"pred_logits": aux["pred_logits"], "pred_masks": masks(aux)}
                          for aux in queries["aux_outputs"]]}


__all__ = ["SECTION", "build", "default_config", "init_params", "masks_from_embeddings", "refine",
           "refine_queries", "sizes_of", "tiny", "trace_count", "validate"]
