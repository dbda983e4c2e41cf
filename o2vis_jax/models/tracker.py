"""The O2VIS trackers T_E and T_A, and the T_E-only model's `TrackerE` (SPEC section 2; REFERENCE.md
sections 1-2 and 12).

Each tracker is a stack of `num_layers` layers `FFN(SA(RCA(identity, query, kv)))`, post-norm, no
positional embeddings. T_E and T_A share `ref_proj`, `decoder_norm`, `class_embed` and `mask_embed`
(REFERENCE.md section 13.10). Keys and values of every attention are the un-normed segmenter queries of
the current frame. A stack runs in one of two modes (`Tracker.run_stack`):
  * self mode:   query_0 = ref_proj(kv),     query_j = ref_proj(x_{j-1});
  * anchor mode: query_j = ref_proj(anchor) for every j.
In both, the residual of layer 0 is zero and that of layer j > 0 is x_{j-1}.

Parameter names follow the PyTorch module names (`transformer_cross_attention_layers_E_0/multihead_attn/
q_proj`, ...), so weight import (`association/o2vis/convert.py`) is a table. The modules own no state:
the memory is the scan carry of the association methods `o2vis` and `o2vis_te_only`. The self-attention
and FFN blocks are the decoder's (`layers.SelfAttentionLayer`, `layers.FFNLayer`) without positions.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from o2vis_jax.models.layers import (MLP, FFNLayer, MultiHeadAttention, SelfAttentionLayer, layer_norm,
                                     resolve_dtype)

Dtype = Any
TRACKERS = ("E", "A")


class ReferringCrossAttention(nn.Module):
  """RCA(id, q, kv) = LN(id + MHA(q, kv, kv)); the residual input is separate from the query."""
  num_heads: int
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, identity, query, kv, keys_values=None, return_keys_values: bool = False):
    """keys_values / return_keys_values: `MultiHeadAttention`'s (the projections of kv, to reuse)."""
    attended, keys_values = MultiHeadAttention(
        self.num_heads, self.dtype, self.param_dtype, name="multihead_attn")(
            query, kv, kv, keys_values=keys_values, return_keys_values=True)
    out = layer_norm("norm", self.dtype, self.param_dtype)(identity + attended)
    return (out, keys_values) if return_keys_values else out


def run_referring_stack(cross, self_attention, ffn, ref_proj, kv: jax.Array,
                        anchor: Optional[jax.Array] = None, use_anchor=None, keys_values=None,
                        return_keys_values: bool = False, query_of_kv: Optional[jax.Array] = None):
  """SelfRef(kv) or Anchor(anchor; kv) of REFERENCE.md section 2 over the blocks (cross[j],
  self_attention[j], ffn[j]); returns the L block outputs [L, ..., N, C].

  Self mode: block 0's query is ref_proj(kv), block j's ref_proj(x_{j-1}). Anchor mode: ref_proj(anchor)
  at every block. The residual into block 0 is 0, into block j the previous output. `use_anchor` may be
  a traced bool, so that frame 0 (self mode) and later frames (anchor mode) share one program.

  Work shared between the passes of one frame (issue 18): keys_values, the per-block (k, v) projections
  of kv returned by an earlier pass of the same stack on the same kv (`return_keys_values=True` returns
  (outputs, keys_values)); query_of_kv, ref_proj(kv) when the caller has it.
  """
  if anchor is None:
    anchor, use_anchor = kv, False
  elif use_anchor is None:
    use_anchor = True
  if use_anchor is False:
    anchor_query = None
  elif query_of_kv is not None and anchor is kv:
    anchor_query = query_of_kv
  else:
    anchor_query = ref_proj(anchor)
  outputs, identity, previous = [], jnp.zeros((), kv.dtype), kv
  projections = []
  for j in range(len(cross)):
    if use_anchor is True:
      query = anchor_query
    else:
      if j == 0 and query_of_kv is not None:
        self_query = query_of_kv
      else:
        self_query = ref_proj(previous)
      query = self_query if use_anchor is False else jnp.where(use_anchor, anchor_query, self_query)
    x, block_keys_values = cross[j](identity, query, kv, None if keys_values is None else keys_values[j],
                                    return_keys_values=True)
    projections.append(block_keys_values)
    x = ffn[j](self_attention[j](x))
    outputs.append(x)
    identity = previous = x
  outputs = jnp.stack(outputs)
  return (outputs, tuple(projections)) if return_keys_values else outputs


def predict_heads(decoder_norm, class_embed, mask_embed, x, mask_features):
  """(class logits [..., N, K+1], mask logits [..., N, h, w]) of queries x [..., N, C]: the shared heads on
  LN_d(x), masks = mask_embed(LN_d(x)) . mask_features [h, w, C]."""
  return heads_of_normed(class_embed, mask_embed, decoder_norm(x), mask_features)


def heads_of_normed(class_embed, mask_embed, normed, mask_features):
  """`predict_heads` after the decoder norm: normed = LN_d(x) [..., N, C]. The mask logits of every
  leading index are one matmul against mask_features [h, w, C]."""
  masks = jnp.einsum("...nc,hwc->...nhw", mask_embed(normed), mask_features)
  return class_embed(normed), masks


class ReferringTrackerBase(nn.Module):
  """Fields, layer stacks and heads shared by the referring trackers (`Tracker` here, the T_E-only
  model's `TrackerE`). Subclasses assign `referring_blocks()` to their `transformer_*_layers_X`
  attributes and call `setup_heads()` in `setup`."""
  hidden_dim: int
  num_classes: int
  num_layers: int = 3
  num_heads: int = 8
  ffn_dim: int = 2048
  dtype: Optional[Dtype] = None
  param_dtype: Dtype = jnp.float32

  def _kw(self):
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)

  def referring_blocks(self):
    """(cross-attention, self-attention, FFN) layer lists of one tracker, `num_layers` each."""
    kw = self._kw()
    layers = lambda make: [make() for _ in range(self.num_layers)]
    return (layers(lambda: ReferringCrossAttention(self.num_heads, **kw)),
            layers(lambda: SelfAttentionLayer(self.num_heads, **kw)),
            layers(lambda: FFNLayer(self.ffn_dim, **kw)))

  def query_projection(self):
    return MLP(self.hidden_dim, self.hidden_dim, 3, **self._kw())

  def setup_heads(self):
    kw = self._kw()
    self.decoder_norm = nn.LayerNorm(epsilon=1e-5, **kw)  # PyTorch's eps.
    self.class_embed = nn.Dense(self.num_classes + 1, **kw)
    self.mask_embed = MLP(self.hidden_dim, self.hidden_dim, 3, **kw)

  def normed(self, x):
    """LN_d, the shared decoder norm."""
    return self.decoder_norm(x)

  def predict(self, x, mask_features):
    """(class logits [..., N, K+1], mask logits [..., N, h, w]) of tracker outputs x [..., N, C] with
    mask_features [h, w, C] (broadcast over the leading axes of x)."""
    return predict_heads(self.decoder_norm, self.class_embed, self.mask_embed, x, mask_features)

  def predict_normed(self, normed, mask_features):
    """`predict` of already normed queries LN_d(x) (when the caller needs LN_d(x) too)."""
    return heads_of_normed(self.class_embed, self.mask_embed, normed, mask_features)

  @classmethod
  def from_section(cls, section, *, hidden_dim: int, num_classes: int):
    """The tracker of an O2VIS config section (`config.tracker`) for C = hidden_dim, K = num_classes."""
    return cls(hidden_dim=hidden_dim, num_classes=num_classes, num_layers=section.num_layers,
               num_heads=section.num_heads, ffn_dim=section.ffn_dim,
               dtype=resolve_dtype(section.get("dtype")),
               param_dtype=resolve_dtype(section.get("param_dtype", "float32")))


class Tracker(ReferringTrackerBase):
  """T_E and T_A with their shared heads. Call the methods through `model.bind({'params': params})`."""

  def setup(self):
    (self.transformer_cross_attention_layers_E, self.transformer_self_attention_layers_E,
     self.transformer_ffn_layers_E) = self.referring_blocks()
    (self.transformer_cross_attention_layers_A, self.transformer_self_attention_layers_A,
     self.transformer_ffn_layers_A) = self.referring_blocks()
    self.ref_proj = self.query_projection()
    self.setup_heads()

  def _layers(self, which):
    if which not in TRACKERS:
      raise ValueError(f"models/tracker.py: tracker must be one of {TRACKERS}, got {which!r}")
    if which == "E":
      return (self.transformer_cross_attention_layers_E, self.transformer_self_attention_layers_E,
              self.transformer_ffn_layers_E)
    return (self.transformer_cross_attention_layers_A, self.transformer_self_attention_layers_A,
            self.transformer_ffn_layers_A)

  def run_stack(self, which: str, kv: jax.Array, anchor: Optional[jax.Array] = None,
                use_anchor=None, keys_values=None, return_keys_values: bool = False,
                query_of_kv: Optional[jax.Array] = None):
    """Runs tracker `which` ('E' or 'A') on one frame; returns the L layer outputs [L, ..., N, C].

    kv: the un-normed segmenter queries u_t [..., N, C]. anchor: [..., N, C] or None (self mode).
    use_anchor: optional traced bool selecting anchor mode (True) or self mode (False) at run time, so
    frame 0 (self mode) and later frames (anchor mode) share one program; defaults to `anchor is not None`.
    keys_values / return_keys_values / query_of_kv: work shared between passes (`run_referring_stack`).
    """
    cross, self_attention, ffn = self._layers(which)
    return run_referring_stack(cross, self_attention, ffn, self.ref_proj, kv, anchor, use_anchor,
                               keys_values, return_keys_values, query_of_kv)

  def query_projection_of(self, x):
    """ref_proj(x), the query projection T_E and T_A share."""
    return self.ref_proj(x)

  def __call__(self, kv, mask_features):
    """Touches every parameter (for `init`): both trackers in self and anchor mode, and the heads."""
    e = self.run_stack("E", kv)
    a = self.run_stack("A", kv, anchor=e[-1])
    return self.predict(a[-1], mask_features)


class TrackerE(ReferringTrackerBase):
  """T_E with its own query projection `ref_proj_E` and the heads: the T_E-only model of Table 3(a) row 6
  (reference `LOMM_Tracker_E`). Use through `bind`."""
  num_layers: int = 6

  def setup(self):
    (self.transformer_cross_attention_layers_E, self.transformer_self_attention_layers_E,
     self.transformer_ffn_layers_E) = self.referring_blocks()
    self.ref_proj_E = self.query_projection()
    self.setup_heads()

  def run_stack(self, kv: jax.Array, anchor: Optional[jax.Array] = None, use_anchor=None) -> jax.Array:
    """SelfRef_E(kv) (anchor None) or Anchor_E(anchor; kv): the L layer outputs [L, N, C].

    use_anchor: optional traced bool choosing anchor (True) or self mode (False) at run time.
    """
    return run_referring_stack(
        self.transformer_cross_attention_layers_E, self.transformer_self_attention_layers_E,
        self.transformer_ffn_layers_E, self.ref_proj_E, kv, anchor, use_anchor)

  def __call__(self, kv, mask_features):
    """Touches every parameter (for `init`)."""
    return self.predict(self.run_stack(kv)[-1], mask_features)


def xavier_params(model: nn.Module, rng: jax.Array, hidden_dim: int, dtype=jnp.float32):
  """Fresh params of a referring tracker `model`: Xavier-uniform kernels, zero biases, unit LayerNorm
  scales (the reference trackers' reset: xavier for every weight matrix). Values are drawn with NumPy
  from a seed taken from `rng`: the shapes come from `jax.eval_shape`, because compiling ~170 threefry
  draws in one XLA program takes tens of seconds on CPU."""
  c = hidden_dim
  shapes = jax.eval_shape(model.init, rng, jnp.zeros((4, c), dtype), jnp.zeros((2, 2, c), dtype))["params"]
  seed = np.asarray(jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key)
                    else rng).astype(np.uint32)
  generator = np.random.default_rng(seed.tolist())

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in, fan_out = leaf.shape
      bound = np.sqrt(6.0 / (fan_in + fan_out))
      value = generator.uniform(-bound, bound, leaf.shape)
    elif name == "scale":
      value = np.ones(leaf.shape)
    else:
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)
