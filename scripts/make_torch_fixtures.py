r"""Writes tests/fixtures/torch_references.npz: the PyTorch numbers three tests compare with, so that the
test suite needs no torch.

  pip install torch==2.13.0 && python scripts/make_torch_fixtures.py

What it records (inputs drawn here with NumPy seeds, outputs from PyTorch ops, float64 unless noted):
  point_sample/*      `F.grid_sample(bilinear, zeros, align_corners=False)` at (x, y) in [0, 1]
                      (detectron2's point_sample), float32 as in tests/test_point_sampling.py
  topk_{k}/*          REFERENCE.md 8.3-8.4: mean of the frame logits, softmax, no-object dropped,
                      `topk` over slot x class, for k = 1, 10, 24
  resize_{h}x{w}/*    REFERENCE.md 8.4: `F.interpolate(bilinear, align_corners=False)` to the padded
                      input, crop to the resized image, `F.interpolate` to the original size
  tracker/*           a PyTorch tracker with the reference's parameter names (REFERENCE.md section 1, with
                      `nn.MultiheadAttention`'s fused in_proj): its state dict and the outputs of T_E in
                      self mode and T_A in anchor mode, and the class logits of T_A's output
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures",
                   "torch_references.npz")

# The sizes tests/test_tracker_conversion.py uses.
C, K, FFN_DIM, N, HEADS, LAYERS = 16, 4, 24, 5, 4, 2
RESIZE_CASES = ((50, 70), (20, 30), (37, 23))
TOPK_CASES = (1, 10, 24)


def point_sample_case(torch):
  rng = np.random.default_rng(0)
  values = rng.normal(size=(3, 5, 7)).astype(np.float32)
  coords = rng.uniform(-0.15, 1.15, size=(3, 40, 2)).astype(np.float32)
  coords[:, 0] = [0.0, 0.0]
  coords[:, 1] = [1.0, 1.0]
  coords[:, 2] = [0.5 / 7, 0.5 / 5]   # exactly the first pixel centre.
  out = torch.nn.functional.grid_sample(
      torch.from_numpy(values)[:, None], 2 * torch.from_numpy(coords)[:, :, None] - 1,
      mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0, :, 0].numpy()
  return {"point_sample/values": values, "point_sample/coords": coords, "point_sample/out": out}


def topk_cases(torch):
  arrays = {}
  for max_num in TOPK_CASES:
    frame_logits = np.random.default_rng(max_num).normal(size=(9, 6, 5)) * 3.0   # T=9, N=6, K=4
    logits = torch.from_numpy(frame_logits).mean(0)
    num_classes = logits.shape[-1] - 1
    scores = torch.softmax(logits, -1)[:, :num_classes]
    values, index = scores.flatten().topk(max_num, sorted=True)
    arrays.update({f"topk_{max_num}/frame_logits": frame_logits, f"topk_{max_num}/scores": values.numpy(),
                   f"topk_{max_num}/labels": (index % num_classes).numpy(),
                   f"topk_{max_num}/slots": (index // num_classes).numpy()})
  return arrays


def resize_cases(torch):
  from o2vis_jax import video_io
  arrays = {}
  for height, width in RESIZE_CASES:
    g = video_io.FrameGeometry.for_video(height, width, 32, 32)
    mask_h, mask_w = g.padded_height // 4, g.padded_width // 4
    logits = np.random.default_rng(height).normal(size=(3, mask_h, mask_w))
    x = torch.from_numpy(logits)[None]
    x = torch.nn.functional.interpolate(x, size=(g.padded_height, g.padded_width), mode="bilinear",
                                        align_corners=False)
    x = x[:, :, :g.resized_height, :g.resized_width]
    x = torch.nn.functional.interpolate(x, size=(g.height, g.width), mode="bilinear", align_corners=False)
    arrays.update({f"resize_{height}x{width}/logits": logits, f"resize_{height}x{width}/out": x[0].numpy()})
  return arrays


def tracker_case(torch):
  from torch import nn

  class MLP(nn.Module):
    def __init__(self):
      super().__init__()
      self.layers = nn.ModuleList([nn.Linear(C, C) for _ in range(3)])

    def forward(self, x):
      for i, layer in enumerate(self.layers):
        x = layer(x) if i == 2 else torch.relu(layer(x))
      return x

  class Attention(nn.Module):
    def __init__(self, attribute):
      super().__init__()
      setattr(self, attribute, nn.MultiheadAttention(C, HEADS, batch_first=True))
      self.attribute = attribute
      self.norm = nn.LayerNorm(C)

    def forward(self, identity, query, kv):
      return self.norm(identity + getattr(self, self.attribute)(query, kv, kv, need_weights=False)[0])

  class FFN(nn.Module):
    def __init__(self):
      super().__init__()
      self.linear1, self.linear2, self.norm = nn.Linear(C, FFN_DIM), nn.Linear(FFN_DIM, C), nn.LayerNorm(C)

    def forward(self, x):
      return self.norm(x + self.linear2(torch.relu(self.linear1(x))))

  class Tracker(nn.Module):
    """The reference parameter layout (state_dict keys as in a LOMM checkpoint's `tracker.*`)."""

    def __init__(self):
      super().__init__()
      for x in ("E", "A"):
        setattr(self, f"transformer_cross_attention_layers_{x}",
                nn.ModuleList([Attention("multihead_attn") for _ in range(LAYERS)]))
        setattr(self, f"transformer_self_attention_layers_{x}",
                nn.ModuleList([Attention("self_attn") for _ in range(LAYERS)]))
        setattr(self, f"transformer_ffn_layers_{x}", nn.ModuleList([FFN() for _ in range(LAYERS)]))
      self.ref_proj, self.mask_embed = MLP(), MLP()
      self.decoder_norm, self.class_embed = nn.LayerNorm(C), nn.Linear(C, K + 1)

    def stack(self, x, kv, anchor=None):
      """SelfRef (anchor None) or Anchor of REFERENCE.md section 2: the last layer's output."""
      identity, source, query = torch.zeros(()), kv, None if anchor is None else self.ref_proj(anchor)
      for j in range(LAYERS):
        q = self.ref_proj(source) if anchor is None else query
        out = getattr(self, f"transformer_cross_attention_layers_{x}")[j](identity, q, kv)
        out = getattr(self, f"transformer_self_attention_layers_{x}")[j](out, out, out)
        identity = source = getattr(self, f"transformer_ffn_layers_{x}")[j](out)
      return identity

  torch.manual_seed(0)
  tracker = Tracker().double()
  with torch.no_grad():  # non-trivial biases and norms (PyTorch initialises them to 0 / 1).
    for p in tracker.parameters():
      if p.dim() == 1:
        p.add_(0.2 * torch.randn_like(p))
  rng = np.random.default_rng(0)
  kv, anchor = rng.normal(size=(N, C)), rng.normal(size=(N, C))
  with torch.no_grad():
    tk, ta = torch.from_numpy(kv), torch.from_numpy(anchor)
    want_e = tracker.stack("E", tk).numpy()
    want_a = tracker.stack("A", tk, ta).numpy()
    want_logits = tracker.class_embed(tracker.decoder_norm(torch.from_numpy(want_a))).numpy()
  arrays = {f"tracker/state_dict/{k}": v.numpy() for k, v in tracker.state_dict().items()}
  arrays.update({"tracker/kv": kv, "tracker/anchor": anchor, "tracker/self_E": want_e,
                 "tracker/anchor_A": want_a, "tracker/logits": want_logits})
  return arrays


def main():
  import torch
  arrays = {}
  for make in (point_sample_case, topk_cases, resize_cases, tracker_case):
    arrays.update(make(torch))
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  np.savez_compressed(OUT, torch_version=np.asarray(torch.__version__), **arrays)
  print(f"wrote {len(arrays)} arrays to {OUT} (torch {torch.__version__})")


if __name__ == "__main__":
  main()
