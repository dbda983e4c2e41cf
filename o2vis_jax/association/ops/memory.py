"""Instance Occupancy Memory and the adaptive anchor: Eq. 3, 4 and 7, each in exactly one function,
plus the memories of the training-free baselines (REFERENCE.md section 11).

All functions are per slot (rows), batched over any leading axes, and differentiable where the reference
is (REFERENCE.md section 6b): the memory is not detached; occupancy is boolean.
"""

import jax
import jax.numpy as jnp

ANCHORS = ("adaptive", "adaptive_paper", "current", "memory")
BASELINE_MEMORIES = ("none", "similarity", "momentum", "iom")


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Row-wise cosine, each norm clamped at >= eps (torch.nn.functional.cosine_similarity). [..., N].

  The clamp is applied to the squared norm, so a zero row has a finite gradient (a NaN there would leak
  through the `jnp.where` that discards frame 0's unused branch in training).
  """
  norm = lambda x: jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1), eps * eps))
  return jnp.sum(a * b, axis=-1) / (norm(a) * norm(b))


def background_probability(logits: jax.Array) -> jax.Array:
  """softmax(logits)[..., K]: the no-object probability, [..., N, 1] (K = last class)."""
  return jax.nn.softmax(logits, axis=-1)[..., -1:]


def memory_update(memory: jax.Array, queries: jax.Array, logits: jax.Array) -> jax.Array:
  """Eq. 3, the IOM update: M := p_bg * M + (1 - p_bg) * Q = (1 - p_fg) M + p_fg Q.

  p_fg = 1 - softmax(logits)[K] of the class head on Q. The same rule updates the tracker memory (logits
  of T_A's output), the segmenter-space memory S (segmenter logits) and the baseline 'iom' memory.
  """
  p_bg = background_probability(logits)
  return p_bg * memory + (1.0 - p_bg) * queries


def is_foreground(logits: jax.Array, mask_logits=None) -> jax.Array:
  """argmax(logits) != no-object [and, for the baselines, any mask logit > 0]. Bool [..., N]."""
  foreground = jnp.argmax(logits, axis=-1) != logits.shape[-1] - 1
  if mask_logits is not None:
    foreground &= jnp.any(mask_logits.reshape(mask_logits.shape[:foreground.ndim] + (-1,)) > 0, axis=-1)
  return foreground


def occupancy_update(occupied: jax.Array, logits: jax.Array, mask_logits=None) -> jax.Array:
  """Eq. 4: O := O or (argmax logits != no-object). Logits are stop-gradient (boolean anyway).

  The tracker uses the class test only (REFERENCE.md 13.4); the baselines and the T_E-only model also
  require a non-empty mask (pass `mask_logits` [..., N, h, w]).
  """
  return occupied | is_foreground(jax.lax.stop_gradient(logits), mask_logits)


def adaptive_anchor(memory: jax.Array, matched: jax.Array, similarity: jax.Array,
                    mode: str = "adaptive") -> jax.Array:
  """Eq. 7, the anchor of T_A per slot.

  'adaptive' (reference code): s * M + (1 - s) * m, s weights the memory (REFERENCE.md 13.1).
  'adaptive_paper': s * m + (1 - s) * M, Eq. 7's literal order. 'current': m. 'memory': M (Table 3(b)).
  memory M, matched current query m: [..., N, C]; similarity s: [..., N] (not clamped).
  """
  s = similarity[..., None]
  if mode == "adaptive":
    return s * memory + (1.0 - s) * matched
  if mode == "adaptive_paper":
    return s * matched + (1.0 - s) * memory
  if mode == "current":
    return matched
  if mode == "memory":
    return memory
  raise ValueError(f"association.adaptive_anchor: anchor must be one of {ANCHORS}, got {mode!r}")


def baseline_memory_update(memory: jax.Array, matched: jax.Array, matched_logits: jax.Array,
                           mode: str) -> jax.Array:
  """Memories of the training-free baselines, Table 3(a) rows 1-5 (REFERENCE.md section 11).

  'none': M := x (MinVIS, match to the previous frame); 'similarity': s = cos(M, x), M := (1 - s) M + s x;
  'momentum': M := 0.99 M + 0.01 x; 'iom': Eq. 3 with the segmenter's class logits of x.
  """
  if mode == "none":
    return matched
  if mode == "similarity":
    s = cosine_similarity(memory, matched)[..., None]
    return (1.0 - s) * memory + s * matched
  if mode == "momentum":
    return 0.99 * memory + 0.01 * matched
  if mode == "iom":
    return memory_update(memory, matched, matched_logits)
  raise ValueError(f"association.baseline_memory_update: memory must be one of {BASELINE_MEMORIES}, "
                   f"got {mode!r}")
