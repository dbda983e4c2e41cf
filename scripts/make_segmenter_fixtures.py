"""Writes the segmenter parity fixtures (needs torch + transformers; the tests do not).

  python scripts/make_segmenter_fixtures.py

Builds a small random HuggingFace `Mask2FormerForUniversalSegmentation` with a ResNet-50-layout
bottleneck backbone of stem width 4, perturbs every norm weight / bias and BatchNorm statistic (and
the deformable-attention offset / weight projections, which HF initialises to zero), runs it in
float64 on two 64x96 images, and writes
  tests/fixtures/segmenter_hf.npz          state dict (float32, prefix 'param/'), images, outputs
                                           (prefix 'out/'), grid_sample and deformable-attention
                                           reference numbers (prefixes 'sampler/', 'msda/')
  tests/fixtures/segmenter_hf_config.json  the transformers config dict
"""

import json
import os
import sys

import numpy as np
import torch
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig
from transformers.models.mask2former import modeling_mask2former

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
PIXEL_MEAN = np.array([123.675, 116.28, 103.53])
PIXEL_STD = np.array([58.395, 57.12, 57.375])


def build_model(seed: int = 0):
  torch.manual_seed(seed)
  backbone = ResNetConfig(embedding_size=4, hidden_sizes=[16, 32, 64, 128], depths=[3, 4, 6, 3],
                          layer_type="bottleneck", out_features=["stage1", "stage2", "stage3", "stage4"])
  config = Mask2FormerConfig(
      backbone_config=backbone, use_pretrained_backbone=False, feature_size=32, mask_feature_size=32,
      hidden_dim=32, num_attention_heads=4, encoder_layers=2, encoder_feedforward_dim=64,
      decoder_layers=5, dim_feedforward=64, num_queries=8, num_labels=5)
  model = Mask2FormerForUniversalSegmentation(config).eval()
  generator = torch.Generator().manual_seed(seed + 1)
  noise = lambda t, scale: torch.randn(t.shape, generator=generator, dtype=t.dtype) * scale
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if not tensor.is_floating_point():
        continue
      if name.endswith("running_var"):
        tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
      elif name.endswith("running_mean"):
        tensor.add_(noise(tensor, 0.2))
      elif tensor.ndim == 1:           # every bias and every norm weight
        tensor.add_(noise(tensor, 0.2))
      elif "sampling_offsets" in name or "self_attn.attention_weights" in name:
        tensor.add_(noise(tensor, 0.3))
    # Round the parameters to float32 so that the stored float32 state dict is the model exactly.
    for tensor in model.state_dict().values():
      if tensor.is_floating_point():
        tensor.copy_(tensor.float().double())
  return config, model.double()


def sampler_case(rng):
  """grid_sample(bilinear, zeros, align_corners=False) numbers, locations partly outside the map."""
  value = rng.normal(size=(2, 3, 5, 7))                   # [N, C, H, W]
  grid = rng.uniform(-1.4, 1.4, size=(2, 4, 6, 2))        # [N, Ho, Wo, (x, y)] in [-1, 1] convention
  out = torch.nn.functional.grid_sample(torch.from_numpy(value), torch.from_numpy(grid), mode="bilinear",
                                        padding_mode="zeros", align_corners=False).numpy()
  return {"sampler/value": value, "sampler/grid": grid, "sampler/out": out}


def msda_case(rng):
  """The reference PyTorch multi-scale deformable attention core on random inputs."""
  shapes = [(3, 4), (5, 2)]
  batch, queries, heads, depth, points = 2, 5, 2, 3, 3
  value = rng.normal(size=(batch, sum(h * w for h, w in shapes), heads, depth))
  locations = rng.uniform(-0.2, 1.2, size=(batch, queries, heads, len(shapes), points, 2))
  weights = rng.uniform(size=(batch, queries, heads, len(shapes), points))
  weights /= weights.sum(axis=(-1, -2), keepdims=True)
  out = modeling_mask2former.multi_scale_deformable_attention(
      torch.from_numpy(value), shapes, torch.from_numpy(locations), torch.from_numpy(weights)).numpy()
  return {"msda/value": value, "msda/locations": locations, "msda/weights": weights,
          "msda/shapes": np.array(shapes), "msda/out": out}


def main():
  config, model = build_model()
  rng = np.random.default_rng(0)
  images = np.round(rng.uniform(0, 255, size=(2, 64, 96, 3)))
  pixel_values = torch.from_numpy(((images - PIXEL_MEAN) / PIXEL_STD).transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    out = model(pixel_values=pixel_values, output_auxiliary_logits=True)
    last = out.transformer_decoder_last_hidden_state
    normed = model.model.transformer_module.decoder.layernorm(last)
  arrays = {f"param/{k}": v.float().numpy() for k, v in model.state_dict().items()}
  arrays["images"] = images.astype(np.float32)
  arrays["out/pred_logits"] = out.class_queries_logits.numpy()
  arrays["out/pred_masks"] = out.masks_queries_logits.numpy()
  arrays["out/pred_embds_without_norm"] = last.numpy()
  arrays["out/pred_embds"] = normed.numpy()
  arrays["out/mask_features"] = out.pixel_decoder_last_hidden_state.numpy().transpose(0, 2, 3, 1)
  arrays["out/aux_pred_logits"] = np.stack([a["class_queries_logits"].numpy() for a in out.auxiliary_logits])
  arrays["out/aux_pred_masks"] = np.stack([a["masks_queries_logits"].numpy() for a in out.auxiliary_logits])
  arrays.update(sampler_case(rng))
  arrays.update(msda_case(rng))
  os.makedirs(FIXTURES, exist_ok=True)
  np.savez_compressed(os.path.join(FIXTURES, "segmenter_hf.npz"), **arrays)
  with open(os.path.join(FIXTURES, "segmenter_hf_config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=1, sort_keys=True, default=str)
  print({k: v.shape for k, v in arrays.items() if not k.startswith("param/")}, file=sys.stderr)
  print("wrote", FIXTURES)


if __name__ == "__main__":
  main()
