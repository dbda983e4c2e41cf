r"""Writes tests/fixtures/cavis_reference.npz: the AUTHORS' CAVIS modules (github Seung-Hun-Lee/CAVIS) run in
float64 on small random weights, so that tests/test_cavis.py needs no torch.

  python scripts/make_cavis_fixtures.py --cavis_git_dir /path/to/CAVIS/.git     # a (bare) git dir, or
  python scripts/make_cavis_fixtures.py --cavis_dir /path/to/CAVIS              # a checkout

Needs torch (2.13.0 CPU was used), einops and scipy. The authors' code is not part of this repository: the
files below are copied into a temporary directory at run time and imported from there; detectron2 / fvcore /
the mask2former registry are stubs in `sys.modules` (not used by what runs here), `Tensor.cuda` is the
identity. Their context filter is a float32 plain attribute that `.double()` does not convert: it is cast to
float64 after construction (its value stays float32(1/k^2), as in their float32 runs); their binary mask
`(M > 0).float()` (0 / 1, exact in any dtype) is made float64 during `get_context_queries`, since torch
refuses the mixed float32 x float64 conv that follows.

What it records (float64 unless noted; C=16, 4 heads, N=6 queries, K=4 classes, masks 12x10):
  source/commit                     the CAVIS commit (bytes of the hex string)
  state/<key>                       a CAVIS_online-style state dict: tracker.* (CAVIS_Tracker, 6 layers, FFN
                                    24), sem_seg_head.predictor.reid_embed.* (MLP 2C -> 12 -> 12 -> C),
                                    sem_seg_head.predictor.laplacian, sem_seg_head.predictor.decoder_norm.*
  A/...  end to end: the authors' CAVIS segmenter decoder (VideoMultiScaleMaskedTransformerDecoder_cavis,
         eval, 1 video of T=5 frames, random multi-scale features, smooth random mask features), then their
         tracker on its outputs:
    A/embeds [T,N,C] (LN_dec(q)), A/embeds_without_norm [T,N,C], A/masks [T,N,h,w], A/mask_features
    [T,h,w,C], A/logits [T,N,K+1]: the decoder's outputs in this library's layout
    A/reid [T,N,C]                  their pred_reid_embed
    A/pred_logits [T,N,K+1], A/pred_masks [T,N,h,w], A/aux{l}/... (l = 0..4), A/pred_embds [T,N,C],
    A/pred_references [T-1,N,C], A/indices [T,N] (int64)          their tracker, one call
    A/windowed/pred_logits, A/windowed/pred_masks                 their tracker in windows 2, 2, 1 (resume)
    A/topk/scores, A/topk/labels, A/topk/queries                  inference_video_vis's top-k (max_num 7)
  B/...  the same quantities for a synthetic video (T=5) whose objects are permuted from frame to frame
         (blob masks moving with their object), their head's reid from those inputs, their tracker on them.
  head/k{k}/masks [Q,h,w], head/k{k}/mask_features [h,w,C], head/k{k}/ctx [Q]: their get_context_queries on
         hand-made masks (empty, full, one pixel, a blob on the border, a random one) for k = 9 and 5.
"""

import argparse
import importlib.util
import os
import sys
import tempfile

import numpy as np

import reference_sources  # scripts/reference_sources.py (next to this script)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "cavis_reference.npz")

# The sizes tests/test_cavis.py uses.
C, HEADS, FFN_DIM, K, N, H, W, REID_HIDDEN, LAYERS, DEC_LAYERS = 16, 4, 24, 4, 6, 12, 10, 12, 6, 3
MAX_NUM = 7

DECODER = "cavis/video_mask2former_transformer_decoder.py"
MODULES = "cavis/video_cavis_modules.py"
VIDEO_LAYERS = "mask2former_video/modeling/transformer_decoder/video_mask2former_transformer_decoder.py"
VIDEO_POSITIONS = "mask2former_video/modeling/transformer_decoder/position_encoding.py"
IMAGE_POSITIONS = "mask2former/modeling/transformer_decoder/position_encoding.py"
FILES = (DECODER, MODULES, VIDEO_LAYERS, VIDEO_POSITIONS, IMAGE_POSITIONS)


def read_sources(args):
  """(commit, {path: text}) of the authors' files, from a git dir or a checkout."""
  return reference_sources.read_sources(FILES, args.cavis_git_dir, args.cavis_dir)


def install_stubs():
  module = reference_sources.stub_module

  Registry = reference_sources.Registry

  module("fvcore")
  module("fvcore.nn", weight_init=module("fvcore.nn.weight_init", c2_xavier_fill=lambda layer: None))
  module("detectron2")
  module("detectron2.config", configurable=lambda f=None, **kw: f if f is not None else (lambda g: g))
  module("detectron2.layers", Conv2d=None)
  module("mask2former.modeling.transformer_decoder.maskformer_transformer_decoder",
         TRANSFORMER_DECODER_REGISTRY=Registry())


def load_modules(texts, workdir):
  """Writes the files as packages under `workdir`; returns (decoder module, tracker module)."""
  for path, text in texts.items():
    full = os.path.join(workdir, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
      f.write(text)
  for directory in ("mask2former", "mask2former/modeling", "mask2former/modeling/transformer_decoder",
                    "mask2former_video", "mask2former_video/modeling",
                    "mask2former_video/modeling/transformer_decoder"):
    open(os.path.join(workdir, directory, "__init__.py"), "w").close()
  sys.path.insert(0, workdir)
  install_stubs()

  def load(name, path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(workdir, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
  return load("cavis_decoder", DECODER), load("cavis_modules", MODULES)


def randomize(model, rng):
  """Every parameter random (biases too), LayerNorm scales around 1."""
  import torch
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and "norm" in name and name.endswith("weight"):
        value = 1.0 + 0.2 * rng.normal(size=p.shape)
      elif p.ndim > 1:
        value = rng.normal(size=p.shape) * (0.8 / np.sqrt(p.shape[-1]))
      else:
        value = rng.normal(size=p.shape) * 0.2
      p.copy_(torch.from_numpy(value))


def smooth_field(rng, shape, channels, grid=(3, 3)):
  """Low-frequency random maps [channels, h, w] (bilinear upsampling of a coarse grid) + a little noise."""
  import torch
  coarse = torch.from_numpy(rng.normal(size=(1, channels) + grid))
  fine = torch.nn.functional.interpolate(coarse, size=shape, mode="bilinear", align_corners=True)[0]
  return fine.numpy() + 0.1 * rng.normal(size=(channels,) + shape)


def build_decoder(decoder_module, filter_size, num_frames):
  decoder = decoder_module.VideoMultiScaleMaskedTransformerDecoder_cavis(
      in_channels=C, mask_classification=True, num_classes=K, hidden_dim=C, num_queries=N, nheads=HEADS,
      dim_feedforward=FFN_DIM, dec_layers=DEC_LAYERS, pre_norm=False, mask_dim=C, enforce_input_project=False,
      num_frames=num_frames, num_reid_head_layers=3, reid_hidden_dim=REID_HIDDEN,
      context_filter_size=filter_size).double()
  decoder.ctx_filter = decoder.ctx_filter.double()   # a plain float32 attribute; value float32(1/k^2)
  context_queries = decoder.get_context_queries

  def float64_context_queries(pred_masks, mask_features):
    # Their binary mask is `(mask > 0).float()`: float32 0 / 1, exact in float64 too; torch refuses the
    # float32 x float64 conv / einsum that follow, so `.float()` gives float64 during this call.
    import torch
    to_float = torch.Tensor.float
    torch.Tensor.float = lambda self, *a, **k: self.double()
    try:
      return context_queries(pred_masks, mask_features)
    finally:
      torch.Tensor.float = to_float
  decoder.get_context_queries = float64_context_queries
  return decoder.eval()


def tracker_outputs(tracker, embds, embds_no_norm, mask_features, prefix, arrays):
  """Their tracker on one video (one call) and windowed (2, 2, 1 with resume); records in our layout."""
  import torch
  with torch.no_grad():
    out, indices = tracker(embds, mask_features, return_indices=True, frame_embeds_no_norm=embds_no_norm)
    arrays[f"{prefix}/pred_logits"] = out["pred_logits"][0].numpy()
    arrays[f"{prefix}/pred_masks"] = out["pred_masks"][0].permute(1, 0, 2, 3).numpy()
    for layer, aux in enumerate(out["aux_outputs"]):
      arrays[f"{prefix}/aux{layer}/pred_logits"] = aux["pred_logits"][0].numpy()
      arrays[f"{prefix}/aux{layer}/pred_masks"] = aux["pred_masks"][0].permute(1, 0, 2, 3).numpy()
    arrays[f"{prefix}/pred_embds"] = out["pred_embds"][0].permute(1, 2, 0).numpy()
    arrays[f"{prefix}/pred_references"] = out["pred_references"][0].permute(1, 2, 0).numpy()
    arrays[f"{prefix}/indices"] = np.stack([np.asarray(i, np.int64) for i in indices])
    windows, logits, masks = [(0, 2), (2, 4), (4, embds.shape[2])], [], []
    for start, end in windows:
      window_out = tracker(embds[:, :, start:end], mask_features[:, start:end], resume=start > 0,
                           frame_embeds_no_norm=embds_no_norm[:, :, start:end])
      logits.append(window_out["pred_logits"][0])
      masks.append(window_out["pred_masks"][0].permute(1, 0, 2, 3))
    arrays[f"{prefix}/windowed/pred_logits"] = torch.cat(logits).numpy()
    arrays[f"{prefix}/windowed/pred_masks"] = torch.cat(masks).numpy()
    # inference_video_vis (A:1373-1383) after post_processing (the mean of the logits over the frames).
    mean_logits = out["pred_logits"][0].mean(0)
    scores = torch.nn.functional.softmax(mean_logits, dim=-1)[:, :-1]
    labels = torch.arange(K).unsqueeze(0).repeat(N, 1).flatten(0, 1)
    top_scores, top_indices = scores.flatten(0, 1).topk(MAX_NUM, sorted=False)
    arrays[f"{prefix}/topk/scores"] = top_scores.numpy()
    arrays[f"{prefix}/topk/labels"] = labels[top_indices].numpy()
    arrays[f"{prefix}/topk/queries"] = (top_indices // K).numpy()


def case_end_to_end(decoder, tracker, rng, arrays, num_frames=5):
  import torch
  sizes = [(3, 3), (6, 5), (H, W)]
  features = [torch.from_numpy(rng.normal(size=(num_frames, C) + s)) for s in sizes]
  mask_features = torch.from_numpy(np.stack([smooth_field(rng, (H, W), C) for _ in range(num_frames)]))
  with torch.no_grad():
    out = decoder(features, mask_features)
  embds = out["pred_embds"]                         # (1, 2C, T, N)
  arrays["A/embeds"] = embds[0, :C].permute(1, 2, 0).numpy()
  arrays["A/embeds_without_norm"] = out["pred_embds_without_norm"][0].permute(1, 2, 0).numpy()
  arrays["A/masks"] = out["pred_masks"][0].permute(1, 0, 2, 3).numpy()
  arrays["A/mask_features"] = out["mask_features"].permute(0, 2, 3, 1).numpy()
  arrays["A/logits"] = out["pred_logits"][0].numpy()
  arrays["A/reid"] = out["pred_reid_embed"][0].permute(1, 2, 0).numpy()
  tracker_outputs(tracker, embds, out["pred_embds_without_norm"], out["mask_features"].unsqueeze(0), "A",
                  arrays)


def case_permuted(decoder, tracker, rng, arrays, num_frames=5):
  """Objects with their own embedding and a blob mask that moves; the queries are shuffled every frame."""
  import torch
  base_e, base_u = rng.normal(size=(N, C)), rng.normal(size=(N, C))
  centres = rng.uniform([0, 0], [H, W], size=(N, 2))
  velocity = rng.normal(size=(N, 2))
  yy, xx = np.mgrid[0:H, 0:W]
  embeds, without_norm, masks, features = [], [], [], []
  for t in range(num_frames):
    order = rng.permutation(N)
    centre = centres + t * velocity
    radius = 1.5 + np.arange(N) % 3
    blob = radius[:, None, None] ** 2 - ((yy - centre[:, 0, None, None]) ** 2
                                         + (xx - centre[:, 1, None, None]) ** 2)
    embeds.append((base_e + 0.3 * rng.normal(size=(N, C)))[order])
    without_norm.append((base_u + 0.3 * rng.normal(size=(N, C)))[order])
    masks.append(blob[order])
    features.append(smooth_field(rng, (H, W), C))
  e = torch.from_numpy(np.stack(embeds))                    # (T, N, C)
  m = torch.from_numpy(np.stack(masks))                     # (T, N, h, w)
  f = torch.from_numpy(np.stack(features))                  # (T, C, h, w)
  with torch.no_grad():
    ctx = decoder.get_context_queries(m, f)                 # (N, T, C): the head of D:229-242
    reid = decoder.reid_embed(torch.cat([e.transpose(0, 1), ctx], dim=-1))   # (N, T, C), D:192
  arrays["B/embeds"], arrays["B/embeds_without_norm"] = e.numpy(), np.stack(without_norm)
  arrays["B/masks"], arrays["B/mask_features"] = m.numpy(), f.permute(0, 2, 3, 1).numpy()
  arrays["B/reid"] = reid.transpose(0, 1).numpy()
  embds = torch.cat([e, reid.transpose(0, 1)], dim=-1).permute(2, 0, 1).unsqueeze(0)    # (1, 2C, T, N)
  no_norm = torch.from_numpy(np.stack(without_norm)).permute(2, 0, 1).unsqueeze(0)
  tracker_outputs(tracker, embds, no_norm, f.unsqueeze(0), "B", arrays)


def case_head(decoder, rng, arrays, filter_size):
  import torch
  masks = -np.ones((5, H, W))
  masks[1] = 1.0                                  # full image: the boundary is the image frame
  masks[2, 5, 4] = 2.0                            # one pixel
  masks[3, :4, 3:9] = 0.5                         # a blob touching the top border
  masks[4] = rng.normal(size=(H, W))              # salt and pepper
  features = smooth_field(rng, (H, W), C)
  with torch.no_grad():
    ctx = decoder.get_context_queries(torch.from_numpy(masks)[None], torch.from_numpy(features)[None])
  ctx = ctx[:, 0].numpy()                         # (Q, C), every channel the same value
  assert np.allclose(ctx, ctx[:, :1]), "their context is one value per query"
  prefix = f"head/k{filter_size}"
  arrays[f"{prefix}/masks"], arrays[f"{prefix}/mask_features"] = masks, features.transpose(1, 2, 0)
  arrays[f"{prefix}/ctx"] = ctx[:, 0]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--cavis_git_dir", help="git dir of Seung-Hun-Lee/CAVIS (bare is fine)")
  source.add_argument("--cavis_dir", help="a checkout of Seung-Hun-Lee/CAVIS")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args(argv)

  import torch
  torch.set_default_dtype(torch.float64)
  torch.Tensor.cuda = lambda self, *a, **k: self     # their buffers are built with .cuda()
  commit, texts = read_sources(args)
  rng = np.random.default_rng(0)
  arrays = {"source/commit": np.frombuffer(commit.encode(), np.uint8)}
  with tempfile.TemporaryDirectory() as workdir:
    decoder_module, tracker_module = load_modules(texts, workdir)
    torch.manual_seed(0)
    decoder = build_decoder(decoder_module, 9, num_frames=5)
    randomize(decoder, rng)
    tracker = tracker_module.CAVIS_Tracker(hidden_channel=C, feedforward_channel=FFN_DIM, num_head=HEADS,
                                           decoder_layer_num=LAYERS, mask_dim=C, class_num=K).double()
    randomize(tracker, rng)
    head_state = decoder.state_dict()
    for key in ("laplacian", "decoder_norm.weight", "decoder_norm.bias"):
      arrays[f"state/sem_seg_head.predictor.{key}"] = head_state[key].numpy().copy()
    for key, value in head_state.items():
      if key.startswith("reid_embed."):
        arrays[f"state/sem_seg_head.predictor.{key}"] = value.numpy().copy()
    for key, value in tracker.state_dict().items():
      arrays[f"state/tracker.{key}"] = value.numpy().copy()
    case_end_to_end(decoder, tracker, rng, arrays)
    case_permuted(decoder, tracker, rng, arrays)
    case_head(decoder, rng, arrays, 9)
    small = build_decoder(decoder_module, 5, num_frames=1)
    case_head(small, rng, arrays, 5)
  np.savez_compressed(args.out, **arrays)
  print(f"wrote {args.out}: {len(arrays)} arrays, CAVIS @ {commit}")


if __name__ == "__main__":
  main()
