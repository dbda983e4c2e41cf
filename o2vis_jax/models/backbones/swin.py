"""Swin Transformer (v1) backbone, as Mask2Former's `D2SwinTransformer` and transformers' `SwinBackbone`.

Patch embedding: the image is padded with zeros at the bottom / right to a multiple of the patch, a
patch x patch conv with stride patch, then a LayerNorm (`patch_norm`). Four stages (params
`layers_{l}`, res2..res5 at strides 4..32) of `depths[l]` blocks of width embed_dim * 2^l:

  x = x + WindowAttention(pad(LN(x)))[:H, :W];  x = x + MLP(LN(x))    (pre-norm, GELU exact)

Each block pads its normed input with zeros to whole windows (the padding is NOT masked: the zero tokens
are keys and values, as in both references), partitions it into window x window windows and runs
multi-head self-attention with a learned relative position bias (`relative_position_bias_table`
[(2w-1)^2, heads], indexed by `relative_position_index`). Odd blocks first roll the map by
-window // 2 (shifted windows) and add the attention mask (-100 between tokens of different regions of
the rolled map, regions cut at -window and -shift of the padded size, computed once per stage from the
static shapes), then roll back. The same partition is used whatever the resolution (transformers'
`always_partition=True`, which its backbone passes; `SwinModel` instead shrinks the window to a smaller
map and then drops the shift; the segmenter references do not).
After its blocks a stage's output gets its own LayerNorm (`norm{l}`) -> res{l+2}; stages 0..2 then merge
2x2 patches (zero-padded to even sizes: concat of [0::2, 0::2], [1::2, 0::2], [0::2, 1::2], [1::2, 1::2],
LayerNorm(4C), Linear(4C -> 2C, no bias)), so the next stage is ceil(H / 2) x ceil(W / 2).

The attention scale is applied to q before q.k (D2); transformers divides q.k after: equal up to
rounding. q, k, v are separate Dense layers (D2's fused `qkv` rows are split at import).
Absolute position embedding (`ape`, off in every Mask2Former config): a learned [P, P, C] grid,
P = pretrain_image_size // patch_size, resized to the patch grid by PyTorch's
`F.interpolate(size=..., mode='bicubic', align_corners=False)` and added after the patch embedding's norm;
`pretrain_image_size` matters only there. Not implemented: stochastic depth (`drop_path_rate`, training only).
"""

import functools
from typing import Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Mask2Former's Swin configs (configs/*/swin/*.yaml; base and large are the ImageNet-22k 384 models).
PRESETS = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                 pretrain_image_size=224),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7,
                  pretrain_image_size=224),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12,
                 pretrain_image_size=384),
    "large": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12,
                  pretrain_image_size=384),
}
MASKED = -100.0   # the references' attention-mask value between regions (not -inf).


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
  """[w*w, w*w] int64: row of the bias table for (query token, key token) of a window (row-major)."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return relative[..., 0] * (2 * window - 1) + relative[..., 1]


@functools.lru_cache(maxsize=None)
def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """[num_windows, w*w, w*w] float32 additive mask of the shifted windows of a padded height x width map:
  0 between tokens of the same region of the rolled map, MASKED otherwise (the references' slices)."""
  regions = np.zeros((height, width), np.float32)
  cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  label = 0
  for rows in cuts:
    for cols in cuts:
      regions[rows, cols] = label
      label += 1
  windows = _partition(regions[None, :, :, None], window)[0, :, :, 0]        # [nW, N]
  return np.where(windows[:, None, :] != windows[:, :, None], MASKED, 0.0).astype(np.float32)


def _partition(x, window: int):
  """[B, H, W, C] (H, W multiples of window) -> [B, num_windows, window * window, C], windows row-major."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // window) * (w // window), window * window, c)


def _reverse(windows, window: int, height: int, width: int):
  b, _, _, c = windows.shape
  x = windows.reshape(b, height // window, width // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, width, c)


@functools.lru_cache(maxsize=None)
def bicubic_size_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] float64 weights of `F.interpolate(size=out, mode='bicubic', align_corners=False)` along one
  axis: source (d + 0.5) * in / out - 0.5 (not clamped), taps floor - 1 .. floor + 2 clamped to the border,
  cubic convolution with A = -0.75."""
  a = -0.75
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1          # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a     # 1 < |x| < 2
  source = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
  index = np.floor(source).astype(np.int64)
  t = source - index
  matrix = np.zeros((out_size, in_size))
  rows = np.arange(out_size)
  for tap, weight in zip(range(-1, 3), (far(t + 1), near(t), near(1 - t), far(2 - t))):
    np.add.at(matrix, (rows, np.clip(index + tap, 0, in_size - 1)), weight)
  return matrix


def _layer_norm(name, eps, dtype, param_dtype):
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)


class WindowAttention(nn.Module):
  """Multi-head self-attention inside each window, with the relative position bias."""
  dim: int
  num_heads: int
  window_size: int
  qkv_bias: bool = True
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, windows, mask=None):
    """windows [B, nW, N, C]; mask [nW, N, N] or None -> [B, nW, N, C]."""
    w, heads = self.window_size, self.num_heads
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * w - 1) ** 2, heads), self.param_dtype)
    dense = functools.partial(nn.Dense, self.dim, dtype=self.dtype, param_dtype=self.param_dtype)
    shape = windows.shape[:-1] + (heads, self.dim // heads)
    q = dense(use_bias=self.qkv_bias, name="query")(windows).reshape(shape)
    k = dense(use_bias=self.qkv_bias, name="key")(windows).reshape(shape)
    v = dense(use_bias=self.qkv_bias, name="value")(windows).reshape(shape)
    q = q * jnp.asarray((self.dim // heads) ** -0.5, q.dtype)
    logits = jnp.einsum("bwnhd,bwmhd->bwhnm", q, k)
    bias = jnp.take(table, relative_position_index(w).reshape(-1), axis=0).reshape(w * w, w * w, heads)
    logits = logits + jnp.transpose(bias, (2, 0, 1)).astype(logits.dtype)
    if mask is not None:
      logits = logits + jnp.asarray(mask, logits.dtype)[None, :, None]
    weights = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    out = jnp.einsum("bwhnm,bwmhd->bwnhd", weights.astype(v.dtype), v)
    return dense(name="proj")(out.reshape(windows.shape[:-1] + (self.dim,)))


class SwinBlock(nn.Module):
  """LN -> (shifted) window attention -> residual; LN -> MLP -> residual. x: [B, H, W, C]."""
  dim: int
  num_heads: int
  window_size: int
  shift: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  norm_eps: float = 1e-5
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    _, height, width, _ = x.shape
    w, shift = self.window_size, self.shift
    y = _layer_norm("norm1", self.norm_eps, self.dtype, self.param_dtype)(x)
    y = jnp.pad(y, ((0, 0), (0, -height % w), (0, -width % w), (0, 0)))
    padded_h, padded_w = y.shape[1:3]
    mask = None
    if shift:
      y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
      mask = shifted_window_mask(padded_h, padded_w, w, shift)
    y = WindowAttention(self.dim, self.num_heads, w, self.qkv_bias, self.dtype, self.param_dtype,
                        name="attn")(_partition(y, w), mask)
    y = _reverse(y, w, padded_h, padded_w)
    if shift:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    x = x + y[:, :height, :width]
    y = _layer_norm("norm2", self.norm_eps, self.dtype, self.param_dtype)(x)
    y = nn.Dense(int(self.dim * self.mlp_ratio), dtype=self.dtype, param_dtype=self.param_dtype,
                 name="fc1")(y)
    y = nn.Dense(self.dim, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="fc2")(nn.gelu(y, approximate=False))
    return x + y


class PatchMerging(nn.Module):
  """2x2 neighbours concatenated (zero-padded to even sizes), LayerNorm(4C), Linear(4C -> 2C)."""
  dim: int
  norm_eps: float = 1e-5
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    _, height, width, _ = x.shape
    x = jnp.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    x = _layer_norm("norm", self.norm_eps, self.dtype, self.param_dtype)(x)
    return nn.Dense(2 * self.dim, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="reduction")(x)


class SwinStage(nn.Module):
  """`depth` blocks (odd ones shifted), then the patch merging of stages 0..2 (`downsample`)."""
  dim: int
  depth: int
  num_heads: int
  window_size: int
  downsample: bool
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  norm_eps: float = 1e-5
  remat: bool = False
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    block = nn.remat(SwinBlock) if self.remat else SwinBlock
    for i in range(self.depth):
      x = block(self.dim, self.num_heads, self.window_size, 0 if i % 2 == 0 else self.window_size // 2,
                self.mlp_ratio, self.qkv_bias, self.norm_eps, self.dtype, self.param_dtype,
                name=f"blocks_{i}")(x)
    down = None
    if self.downsample:
      down = PatchMerging(self.dim, self.norm_eps, self.dtype, self.param_dtype, name="downsample")(x)
    return x, down


class SwinTransformer(nn.Module):
  """x: [B, H, W, 3] normalised image (any H, W) -> {'res2'..'res5'}: [B, ceil(H / 4 / 2^l), ...,
  embed_dim * 2^l]. Params named like D2SwinTransformer's (`patch_embed`, `layers_{l}/blocks_{i}`,
  `norm{l}`) so that weight import is a table."""
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 7
  patch_size: int = 4
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  patch_norm: bool = True
  norm_eps: float = 1e-5
  ape: bool = False              # absolute position embedding (module docstring).
  pretrain_image_size: int = 224
  remat: bool = False            # jax.checkpoint per block (training large models).
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x) -> Dict[str, jnp.ndarray]:
    _check(self.embed_dim, self.depths, self.num_heads, self.window_size, self.patch_size)
    p = self.patch_size
    _, height, width, _ = x.shape
    x = jnp.pad(x, ((0, 0), (0, -height % p), (0, -width % p), (0, 0)))
    x = PatchEmbed(self.embed_dim, p, self.patch_norm, self.norm_eps, self.dtype, self.param_dtype,
                   name="patch_embed")(x)
    if self.ape:
      grid = self.pretrain_image_size // p
      table = self.param("absolute_pos_embed", nn.initializers.truncated_normal(0.02),
                         (grid, grid, self.embed_dim), self.param_dtype)
      rows = jnp.asarray(bicubic_size_matrix(grid, x.shape[1]), table.dtype)
      cols = jnp.asarray(bicubic_size_matrix(grid, x.shape[2]), table.dtype)
      resized = jnp.einsum("yi,ijc,xj->yxc", rows, table, cols, precision=jax.lax.Precision.HIGHEST)
      x = x + resized.astype(x.dtype)[None]
    features = {}
    for level, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      dim = self.embed_dim * 2 ** level
      out, down = SwinStage(dim, depth, heads, self.window_size, level < len(self.depths) - 1,
                            self.mlp_ratio, self.qkv_bias, self.norm_eps, self.remat, self.dtype,
                            self.param_dtype, name=f"layers_{level}")(x)
      features[f"res{level + 2}"] = _layer_norm(f"norm{level}", self.norm_eps, self.dtype,
                                                self.param_dtype)(out)
      x = down
    return features


class PatchEmbed(nn.Module):
  embed_dim: int
  patch_size: int
  patch_norm: bool = True
  norm_eps: float = 1e-5
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                param_dtype=self.param_dtype, name="proj")(x)
    if self.patch_norm:
      x = _layer_norm("norm", self.norm_eps, self.dtype, self.param_dtype)(x)
    return x


def _check(embed_dim, depths, num_heads, window_size, patch_size, where="config.model.backbone"):
  """ValueError naming the field for a Swin that cannot be built."""
  if len(depths) != 4 or len(num_heads) != 4:
    raise ValueError(f"{where}.depths / num_heads: 4 stages (res2..res5), got {tuple(depths)} / "
                     f"{tuple(num_heads)}")
  if min(depths) < 1 or min(num_heads) < 1 or embed_dim < 1 or patch_size < 1:
    raise ValueError(f"{where}: depths {tuple(depths)}, num_heads {tuple(num_heads)}, embed_dim {embed_dim} "
                     f"and patch_size {patch_size} must be positive")
  if window_size < 2:
    raise ValueError(f"{where}.window_size={window_size} must be >= 2 (the shift is window_size // 2)")
  for level, heads in enumerate(num_heads):
    if (embed_dim * 2 ** level) % heads:
      raise ValueError(f"{where}.num_heads[{level}]={heads} must divide the stage width "
                       f"embed_dim * 2^{level} = {embed_dim * 2 ** level}")


def backbone_config(variant: str = "tiny", **overrides) -> ml_collections.ConfigDict:
  """`config.model.backbone` of a Swin: Mask2Former's preset `variant` (tiny / small / base / large;
  'large' = Swin-L 384, window 12) with `overrides`."""
  if variant not in PRESETS:
    raise ValueError(f"no Swin preset {variant!r}; presets: {sorted(PRESETS)}")
  config = dict(name="swin", patch_size=4, mlp_ratio=4.0, qkv_bias=True, patch_norm=True, norm_eps=1e-5,
                ape=False,     # absolute position embedding (pretrain_image_size // patch_size grid)
                remat=False)   # remat: jax.checkpoint per block (training large backbones).
  config.update(PRESETS[variant])
  config.update(overrides)
  for name in ("depths", "num_heads"):
    config[name] = tuple(int(v) for v in config[name])
  return ml_collections.ConfigDict(config)


def check_config(backbone_config, where: str = "config.model.backbone") -> None:
  """ValueError naming the field for a section that cannot be built (missing fields: the tiny preset's)."""
  get = lambda name: backbone_config.get(name, PRESETS["tiny"].get(name, 4))
  _check(get("embed_dim"), tuple(get("depths")), tuple(get("num_heads")), get("window_size"),
         get("patch_size"), where)


def from_config(backbone_config, dtype=None, param_dtype=jnp.float32,
                name: Optional[str] = None) -> SwinTransformer:
  """The Swin of a `config.model.backbone` section (name='swin', fields of `backbone_config()`)."""
  s = backbone_config
  check_config(s)
  return SwinTransformer(embed_dim=s.embed_dim, depths=tuple(s.depths), num_heads=tuple(s.num_heads),
                         window_size=s.window_size, patch_size=s.patch_size, mlp_ratio=s.mlp_ratio,
                         qkv_bias=s.qkv_bias, patch_norm=s.patch_norm, norm_eps=s.norm_eps,
                         ape=s.get("ape", False), pretrain_image_size=s.get("pretrain_image_size", 224),
                         remat=s.get("remat", False), dtype=dtype, param_dtype=param_dtype, name=name)
