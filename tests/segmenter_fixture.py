"""Loads the HF Mask2Former parity fixture written by scripts/make_segmenter_fixtures.py."""

import functools
import json
import os

import numpy as np

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


@functools.lru_cache(maxsize=None)
def load():
  """(state_dict, hf_config, arrays) with arrays = everything else in the npz."""
  with np.load(os.path.join(FIXTURES, "segmenter_hf.npz")) as archive:
    arrays = {k: archive[k] for k in archive.files}
  with open(os.path.join(FIXTURES, "segmenter_hf_config.json")) as f:
    hf_config = json.load(f)
  state_dict = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
  return state_dict, hf_config, arrays


def hf_to_detectron2(state_dict):
  """The same weights under detectron2 Mask2Former key names (fused q|k|v self-attention).

  Written independently of the converter's tables, from the two PyTorch module layouts.
  """
  out = {}
  hf_backbone = "model.pixel_level_module.encoder."
  hf_pixel = "model.pixel_level_module.decoder."
  hf_transformer = "model.transformer_module."
  pending_qkv = {}
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked") or key.startswith("criterion."):
      continue
    k = key
    if k.startswith(hf_backbone):
      k = k[len(hf_backbone):]
      k = k.replace("embedder.embedder.convolution", "stem.conv1")
      k = k.replace("embedder.embedder.normalization", "stem.conv1.norm")
      parts = k.split(".")
      if parts[0] == "encoder":               # encoder.stages.S.layers.B.<rest>
        stage, block, rest = int(parts[2]), parts[4], ".".join(parts[5:])
        rest = rest.replace("shortcut.convolution", "shortcut").replace("shortcut.normalization", "shortcut.norm")
        for i in range(3):
          rest = rest.replace(f"layer.{i}.convolution", f"conv{i + 1}")
          rest = rest.replace(f"layer.{i}.normalization", f"conv{i + 1}.norm")
        k = f"res{stage + 2}.{block}.{rest}"
      k = "backbone." + k
    elif k.startswith(hf_pixel):
      k = k[len(hf_pixel):]
      k = k.replace("input_projections", "input_proj")
      k = k.replace("level_embed", "transformer.level_embed")
      k = k.replace("encoder.layers", "transformer.encoder.layers")
      k = (k.replace("self_attn_layer_norm", "norm1").replace("final_layer_norm", "norm2")
           .replace("fc1", "linear1").replace("fc2", "linear2"))
      k = k.replace("mask_projection", "mask_features")
      for name in ("adapter_1", "layer_1"):
        k = k.replace(f"{name}.0.", f"{name}.").replace(f"{name}.1.", f"{name}.norm.")
      k = "sem_seg_head.pixel_decoder." + k
    elif k.startswith(hf_transformer) or k.startswith("class_predictor"):
      k = k[len(hf_transformer):] if k.startswith(hf_transformer) else k
      k = (k.replace("queries_features", "query_feat").replace("queries_embedder", "query_embed")
           .replace("class_predictor", "class_embed").replace("decoder.layernorm", "decoder_norm")
           .replace("decoder.mask_predictor.mask_embedder", "mask_embed.layers"))
      if k.startswith("mask_embed.layers."):
        k = k.replace(".0.weight", ".weight").replace(".0.bias", ".bias")
      if k.startswith("decoder.layers."):
        parts = k.split(".")
        i, rest = parts[2], ".".join(parts[3:])
        if rest.startswith("cross_attn_layer_norm"):
          k = f"transformer_cross_attention_layers.{i}.norm.{rest.split('.')[-1]}"
        elif rest.startswith("cross_attn."):
          k = f"transformer_cross_attention_layers.{i}.multihead_attn.{rest[len('cross_attn.'):]}"
        elif rest.startswith("self_attn_layer_norm"):
          k = f"transformer_self_attention_layers.{i}.norm.{rest.split('.')[-1]}"
        elif rest.startswith("self_attn.out_proj"):
          k = f"transformer_self_attention_layers.{i}.self_attn.{rest[len('self_attn.'):]}"
        elif rest.startswith("self_attn."):
          proj, kind = rest.split(".")[1:]
          pending_qkv[(i, proj, kind)] = value
          continue
        elif rest.startswith("final_layer_norm"):
          k = f"transformer_ffn_layers.{i}.norm.{rest.split('.')[-1]}"
        else:                                  # fc1 / fc2
          k = f"transformer_ffn_layers.{i}.{rest.replace('fc1', 'linear1').replace('fc2', 'linear2')}"
      k = "sem_seg_head.predictor." + k
    out[k] = value
  layers = sorted({i for i, _, _ in pending_qkv})
  for i in layers:
    prefix = f"sem_seg_head.predictor.transformer_self_attention_layers.{i}.self_attn."
    out[prefix + "in_proj_weight"] = np.concatenate([pending_qkv[(i, p, "weight")] for p in ("q_proj", "k_proj", "v_proj")])
    out[prefix + "in_proj_bias"] = np.concatenate([pending_qkv[(i, p, "bias")] for p in ("q_proj", "k_proj", "v_proj")])
  return out
