"""Weight import for the ViT-Adapter backbones (`models/backbones/vit_adapter.py`).

* `backbone_from_detectron2(state_dict, config)`: the `backbone.*` entries of a LOMM / DVIS++ / DVIS-DAQ /
  CAVIS ViT checkpoint (`D2VitAdapterDinoV2`, or LOMM's `SAMAdapter`) -> (backbone_config, params) for
  `o2vis_jax.models.build_backbone(backbone_config)`.
* `vit_from_dinov2(state_dict, backbone_config)`: raw DINOv2 weights (ViT-L/14 release) -> the params of
  the adapter's `vit_module`, the 14x14 patch kernel resized to 16x16 as `load_pretrained_weights` does.
* `sam_encoder_from_sam(state_dict)`: the `image_encoder.*` weights of a SAM checkpoint (sam_vit_h_4b8939)
  -> (config, params) of `SamImageEncoder`; `params['vit_module']` minus the neck is the SAM adapter's ViT.

PyTorch names map to ours mechanically: list indices join their list (`blocks.3` -> `blocks_3`), Linear
weights transpose to `kernel`, conv weights [out, in, kh, kw] -> [kh, kw, in, out] (the transposed conv
`up` [in, out, kh, kw] -> [kh, kw, in, out]), norm weights -> `scale` (SAM's LayerNorm2d keeps
`weight`), running_mean / running_var -> mean / var. Every key is checked against the shapes of the
module built from the config (one error naming every missing, unexpected and mis-shaped key).
"""

import re
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from o2vis_jax.checkpoint_conversion.errors import ConversionError
from o2vis_jax.checkpoint_conversion.table import to_numpy
from o2vis_jax.models.backbones import vit_adapter

PREFIX = "backbone."
# In the checkpoints but never used by the forward (reference section 6); the SAM neck is used only by
# the SAM image encoder, not by the adapter.
DEAD_DINOV2 = ("vit_module.norm.weight", "vit_module.norm.bias", "vit_module.mask_token")
DEAD_SAM_ADAPTER = re.compile(r"^vit_module\.neck\.")
def _lookup(config, dotted: str):
  """config[dotted] for a flat key ('MODEL.VIT_ADAPTER') or a nested one (config['MODEL']['VIT_ADAPTER'])."""
  if config is None:
    return None
  try:
    if dotted in config:
      return config[dotted]
  except TypeError:
    return None
  node = config
  for part in dotted.split("."):
    try:
      if part not in node:
        return None
    except TypeError:
      return None
    node = node[part]
  return node


def _flax_path(key: str, shape: Tuple[int, ...]) -> Tuple[Tuple[str, ...], Any]:
  """(our params path, transform) for a PyTorch key (without the `backbone.` prefix)."""
  parts = []
  for part in key.split("."):
    if part.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{part}"
    else:
      parts.append(part)
  leaf, parent = parts[-1], parts[:-1]
  if leaf == "weight" and len(shape) == 4:
    if parent == ["up"]:       # ConvTranspose2d weight [in, out, kh, kw]
      return tuple(parent) + ("kernel",), lambda w: w.transpose(2, 3, 0, 1)
    return tuple(parent) + ("kernel",), lambda w: w.transpose(2, 3, 1, 0)
  if leaf == "weight" and len(shape) == 2:
    return tuple(parent) + ("kernel",), lambda w: w.T
  if leaf == "weight" and len(shape) == 1:
    is_layer_norm_2d = bool(parent) and re.fullmatch(r"neck_[13]", parent[-1])
    return tuple(parent) + ("weight" if is_layer_norm_2d else "scale",), lambda w: w
  renames = {"running_mean": "mean", "running_var": "var"}
  return tuple(parent) + (renames.get(leaf, leaf),), lambda w: w


def _expected_shapes(module) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Shapes of `module`'s params (no parameter depends on the image size; 64 x 64 is the smallest
  multiple of 32 that keeps every level non-empty)."""
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), images)["params"]
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def convert_to_params(state_dict: Mapping[str, np.ndarray], module, where: str, subtree: str = "") -> Dict:
  """PyTorch state dict (bare keys, dead keys removed) -> our params tree, checked against the params of
  `module` (only those under `subtree` when given)."""
  expected = {p: s for p, s in _expected_shapes(module).items() if not subtree or p[0] == subtree}
  params, seen, misshaped, unexpected = {}, set(), [], []
  for key, value in state_dict.items():
    path, transform = _flax_path(key, value.shape)
    if path not in expected:
      unexpected.append(key)
      continue
    seen.add(path)
    value = np.ascontiguousarray(transform(value))
    if tuple(value.shape) != expected[path]:
      misshaped.append(f"{key}: {tuple(state_dict[key].shape)} (ours {'/'.join(path)} {expected[path]})")
      continue
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  missing = sorted("/".join(p) for p in set(expected) - seen)
  if missing or unexpected or misshaped:
    problems = [f"{name} ({len(keys)}): {keys}" for name, keys in
                (("missing", missing), ("unexpected", sorted(unexpected)), ("mis-shaped", sorted(misshaped)))
                if keys]
    raise ConversionError(f"{where}: " + "; ".join(problems))
  return params


def _bare_state_dict(state_dict: Mapping[str, Any], prefix: str) -> Dict[str, np.ndarray]:
  """The entries under `prefix` without it (all entries when none has it: bare keys), NumPy values,
  num_batches_tracked counters dropped."""
  has_prefix = any(k.startswith(prefix) for k in state_dict)
  out = {}
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked") or (has_prefix and not key.startswith(prefix)):
      continue
    out[key[len(prefix):] if has_prefix else key] = to_numpy(value)
  return out


def _count(state_dict, pattern) -> int:
  indices = {int(m.group(1)) for k in state_dict for m in [re.match(pattern, k)] if m}
  return max(indices) + 1 if indices else 0


def vit_adapter_config(state_dict: Mapping[str, np.ndarray], config=None) -> ml_collections.ConfigDict:
  """The backbone config of a ViT-Adapter state dict (bare keys): sizes from the shapes, the rest from
  `config` (`MODEL.VIT_ADAPTER` / `MODEL.SAM_ADAPTER` .NAME, `get_models`, `get_adapter_args`,
  `norm_eps`) or the authors' preset of that name."""
  sd = state_dict
  where = "backbone_from_detectron2"
  if "vit_module.patch_embed.proj.weight" not in sd:
    raise ConversionError(f"{where}: no 'backbone.vit_module.patch_embed.proj.weight': not a ViT-Adapter "
                          "state dict")
  if any(re.match(r"^vit_module\.blocks\.\d+\.\d+\.", k) for k in sd):
    raise ConversionError(f"{where}: chunked DINOv2 blocks (block_chunks > 0) are not supported")
  is_sam = "vit_module.cls_token" not in sd
  vit = "sam" if is_sam else "dinov2"
  section = _lookup(config, "MODEL.SAM_ADAPTER" if is_sam else "MODEL.VIT_ADAPTER") or {}
  name = (_lookup(section, "NAME") or ("vith" if is_sam else "vitl")).lower()
  vit_args = dict(_lookup(config, "get_models") or {})
  adapter_args = dict(_lookup(config, "get_adapter_args") or {})
  if vit_args.get("ffn_layer", "mlp") != "mlp":
    raise ConversionError(f"{where}: get_models.ffn_layer={vit_args['ffn_layer']!r}; only 'mlp' is supported")
  if vit_args.get("block_chunks", 0):
    raise ConversionError(f"{where}: get_models.block_chunks={vit_args['block_chunks']}; only 0 is supported")

  patch = sd["vit_module.patch_embed.proj.weight"]
  dim, patch_size = int(patch.shape[0]), int(patch.shape[2])
  depth = _count(sd, r"^vit_module\.blocks\.(\d+)\.")
  preset = vit_adapter.PRESETS.get((vit, name), {})
  if preset and (preset["embed_dim"] != dim or preset["depth"] != depth):
    preset = {}      # a preset name with other sizes: only the config and the shapes count.
  pos = sd["vit_module.pos_embed"]
  grid = int(round((pos.shape[1] - 1) ** 0.5)) if not is_sam else int(pos.shape[1])
  fc1 = "lin1" if is_sam else "fc1"
  overrides = dict(
      patch_size=patch_size, embed_dim=dim, depth=depth, pretrain_size=grid * patch_size,
      mlp_ratio=sd[f"vit_module.blocks.0.mlp.{fc1}.weight"].shape[0] / dim,
      layer_scale="vit_module.blocks.0.ls1.gamma" in sd,
      qkv_bias="vit_module.blocks.0.attn.qkv.bias" in sd,
      proj_bias="vit_module.blocks.0.attn.proj.bias" in sd,
      ffn_bias=f"vit_module.blocks.0.mlp.{fc1}.bias" in sd,
      conv_inplane=int(sd["spm.stem.0.weight"].shape[0]),
      with_cffn="interactions.0.extractor.ffn.fc1.weight" in sd,
      use_extra_extractor=any(".extra_extractors." in k for k in sd),
      add_vit_feature=bool(adapter_args.get("add_vit_feature", True)),
  )
  if config is not None and _lookup(config, "norm_eps") is not None:
    overrides["norm_eps"] = float(_lookup(config, "norm_eps"))
  if overrides["with_cffn"]:
    overrides["cffn_ratio"] = sd["interactions.0.extractor.ffn.fc1.weight"].shape[0] / dim

  def required(field, args, source):
    if field in args:
      return args[field]
    if field in preset:
      return preset[field]
    raise ConversionError(f"{where}: config.{source}.{field} is needed (no preset {name!r} of "
                          f"embed_dim {dim}, depth {depth})")

  if is_sam:
    rel = {i: sd[f"vit_module.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)
           if f"vit_module.blocks.{i}.attn.rel_pos_h" in sd}
    overrides["use_rel_pos"] = bool(rel)
    if rel:
      overrides["num_heads"] = dim // int(next(iter(rel.values()))[1])
    else:
      overrides["num_heads"] = int(required("num_heads", vit_args, "get_models"))
    if "global_attn_indexes" in vit_args:
      overrides["global_attn_indexes"] = tuple(vit_args["global_attn_indexes"])
      overrides["window_size"] = int(vit_args.get("window_size", 14))
    elif rel:
      overrides["global_attn_indexes"] = tuple(i for i, s in rel.items() if s[0] == 2 * grid - 1)
      windowed = [s[0] for i, s in rel.items() if s[0] != 2 * grid - 1]
      overrides["window_size"] = (windowed[0] + 1) // 2 if windowed else 14
    else:
      overrides["global_attn_indexes"] = tuple(required("global_attn_indexes", vit_args, "get_models"))
      overrides["window_size"] = int(vit_args.get("window_size", 14))
  elif "num_heads" not in vit_args and not preset and dim % 64 == 0:
    overrides["num_heads"] = dim // 64     # every DINOv2 model (vits/b/l/g) has heads of 64 channels
  else:
    overrides["num_heads"] = int(required("num_heads", vit_args, "get_models"))
  overrides["deform_num_heads"] = int(required("deform_num_heads", adapter_args, "get_adapter_args"))
  sampling_points = sd["interactions.0.extractor.attn.attention_weights.weight"].shape[0]
  if sampling_points % overrides["deform_num_heads"]:
    raise ConversionError(f"{where}: interactions.0.extractor.attn.attention_weights has {sampling_points} "
                          f"outputs, not a multiple of deform_num_heads {overrides['deform_num_heads']}")
  overrides["n_points"] = sampling_points // overrides["deform_num_heads"]
  if "n_points" in adapter_args and int(adapter_args["n_points"]) != overrides["n_points"]:
    raise ConversionError(f"{where}: get_adapter_args.n_points={adapter_args['n_points']} but the "
                          f"sampling_offsets hold {overrides['n_points']} points per head")
  interactions = _count(sd, r"^interactions\.(\d+)\.")
  if "interaction_indexes" in adapter_args:
    indexes = adapter_args["interaction_indexes"]
  elif preset:
    indexes = preset["interaction_indexes"]
  elif interactions and depth % interactions == 0:
    step = depth // interactions
    indexes = [(i * step, (i + 1) * step - 1) for i in range(interactions)]
  else:
    raise ConversionError(f"{where}: config.get_adapter_args.interaction_indexes is needed")
  if len(indexes) != interactions:
    raise ConversionError(f"{where}: get_adapter_args.interaction_indexes has {len(indexes)} groups, the "
                          f"checkpoint {interactions} interactions")
  overrides["interaction_indexes"] = indexes
  for field in ("num_heads", "embed_dim", "depth", "patch_size"):
    if field in vit_args and int(vit_args[field]) != overrides[field] and field != "num_heads":
      raise ConversionError(f"{where}: get_models.{field}={vit_args[field]} but the weights have "
                            f"{overrides[field]}")
  if "img_size" in vit_args and int(vit_args["img_size"]) // patch_size != grid:
    raise ConversionError(f"{where}: get_models.img_size={vit_args['img_size']} but pos_embed is a "
                          f"{grid}x{grid} grid")
  base = vit_adapter.backbone_config(vit, name if (vit, name) in vit_adapter.PRESETS else
                                     ("vith" if is_sam else "vitl"))
  base.update(overrides)
  base.interaction_indexes = tuple(tuple(int(i) for i in pair) for pair in base.interaction_indexes)
  base.global_attn_indexes = tuple(int(i) for i in base.global_attn_indexes)
  return base


def backbone_from_detectron2(state_dict: Mapping[str, Any], config=None):
  """(backbone_config, params) from the `backbone.*` entries of a detectron2-style checkpoint.

  ViT-Adapter layouts: DINOv2 (`D2VitAdapterDinoV2`, DVIS++ / DVIS-DAQ / CAVIS / LOMM ViT-L) and LOMM's
  `SAMAdapter`. `config`: a dict (or yacs / ml_collections node) with `MODEL.VIT_ADAPTER.NAME` (or
  `MODEL.SAM_ADAPTER.NAME`), `get_models` (the ViT kwargs), `get_adapter_args` (the adapter kwargs) and
  `norm_eps`; sizes are read from the shapes where they can be. int64 `num_batches_tracked` entries and
  the dead entries (DINOv2's final norm and mask token, the SAM neck) are ignored.
  Apply with `o2vis_jax.models.build_backbone(backbone_config).apply({'params': params}, images)`."""
  sd = _bare_state_dict(state_dict, PREFIX)
  if "vit_module.patch_embed.proj.weight" not in sd:
    from o2vis_jax.checkpoint_conversion import resnet_swin
    if any(k.startswith(PREFIX) for k in state_dict) and resnet_swin.detect_kind(state_dict) is not None:
      stride_in_1x1 = bool(_lookup(config, "MODEL.RESNETS.STRIDE_IN_1X1") or False)
      return resnet_swin.resnet_swin_from_detectron2(state_dict, stride_in_1x1=stride_in_1x1)
    raise ConversionError("backbone_from_detectron2: the state dict holds no ViT-Adapter backbone "
                          "('backbone.vit_module.*') and no detectron2 ResNet / Swin ('backbone.stem.*', "
                          "'backbone.res2.*', 'backbone.layers.*')")
  backbone_config = vit_adapter_config(sd, config)
  dead = [k for k in sd if k in DEAD_DINOV2 or (backbone_config.vit == "sam" and DEAD_SAM_ADAPTER.match(k))]
  live = {k: v for k, v in sd.items() if k not in dead}
  module = vit_adapter.ViTAdapter(backbone_config)
  params = convert_to_params(live, module, "backbone_from_detectron2")
  return backbone_config, params


def resize_patch_kernel(weight: np.ndarray, size: int) -> np.ndarray:
  """[D, 3, k, k] -> [D, 3, size, size]: `F.interpolate(mode='bilinear', align_corners=True)`, the
  DINOv2 14 -> 16 patch-kernel resize of `load_pretrained_weights` (no rescaling of magnitudes)."""
  def matrix(n_in, n_out):
    source = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    lower = np.minimum(np.floor(source).astype(np.int64), n_in - 1)
    upper = np.minimum(lower + 1, n_in - 1)
    frac = source - lower
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lower), 1 - frac)
    np.add.at(m, (np.arange(n_out), upper), frac)
    return m
  rows, cols = matrix(weight.shape[2], size), matrix(weight.shape[3], size)
  resized = np.einsum("yi,dcij,xj->dcyx", rows, weight.astype(np.float64), cols)
  return resized.astype(weight.dtype)


def vit_from_dinov2(state_dict: Mapping[str, Any], backbone_config: ml_collections.ConfigDict) -> Dict:
  """Raw DINOv2 weights (`dinov2_vitl14_pretrain.pth`: bare keys, patch 14, pos-embed of the 37 x 37 grid
  of the 518/14 model) -> params of the adapter's `vit_module`: the patch kernel resized to the config's
  patch size (bilinear, align_corners=True), the pos-embed reused as the pretrain grid unchanged. Put
  them at `params['vit_module']` of a freshly initialised ViTAdapter (the adapter itself is trained)."""
  sd = _bare_state_dict(state_dict, "backbone.")
  sd = {k[len("vit_module."):] if k.startswith("vit_module.") else k: v for k, v in sd.items()}
  patch = sd.get("patch_embed.proj.weight")
  if patch is None:
    raise ConversionError("vit_from_dinov2: no 'patch_embed.proj.weight': not a DINOv2 state dict")
  if patch.shape[2] != backbone_config.patch_size:
    sd["patch_embed.proj.weight"] = resize_patch_kernel(patch, backbone_config.patch_size)
  sd = {f"vit_module.{k}": v for k, v in sd.items() if f"vit_module.{k}" not in DEAD_DINOV2}
  module = vit_adapter.ViTAdapter(backbone_config)
  return convert_to_params(sd, module, "vit_from_dinov2", subtree="vit_module")["vit_module"]


def sam_encoder_from_sam(state_dict: Mapping[str, Any], name: str = "vith", **overrides):
  """SAM checkpoint (`image_encoder.*` keys, or bare encoder keys; other SAM parts are ignored) ->
  (backbone_config, params) of `vit_adapter.SamImageEncoder(backbone_config, out_chans)`: params hold
  'vit_module' (the SAM adapter's ViT weights, neck included). Sizes are read from the shapes."""
  sd = {k: v for k, v in state_dict.items()}
  if any(k.startswith("image_encoder.") for k in sd):
    sd = {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
  sd = {k: to_numpy(v) for k, v in sd.items()}
  if "patch_embed.proj.weight" not in sd:
    raise ConversionError("sam_encoder_from_sam: no 'image_encoder.patch_embed.proj.weight': not a SAM "
                          "image encoder")
  dim = int(sd["patch_embed.proj.weight"].shape[0])
  depth = _count(sd, r"^blocks\.(\d+)\.")
  grid = int(sd["pos_embed"].shape[1])
  patch_size = int(sd["patch_embed.proj.weight"].shape[2])
  rel = {i: sd[f"blocks.{i}.attn.rel_pos_h"].shape for i in range(depth) if f"blocks.{i}.attn.rel_pos_h" in sd}
  windowed = [s[0] for s in rel.values() if s[0] != 2 * grid - 1]
  config = vit_adapter.backbone_config(
      "sam", name if ("sam", name) in vit_adapter.PRESETS else "vith",
      embed_dim=dim, depth=depth, patch_size=patch_size, pretrain_size=grid * patch_size,
      num_heads=dim // int(next(iter(rel.values()))[1]) if rel else overrides.pop("num_heads", 16),
      use_rel_pos=bool(rel),
      global_attn_indexes=tuple(i for i, s in rel.items() if s[0] == 2 * grid - 1) if rel else (),
      window_size=(windowed[0] + 1) // 2 if windowed else 14,
      mlp_ratio=sd["blocks.0.mlp.lin1.weight"].shape[0] / dim,
      # Not used by the encoder; a ViTAdapter built from this config splits the blocks evenly.
      interaction_indexes=tuple((i * (depth // 4), (i + 1) * (depth // 4) - 1) for i in range(4)),
      **overrides)
  out_chans = int(sd["neck.0.weight"].shape[0])
  module = vit_adapter.SamImageEncoder(config, out_chans)
  params = convert_to_params({f"vit_module.{k}": v for k, v in sd.items()}, module, "sam_encoder_from_sam")
  config.out_chans = out_chans
  return config, params
