"""Plain-ViT backbones with a ViT-Adapter, as in the released ViT checkpoints of LOMM / O2VIS, DVIS++,
DVIS-DAQ and CAVIS (`../shared/reference/vit_adapter.md` is the contract for the DINOv2 variant).

Two variants, chosen by `vit`:
* 'dinov2' (`D2VitAdapterDinoV2`, the memory-efficient adapter): a DINOv2 ViT (class token, LayerScale,
  global attention) whose token stream the adapter never modifies (no injector); after each interaction
  the adapter's multi-scale queries c read the ViT tokens with one-level deformable attention (Extractor).
* 'sam' (LOMM's `SAMAdapter`, O2VIS's ViT-H setting): the SAM image encoder's ViT (no class token,
  windowed attention with a few global blocks, decomposed relative positions) and the full interaction
  block: an Injector (the ViT tokens read the three levels of c with deformable attention, added scaled
  by `gamma`) before each group of blocks, then the Extractor. The SAM `neck` is dead in the adapter.

Both share the spatial prior module (a conv stem giving c1..c4 at strides 4..32), the Extractor with
its ConvFFN (one depthwise 3x3 conv shared by the three levels of c), the transposed-conv upsampling of
c2 into c1, the bilinear addition of the ViT maps and the four output BatchNorms (eval statistics).

Input: [B, H, W, 3] normalised images ((rgb - mean) / std), H and W multiples of 32 (the reference has
no padding of its own). Output: {'res2'..'res5'}: [B, H/s, W/s, embed_dim] for s = 4, 8, 16, 32.
Submodules are named like the PyTorch modules (`blocks_3` for `blocks.3`), so weight import is a
mechanical rename (`checkpoint_conversion/backbones.py`).
"""

import functools
from typing import Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from o2vis_jax.models.backbones.resnet import FrozenBatchNorm
from o2vis_jax.models.deformable_attention import MSDeformAttn
from o2vis_jax.models.resize import interpolation_matrix, resize_bilinear

VITS = ("dinov2", "sam")

# get_models / get_adapter_args of the authors' code, by MODEL.VIT_ADAPTER.NAME (DINOv2) or
# MODEL.SAM_ADAPTER.NAME (SAM); sizes of the ViT and of the adapter.
PRESETS = {
    ("dinov2", "vits"): dict(embed_dim=384, depth=12, num_heads=6, deform_num_heads=6,
                             interaction_indexes=((0, 2), (3, 5), (6, 8), (9, 11))),
    ("dinov2", "vitb"): dict(embed_dim=768, depth=12, num_heads=12, deform_num_heads=12,
                             interaction_indexes=((0, 2), (3, 5), (6, 8), (9, 11))),
    ("dinov2", "vitl"): dict(embed_dim=1024, depth=24, num_heads=16, deform_num_heads=16,
                             interaction_indexes=((0, 5), (6, 11), (12, 17), (18, 23))),
    ("dinov2", "vitg"): dict(embed_dim=1536, depth=40, num_heads=24, deform_num_heads=24,
                             interaction_indexes=((0, 9), (10, 19), (20, 29), (30, 39))),
    ("sam", "vitl"): dict(embed_dim=1024, depth=24, num_heads=16, deform_num_heads=16,
                          global_attn_indexes=(5, 11, 17, 23),
                          interaction_indexes=((0, 5), (6, 11), (12, 17), (18, 23))),
    ("sam", "vith"): dict(embed_dim=1280, depth=32, num_heads=16, deform_num_heads=16,
                          global_attn_indexes=(7, 15, 23, 31),
                          interaction_indexes=((0, 7), (8, 15), (16, 23), (24, 31))),
}


def backbone_config(vit: str = "dinov2", name: str = "vitl", **overrides) -> ml_collections.ConfigDict:
  """`config.model.backbone` of a ViT-Adapter: the authors' preset `name` ('vitl' = the released
  DINOv2 ViT-L, ('sam', 'vith') = LOMM's SAM ViT-H), with `overrides`."""
  if (vit, name) not in PRESETS:
    raise ValueError(f"no ViT-Adapter preset {name!r} for vit={vit!r}; presets: {sorted(PRESETS)}")
  config = dict(
      name="vit_adapter",
      vit=vit,
      patch_size=16,
      # Pretrain size of the positional embedding: its grid is pretrain_size // patch_size (DINOv2: 592
      # -> 37 x 37; SAM: 1024 -> 64 x 64); other inputs resize it (bicubic, see `resize_pos_embed`).
      pretrain_size=592 if vit == "dinov2" else 1024,
      mlp_ratio=4.0,
      layer_scale=vit == "dinov2",   # DINOv2 LayerScale (init_values 1e-5 -> ls1 / ls2 gammas).
      qkv_bias=True,
      proj_bias=True,                # DINOv2: bias of attn.proj and of the MLP (proj_bias, ffn_bias).
      ffn_bias=True,
      norm_eps=1e-6,                 # every LayerNorm of the ViT and of the adapter.
      bn_eps=1e-5,                   # SyncBatchNorm (eval) of the spatial prior module and the outputs.
      window_size=14,                # SAM: windowed attention except in global_attn_indexes.
      global_attn_indexes=(),
      use_rel_pos=True,              # SAM: decomposed relative positions in every block.
      conv_inplane=64,
      n_points=4,
      with_cffn=True,
      cffn_ratio=0.25,
      add_vit_feature=True,
      use_extra_extractor=True,
      remat=False,                   # jax.checkpoint per ViT block (training large backbones).
  )
  config.update(PRESETS[(vit, name)])
  config.update(overrides)
  config["interaction_indexes"] = tuple(tuple(int(i) for i in pair) for pair in config["interaction_indexes"])
  config["global_attn_indexes"] = tuple(int(i) for i in config["global_attn_indexes"])
  return ml_collections.ConfigDict(config)


# ---------------------------------------------------------------------------------------------------
# Resizing with PyTorch's exact coordinate rules.

def _cubic_weights(t, a=-0.75):
  """PyTorch's 4 bicubic coefficients for fraction t (taps at floor - 1 .. floor + 2)."""
  def near(x):   # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1
  def far(x):    # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  one = np.float32(1)
  return [far(t + one), near(t), near(one - t), far(one - t + one)]


@functools.lru_cache(maxsize=None)
def bicubic_scale_factor_matrix(in_size: int, out_size: int, scale_factor: float) -> np.ndarray:
  """[out, in] weights of `F.interpolate(mode='bicubic', scale_factor=scale_factor, align_corners=False)`
  along one axis, computed in float32 as PyTorch does for a float32 input.

  With a scale factor PyTorch maps output pixel d to source (d + 0.5) / scale_factor - 0.5 (not
  in_size / out_size); taps are clamped to the border (replicate); kernel a = -0.75."""
  scale = np.float32(1.0 / scale_factor)
  # scale * (d + 0.5) - 0.5 rounded once (a fused multiply-add, as the compiled kernel computes it).
  source = (np.float64(scale) * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
  index = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  frac = np.clip(source - index.astype(np.float32), np.float32(0), np.float32(1))
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  for tap, weight in zip(range(-1, 3), _cubic_weights(frac)):
    np.add.at(matrix, (rows, np.clip(index + tap, 0, in_size - 1)), weight)
  return matrix


def resize_pos_embed(grid: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
  """The pretrain positional grid [G, G, D] resized to the token grid [height, width, D].

  DINOv2's `interpolate_pos_encoding` (and LOMM's SAM copy of it): unchanged when height == width == G,
  otherwise bicubic with scale factors ((height + 0.1) / G, (width + 0.1) / G) (the first is the
  height), in float32 (`pos_embed.float()`) and cast back."""
  size = grid.shape[0]
  if height == size and width == size:
    return grid
  rows = jnp.asarray(bicubic_scale_factor_matrix(size, height, (height + 0.1) / size))
  cols = jnp.asarray(bicubic_scale_factor_matrix(size, width, (width + 0.1) / size))
  resized = jnp.einsum("yi,ijd,xj->yxd", rows, grid.astype(jnp.float32), cols,
                       precision=jax.lax.Precision.HIGHEST)
  return resized.astype(grid.dtype)


def reference_points(shapes: Sequence[Tuple[int, int]]) -> np.ndarray:
  """[1, sum h*w, 1, 2] (x, y) centres of every cell of every grid, normalised, in float32
  (`get_reference_points` of the adapter)."""
  points = []
  for h, w in shapes:
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float32) + np.float32(0.5),
                         np.arange(w, dtype=np.float32) + np.float32(0.5), indexing="ij")
    points.append(np.stack([xs.reshape(-1) / np.float32(w), ys.reshape(-1) / np.float32(h)], -1))
  return np.concatenate(points, 0)[None, :, None, :]


# ---------------------------------------------------------------------------------------------------
# The ViTs.

def _dense(features, name, dtype, param_dtype, use_bias=True):
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name)


def _layer_norm(name, eps, dtype, param_dtype):
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)


def _softmax_attention(q, k, v, bias=None):
  """q, k, v [..., heads, N, d] (q already scaled) -> [..., heads, N, d]; softmax in >= float32."""
  logits = jnp.einsum("...qd,...kd->...qk", q, k)
  if bias is not None:
    logits = logits + bias
  weights = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
  return jnp.einsum("...qk,...kd->...qd", weights.astype(v.dtype), v)


class Mlp(nn.Module):
  """Linear -> GELU (exact erf) -> Linear; `names` are the PyTorch names (DINOv2 fc1/fc2, SAM lin1/lin2)."""
  hidden: int
  names: Tuple[str, str] = ("fc1", "fc2")
  use_bias: bool = True
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = _dense(self.hidden, self.names[0], self.dtype, self.param_dtype, self.use_bias)(x)
    y = jax.nn.gelu(y, approximate=False)
    return _dense(x.shape[-1], self.names[1], self.dtype, self.param_dtype, self.use_bias)(y)


class LayerScale(nn.Module):
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(1e-5), (x.shape[-1],), self.param_dtype)
    return x * gamma.astype(x.dtype)


class DinoAttention(nn.Module):
  """softmax((q / sqrt(d)) k^T) v over all tokens; fused `qkv` [D -> 3D] and `proj`."""
  num_heads: int
  qkv_bias: bool = True
  proj_bias: bool = True
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, tokens, dim = x.shape
    depth = dim // self.num_heads
    qkv = _dense(3 * dim, "qkv", self.dtype, self.param_dtype, self.qkv_bias)(x)
    q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, depth).transpose(2, 0, 3, 1, 4)
    out = _softmax_attention(q * depth ** -0.5, k, v)
    out = out.transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
    return _dense(dim, "proj", self.dtype, self.param_dtype, self.proj_bias)(out)


class DinoBlock(nn.Module):
  """DINOv2 `NestedTensorBlock` (eval): x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))."""
  num_heads: int
  mlp_ratio: float = 4.0
  layer_scale: bool = True
  qkv_bias: bool = True
  norm_eps: float = 1e-6
  proj_bias: bool = True
  ffn_bias: bool = True
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    scale = (lambda name: LayerScale(self.param_dtype, name=name)) if self.layer_scale else (
        lambda name: (lambda y: y))
    y = DinoAttention(self.num_heads, self.qkv_bias, self.proj_bias, name="attn", **kw)(
        _layer_norm("norm1", self.norm_eps, **kw)(x))
    x = x + scale("ls1")(y)
    y = Mlp(int(x.shape[-1] * self.mlp_ratio), ("fc1", "fc2"), self.ffn_bias, name="mlp", **kw)(
        _layer_norm("norm2", self.norm_eps, **kw)(x))
    return x + scale("ls2")(y)


def relative_positions(q_size: int, k_size: int, rel_pos: jnp.ndarray) -> jnp.ndarray:
  """SAM `get_rel_pos`: [q_size, k_size, d] embeddings of the relative positions; the table is first
  resized (linear, size rule) to 2 * max(q_size, k_size) - 1 entries when it has another length."""
  length = int(2 * max(q_size, k_size) - 1)
  if rel_pos.shape[0] != length:
    matrix = jnp.asarray(interpolation_matrix(rel_pos.shape[0], length), rel_pos.dtype)
    rel_pos = jnp.einsum("li,id->ld", matrix, rel_pos, precision=jax.lax.Precision.HIGHEST)
  q_coords = np.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
  k_coords = np.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
  index = (q_coords - k_coords + (k_size - 1) * max(q_size / k_size, 1.0)).astype(np.int64)
  return rel_pos[index]


class SamAttention(nn.Module):
  """SAM / ViTDet attention on a [B, h, w, D] map with decomposed relative positions: the logits of
  query (i, j) and key (k, l) get q_ij . Rh[i - k] + q_ij . Rw[j - l] (unscaled q)."""
  num_heads: int
  rel_pos_size: Optional[Tuple[int, int]] = None   # the grid the tables were made for; None: no rel pos.
  qkv_bias: bool = True
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    batch, height, width, dim = x.shape
    heads, depth = self.num_heads, dim // self.num_heads
    qkv = _dense(3 * dim, "qkv", self.dtype, self.param_dtype, self.qkv_bias)(x)
    q, k, v = qkv.reshape(batch, height * width, 3, heads, depth).transpose(2, 0, 3, 1, 4)
    bias = None
    if self.rel_pos_size is not None:
      rel_h = self.param("rel_pos_h", nn.initializers.zeros, (2 * self.rel_pos_size[0] - 1, depth),
                         self.param_dtype)
      rel_w = self.param("rel_pos_w", nn.initializers.zeros, (2 * self.rel_pos_size[1] - 1, depth),
                         self.param_dtype)
      r_h = relative_positions(height, height, rel_h).astype(q.dtype)
      r_w = relative_positions(width, width, rel_w).astype(q.dtype)
      r_q = q.reshape(batch, heads, height, width, depth)
      term_h = jnp.einsum("bnhwc,hkc->bnhwk", r_q, r_h)
      term_w = jnp.einsum("bnhwc,wkc->bnhwk", r_q, r_w)
      bias = (term_h[..., :, None] + term_w[..., None, :]).reshape(
          batch, heads, height * width, height * width)
    out = _softmax_attention(q * depth ** -0.5, k, v, bias)
    out = out.transpose(0, 2, 1, 3).reshape(batch, height, width, dim)
    return _dense(dim, "proj", self.dtype, self.param_dtype)(out)


class SamBlock(nn.Module):
  """SAM image-encoder block on a [B, h, w, D] map: windowed attention (window_size > 0; the normed
  map is zero-padded to whole windows, the padding attended as it is, then cropped) or global attention
  (window_size 0); then the MLP (`lin1`, `lin2`)."""
  num_heads: int
  window_size: int
  global_grid: Tuple[int, int]      # rel-pos table size of a global block (the pretrain token grid).
  use_rel_pos: bool = True
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  norm_eps: float = 1e-6
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch, height, width, dim = x.shape
    size = self.window_size
    rel_pos_size = None
    if self.use_rel_pos:
      rel_pos_size = (size, size) if size > 0 else tuple(self.global_grid)
    y = _layer_norm("norm1", self.norm_eps, **kw)(x)
    if size > 0:
      pad_h, pad_w = -height % size, -width % size
      y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
      rows, cols = (height + pad_h) // size, (width + pad_w) // size
      y = y.reshape(batch, rows, size, cols, size, dim).transpose(0, 1, 3, 2, 4, 5).reshape(
          batch * rows * cols, size, size, dim)
    y = SamAttention(self.num_heads, rel_pos_size, self.qkv_bias, name="attn", **kw)(y)
    if size > 0:
      y = y.reshape(batch, rows, cols, size, size, dim).transpose(0, 1, 3, 2, 4, 5).reshape(
          batch, rows * size, cols * size, dim)[:, :height, :width]
    x = x + y
    return x + Mlp(int(dim * self.mlp_ratio), ("lin1", "lin2"), name="mlp", **kw)(
        _layer_norm("norm2", self.norm_eps, **kw)(x))


class PatchEmbed(nn.Module):
  """`patch_embed.proj`: a patch_size x patch_size conv with stride patch_size and bias."""
  embed_dim: int
  patch_size: int
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    p = self.patch_size
    return nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                   param_dtype=self.param_dtype, name="proj")(x)


class LayerNorm2d(nn.Module):
  """SAM's channel LayerNorm of an NCHW map = LayerNorm over the last axis of our NHWC map."""
  eps: float = 1e-6
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    weight = self.param("weight", nn.initializers.ones, (features,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + self.eps) * weight.astype(x.dtype) + bias.astype(x.dtype)


class VisionTransformer(nn.Module):
  """The ViT of the adapter (`vit_module`): DINOv2 (`vit='dinov2'`: class token, 37x37 pos-embed with
  a class row, DinoBlocks) or the SAM image encoder (`vit='sam'`: pos-embed [1, G, G, D], SamBlocks,
  and the `neck` that only the standalone SAM encoder uses). Methods: `embed`, `run_blocks`, `neck`."""
  config: ml_collections.ConfigDict
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32
  neck_channels: int = 0            # > 0: the SAM neck (convs + LayerNorm2d to this many channels).

  def setup(self):
    b = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    grid = b.pretrain_size // b.patch_size
    self.patch_embed = PatchEmbed(b.embed_dim, b.patch_size, **kw)
    init = nn.initializers.truncated_normal(0.02)
    if b.vit == "dinov2":
      block = nn.remat(DinoBlock) if b.remat else DinoBlock
      self.cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, b.embed_dim),
                                  self.param_dtype)
      self.pos_embed = self.param("pos_embed", init, (1, 1 + grid * grid, b.embed_dim), self.param_dtype)
      self.blocks = [block(b.num_heads, b.mlp_ratio, b.layer_scale, b.qkv_bias, b.norm_eps, b.proj_bias,
                           b.ffn_bias, **kw)
                     for _ in range(b.depth)]
    elif b.vit == "sam":
      block = nn.remat(SamBlock) if b.remat else SamBlock
      self.pos_embed = self.param("pos_embed", init, (1, grid, grid, b.embed_dim), self.param_dtype)
      self.blocks = [block(b.num_heads, 0 if i in b.global_attn_indexes else b.window_size, (grid, grid),
                           b.use_rel_pos, b.mlp_ratio, b.qkv_bias, b.norm_eps, **kw)
                     for i in range(b.depth)]
      if self.neck_channels:
        c = self.neck_channels
        self.neck_0 = nn.Conv(c, (1, 1), use_bias=False, **kw)
        self.neck_1 = LayerNorm2d(1e-6, **kw)
        self.neck_2 = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, **kw)
        self.neck_3 = LayerNorm2d(1e-6, **kw)
    else:
      raise ValueError(f"config.model.backbone.vit: {b.vit!r} is not one of {VITS}")

  def embed(self, images):
    """Patch tokens plus the (resized) positional embedding: DINOv2 -> (cls [B, 1, D], tokens [B, h, w, D]);
    SAM -> (None, tokens [B, h, w, D])."""
    x = self.patch_embed(images)
    batch, height, width, dim = x.shape
    if self.config.vit == "dinov2":
      grid = int(round((self.pos_embed.shape[1] - 1) ** 0.5))
      pos = resize_pos_embed(self.pos_embed[0, 1:].reshape(grid, grid, dim), height, width)
      cls = jnp.broadcast_to(self.cls_token + self.pos_embed[:, :1], (batch, 1, dim)).astype(x.dtype)
      return cls, x + pos.astype(x.dtype)
    pos = resize_pos_embed(self.pos_embed[0], height, width)
    return None, x + pos.astype(x.dtype)

  def run_blocks(self, cls, x, start: int, end: int):
    """Blocks start..end (inclusive) on the map x [B, h, w, D] (DINOv2: with the class token)."""
    batch, height, width, dim = x.shape
    if self.config.vit == "dinov2":
      tokens = jnp.concatenate([cls, x.reshape(batch, height * width, dim)], axis=1)
      for block in self.blocks[start:end + 1]:
        tokens = block(tokens)
      return tokens[:, :1], tokens[:, 1:].reshape(batch, height, width, dim)
    for block in self.blocks[start:end + 1]:
      x = block(x)
    return cls, x

  def neck(self, x):
    return self.neck_3(self.neck_2(self.neck_1(self.neck_0(x))))


class SamImageEncoder(nn.Module):
  """SAM's `ImageEncoderViT` (segment-anything): patch embedding + pos-embed, the blocks and the neck,
  [B, H, W, 3] (SAM-normalised, H = W = img_size) -> [B, H/16, W/16, out_chans]. Its params are the
  `image_encoder.*` weights of a SAM checkpoint (`vit_module` of the SAM adapter, plus the neck)."""
  config: ml_collections.ConfigDict
  out_chans: int = 256
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    vit = VisionTransformer(self.config, self.dtype, self.param_dtype, self.out_chans, name="vit_module")
    _, x = vit.embed(images)
    _, x = vit.run_blocks(None, x, 0, self.config.depth - 1)
    return vit.neck(x)


# ---------------------------------------------------------------------------------------------------
# The adapter.

class SpatialPriorModule(nn.Module):
  """Conv stem -> c1 (1/4, a map), c2, c3, c4 (1/8, 1/16, 1/32 maps), each projected to embed_dim."""
  inplanes: int
  embed_dim: int
  bn_eps: float = 1e-5
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def conv_bn_relu(x, features, stride, conv_name, bn_name):
      x = nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=False,
                  name=conv_name, **kw)(x)
      return nn.relu(FrozenBatchNorm(self.bn_eps, name=bn_name, **kw)(x))

    i = self.inplanes
    c1 = conv_bn_relu(x, i, 2, "stem_0", "stem_1")
    c1 = conv_bn_relu(c1, i, 1, "stem_3", "stem_4")
    c1 = conv_bn_relu(c1, i, 1, "stem_6", "stem_7")
    c1 = nn.max_pool(c1, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))   # pads with -inf.
    c2 = conv_bn_relu(c1, 2 * i, 2, "conv2_0", "conv2_1")
    c3 = conv_bn_relu(c2, 4 * i, 2, "conv3_0", "conv3_1")
    c4 = conv_bn_relu(c3, 4 * i, 2, "conv4_0", "conv4_1")
    project = lambda c, name: nn.Conv(self.embed_dim, (1, 1), name=name, **kw)(c)
    return project(c1, "fc1"), project(c2, "fc2"), project(c3, "fc3"), project(c4, "fc4")


class DWConv(nn.Module):
  """One depthwise 3x3 conv (zero padding, bias) applied to each level of c separately."""
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, level_shapes):
    batch, _, channels = tokens.shape
    conv = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=channels,
                   dtype=self.dtype, param_dtype=self.param_dtype, name="dwconv")
    outs, start = [], 0
    for h, w in level_shapes:
      level = tokens[:, start:start + h * w].reshape(batch, h, w, channels)
      outs.append(conv(level).reshape(batch, h * w, channels))
      start += h * w
    return jnp.concatenate(outs, axis=1)


class ConvFFN(nn.Module):
  hidden: int
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, level_shapes):
    y = _dense(self.hidden, "fc1", self.dtype, self.param_dtype)(x)
    y = DWConv(self.dtype, self.param_dtype, name="dwconv")(y, level_shapes)
    y = jax.nn.gelu(y, approximate=False)
    return _dense(x.shape[-1], "fc2", self.dtype, self.param_dtype)(y)


class Extractor(nn.Module):
  """c += MSDeformAttn(query_norm(c), ref, feat_norm(x)) on the one ViT level; then
  c += ConvFFN(ffn_norm(c)) (with_cffn). `deform_ratio` of the reference is ignored there too: the
  value projection is D x D."""
  num_heads: int
  num_points: int
  with_cffn: bool = True
  cffn_ratio: float = 0.25
  norm_eps: float = 1e-6
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query, reference, feat, feat_shape, level_shapes):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = MSDeformAttn(self.num_heads, 1, self.num_points, name="attn", **kw)(
        _layer_norm("query_norm", self.norm_eps, **kw)(query), reference,
        _layer_norm("feat_norm", self.norm_eps, **kw)(feat), [feat_shape])
    query = query + attn
    if self.with_cffn:
      query = query + ConvFFN(int(query.shape[-1] * self.cffn_ratio), name="ffn", **kw)(
          _layer_norm("ffn_norm", self.norm_eps, **kw)(query), level_shapes)
    return query


class Injector(nn.Module):
  """x += gamma * MSDeformAttn(query_norm(x), ref, feat_norm(c)) over the three levels of c (SAM)."""
  num_heads: int
  num_points: int
  norm_eps: float = 1e-6
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query, reference, feat, level_shapes):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    attn = MSDeformAttn(self.num_heads, len(level_shapes), self.num_points, name="attn", **kw)(
        _layer_norm("query_norm", self.norm_eps, **kw)(query), reference,
        _layer_norm("feat_norm", self.norm_eps, **kw)(feat), level_shapes)
    gamma = self.param("gamma", nn.initializers.constant(1e-6), (query.shape[-1],), self.param_dtype)
    return query + gamma.astype(attn.dtype) * attn


class Interaction(nn.Module):
  """`interactions.{i}`: injector (SAM only), extractor, and for the last one two extra extractors."""
  config: ml_collections.ConfigDict
  with_injector: bool
  with_extra_extractors: bool
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  def setup(self):
    b = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    extractor = lambda: Extractor(b.deform_num_heads, b.n_points, b.with_cffn, b.cffn_ratio, b.norm_eps, **kw)
    if self.with_injector:
      self.injector = Injector(b.deform_num_heads, b.n_points, b.norm_eps, **kw)
    self.extractor = extractor()
    if self.with_extra_extractors:
      self.extra_extractors = [extractor() for _ in range(2)]

  def inject(self, x_tokens, c, reference, level_shapes):
    return self.injector(x_tokens, reference, c, level_shapes)

  def extract(self, c, reference, x_tokens, feat_shape, level_shapes):
    c = self.extractor(c, reference, x_tokens, feat_shape, level_shapes)
    if self.with_extra_extractors:
      for extractor in self.extra_extractors:
        c = extractor(c, reference, x_tokens, feat_shape, level_shapes)
    return c


class ConvTranspose2x2(nn.Module):
  """PyTorch ConvTranspose2d(D, D, 2, stride 2): out[2i + a, 2j + b] = bias + W[:, :, a, b]^T x[i, j].
  kernel [2, 2, in, out] = torch weight [in, out, 2, 2] transposed (2, 3, 0, 1)."""
  features: int
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, x.shape[-1], self.features),
                        self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    dtype = self.dtype or x.dtype
    batch, height, width, _ = x.shape
    y = jnp.einsum("nijc,abco->niajbo", x.astype(dtype), kernel.astype(dtype))
    return y.reshape(batch, 2 * height, 2 * width, self.features) + bias.astype(dtype)


class ViTAdapter(nn.Module):
  """The ViT-Adapter backbone ('dinov2': D2VitAdapterDinoV2; 'sam': LOMM's SAMAdapter).

  config: `config.model.backbone` (see `backbone_config`). __call__(images [B, H, W, 3] normalised,
  H and W multiples of 32) -> {'res2'..'res5'}."""
  config: ml_collections.ConfigDict
  dtype: Optional[jnp.dtype] = None
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images) -> Dict[str, jnp.ndarray]:
    b = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"vit_adapter: images must be [B, H, W, 3], got shape {images.shape}")
    batch, height, width, _ = images.shape
    if height % 32 or width % 32:
      raise ValueError(f"vit_adapter: image size {(height, width)} must be a multiple of 32 (pad it)")
    if b.patch_size != 16:
      raise ValueError(f"config.model.backbone.patch_size: {b.patch_size}; the adapter needs 16 (its "
                       "level shapes are H/8, H/16, H/32)")
    dim = b.embed_dim
    h, w = height // 16, width // 16
    level_shapes = [(2 * h, 2 * w), (h, w), (h // 2, w // 2)]

    c1, c2, c3, c4 = SpatialPriorModule(b.conv_inplane, dim, b.bn_eps, name="spm", **kw)(images)
    level_embed = self.param("level_embed", nn.initializers.normal(1.0), (3, dim), self.param_dtype)
    c = jnp.concatenate([level.reshape(batch, -1, dim) + level_embed[i].astype(level.dtype)
                         for i, level in enumerate((c2, c3, c4))], axis=1)

    vit = VisionTransformer(b, name="vit_module", **kw)
    cls, x = vit.embed(images)
    # Reference points in float32, as the reference's get_reference_points.
    extract_ref = jnp.asarray(reference_points(level_shapes))
    inject_ref = jnp.asarray(reference_points([(h, w)]))
    extract_ref = jnp.broadcast_to(extract_ref, (batch, extract_ref.shape[1], 1, 2))
    inject_ref = jnp.broadcast_to(inject_ref, (batch, h * w, 3, 2))
    injector = b.vit == "sam"
    outs = []
    last = len(b.interaction_indexes) - 1
    for i, (start, end) in enumerate(b.interaction_indexes):
      layer = Interaction(b, injector, b.use_extra_extractor and i == last, name=f"interactions_{i}", **kw)
      if injector:
        x = layer.inject(x.reshape(batch, h * w, dim), c, inject_ref, level_shapes).reshape(batch, h, w, dim)
      cls, x = vit.run_blocks(cls, x, start, end)
      c = layer.extract(c, extract_ref, x.reshape(batch, h * w, dim), (h, w), level_shapes)
      outs.append(x)

    sizes = [s[0] * s[1] for s in level_shapes]
    c2 = c[:, :sizes[0]].reshape(batch, 2 * h, 2 * w, dim)
    c3 = c[:, sizes[0]:sizes[0] + sizes[1]].reshape(batch, h, w, dim)
    c4 = c[:, sizes[0] + sizes[1]:].reshape(batch, h // 2, w // 2, dim)
    c1 = ConvTranspose2x2(dim, name="up", **kw)(c2) + c1
    if b.add_vit_feature:
      c1 = c1 + resize_bilinear(outs[0], 4 * h, 4 * w, 1, 2)
      c2 = c2 + resize_bilinear(outs[1], 2 * h, 2 * w, 1, 2)
      c3 = c3 + outs[2]
      c4 = c4 + resize_bilinear(outs[3], h // 2, w // 2, 1, 2)
    return {f"res{k + 2}": FrozenBatchNorm(b.bn_eps, name=f"norm{k + 1}", **kw)(level)
            for k, level in enumerate((c1, c2, c3, c4))}


def from_config(backbone_config, dtype=None, param_dtype=jnp.float32, name: Optional[str] = None) -> ViTAdapter:
  """The ViT-Adapter of a `config.model.backbone` section (name='vit_adapter')."""
  b = backbone_config
  if not isinstance(b, ml_collections.ConfigDict):
    b = ml_collections.ConfigDict(dict(b))
  if b.get("vit") not in VITS:
    raise ValueError(f"config.model.backbone.vit: {b.get('vit')!r} is not one of {VITS}")
  return ViTAdapter(b, dtype=dtype, param_dtype=param_dtype, name=name)


def check_config(b, path: str = "config.model.backbone") -> None:
  """Raises ValueError naming the first field of a vit_adapter section that cannot build."""
  if b.get("vit") not in VITS:
    raise ValueError(f"{path}.vit: {b.get('vit')!r} is not one of {VITS}")
  for field in ("embed_dim", "depth", "num_heads", "deform_num_heads", "n_points", "conv_inplane",
                "pretrain_size"):
    if not isinstance(b.get(field), int) or b.get(field) <= 0:
      raise ValueError(f"{path}.{field}: must be a positive integer, got {b.get(field)!r}")
  if b.get("patch_size") != 16:
    raise ValueError(f"{path}.patch_size: {b.get('patch_size')!r}; the adapter needs 16")
  for field in ("num_heads", "deform_num_heads"):
    if b.embed_dim % b[field]:
      raise ValueError(f"{path}.embed_dim {b.embed_dim} is not divisible by {path}.{field} {b[field]}")
  covered = [i for start, end in b.interaction_indexes for i in range(start, end + 1)]
  if not b.interaction_indexes or any(not 0 <= i < b.depth for i in covered):
    raise ValueError(f"{path}.interaction_indexes {tuple(b.interaction_indexes)}: block groups must lie "
                     f"in 0..{b.depth - 1}")
  if b.vit == "sam" and any(not 0 <= i < b.depth for i in b.global_attn_indexes):
    raise ValueError(f"{path}.global_attn_indexes {tuple(b.global_attn_indexes)}: outside 0..{b.depth - 1}")
