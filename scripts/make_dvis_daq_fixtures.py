r"""Writes tests/fixtures/dvis_daq_reference.npz: the AUTHORS' DVIS-DAQ online inference (`VideoInstanceCutter.
inference` of DVIS_DAQ/dvis_daq/track_module.py, driven by `DVIS_DAQ_online.run_window_inference` and
`inference_video_vis` of dvis_daq/meta_architecture.py) in float64 on small random weights, so that
tests/test_dvis_daq.py needs no torch.

  python scripts/make_dvis_daq_fixtures.py --git_dir /path/to/DVIS_Plus/.git     # a (bare) git dir, or
  python scripts/make_dvis_daq_fixtures.py --repo_dir /path/to/DVIS_Plus

Needs torch (2.13.0 CPU was used). The authors' code is not part of this repository: the files are copied
into a temporary package at run time with "cuda" replaced by "cpu"; detectron2 / fvcore / the DVIS++
imports they do not use in inference are stubs in `sys.modules`. The segmenter is replaced by a stub
`sem_seg_head` that returns the recorded per-frame outputs (random), so `run_window_inference` runs the
authors' window loop (window 5, `resume` for later windows), their frame-0 validity from the segmenter's
scores, their post-processing (noise filter, mean logits) and `inference_video_vis` (top-k) unchanged.
The authors' random sequence ids are mapped to the creation index (the hub's insertion order).

What it records (float64 unless noted), per case `{case}/`:
  embeds [T,N,C] (pred_embds), logits [T,N,K+1], masks [T,N,h,w], mask_features [T,h,w,C]   the inputs
  options: inference_select_threshold, aux_inference_select_threshold, keep_threshold, ovis_infer,
           kick_out_frame_num, noise_frame_num, max_num
  seq_start [M], seq_len [M], seq_dead [M] (int)          every sequence in creation order
  seq_stored [M,T] bool, seq_appearance [M,T] bool        which frames it stored / was valid in
  seq_logits [M,T,K+1], seq_masks [M,T,h,w] (float32 by the authors' code; 0 where not stored)
  kept [n] int, kept_logits [n,K+1]                       run_window_inference's sequences and mean logits
  top_scores [k], top_labels [k], top_ids [k], top_masks [k,T,h,w] bool   inference_video_vis (unsorted)
and state/<key> (the tracker's state dict), query_feat [N, C].
"""

import argparse
import importlib
import os
import random
import sys
import tempfile
import types

import numpy as np

import reference_sources  # scripts/reference_sources.py (next to this script)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "dvis_daq_reference.npz")

C, HEADS, FFN_DIM, K, LAYERS, N, H, W, BG_SLOTS = 16, 4, 24, 3, 2, 6, 5, 4, 5
FILES = ("DVIS_DAQ/dvis_daq/track_module.py", "DVIS_DAQ/dvis_daq/slot_attention.py",
         "DVIS_DAQ/dvis_daq/meta_architecture.py",
         "DVIS_DAQ/mask2former_video/modeling/transformer_decoder/video_mask2former_transformer_decoder.py")
# name: (frames, options). Thresholds are raised above the configs' 0.01 so that, on random weights,
# tracks go invalid, die and new ones emerge (births, kick-outs and re-emergence in every case).
CASES = {
    "ytvis": (23, dict(inference_select_threshold=0.1, aux_inference_select_threshold=0.4, keep_threshold=0.01,
                       ovis_infer=False, kick_out_frame_num=8, noise_frame_num=5, max_num=20)),
    "ovis": (17, dict(inference_select_threshold=0.1, aux_inference_select_threshold=0.4, keep_threshold=0.1,
                      ovis_infer=True, kick_out_frame_num=8, noise_frame_num=5, max_num=20)),
    "kick3": (16, dict(inference_select_threshold=0.03, aux_inference_select_threshold=0.3, keep_threshold=0.01,
                       ovis_infer=False, kick_out_frame_num=3, noise_frame_num=5, max_num=20)),
}


def read_sources(args):
  """(commit, {path: text}) of the authors' files, from a git dir or a checkout."""
  return reference_sources.read_sources(FILES, args.git_dir, args.repo_dir)


def install_stubs():
  module = reference_sources.stub_module

  Registry = reference_sources.Registry

  import torch
  module("fvcore")
  module("fvcore.nn", weight_init=module("fvcore.nn.weight_init"))
  module("detectron2")
  module("detectron2.config", configurable=lambda f=None, **kw: f if f is not None else (lambda g: g))
  module("detectron2.layers", Conv2d=None)
  module("detectron2.data", MetadataCatalog=None)
  module("detectron2.modeling", META_ARCH_REGISTRY=Registry(), build_backbone=None, build_sem_seg_head=None)
  module("detectron2.modeling.backbone", Backbone=object)
  module("detectron2.structures", Boxes=None, ImageList=None, Instances=None, BitMasks=type("BitMasks", (), {}))
  for name in ("mask2former", "mask2former.modeling", "mask2former.modeling.transformer_decoder"):
    module(name)
  module("mask2former.modeling.transformer_decoder.maskformer_transformer_decoder",
         TRANSFORMER_DECODER_REGISTRY=Registry())
  module("mask2former_video.utils", __path__=[])
  module("mask2former_video.utils.memory", retry_if_cuda_oom=lambda f: f)
  module("mask2former_video.modeling.criterion", VideoSetCriterion=None)
  module("mask2former_video.modeling.matcher", VideoHungarianMatcher=None)
  module("dvis_Plus", __path__=[])
  module("dvis_Plus.tracker", ReferringCrossAttentionLayer=None)
  module("dvis_Plus.meta_architecture", MinVIS=torch.nn.Module)
  module("dvis_daq.matcher", FrameMatcher=None, NewInsHungarianMatcher=None)
  module("dvis_daq.criterion", DAQCriterion=None)
  module("dvis_daq.refiner", TemporalRefiner=None)


def load_modules(texts, workdir):
  for path, text in texts.items():
    full = os.path.join(workdir, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
      text = text.replace('"cuda"', '"cpu"')
      f.write(text)
  base = os.path.join(workdir, "DVIS_DAQ")
  decoder_dir = os.path.join(base, os.path.dirname(FILES[3]).split("DVIS_DAQ/")[1])
  with open(os.path.join(decoder_dir, "position_encoding.py"), "w") as f:
    f.write("PositionEmbeddingSine3D = None\n")
  for directory in ("dvis_daq", "mask2former_video", "mask2former_video/modeling",
                    "mask2former_video/modeling/transformer_decoder"):
    open(os.path.join(base, directory, "__init__.py"), "w").close()
  install_stubs()
  sys.path.insert(0, base)
  track_module = importlib.import_module("dvis_daq.track_module")
  meta = importlib.import_module("dvis_daq.meta_architecture")
  return track_module, meta


class FakeSegmenter:
  """`sem_seg_head` returning the recorded frames of the window it is called on (images = frame indices)."""

  def __init__(self, torch, frames, query_feat):
    self.torch, self.frames = torch, frames
    self.num_classes = K
    self.predictor = types.SimpleNamespace(query_feat=query_feat, query_embed=None)

  def backbone(self, window):
    return {"index": window, "res2": None, "res3": None, "res4": None, "res5": None}

  def __call__(self, features):
    t = self.torch
    idx = features["index"]
    f = {k: t.from_numpy(v[idx]) for k, v in self.frames.items()}
    return {"pred_embds": f["embeds"].permute(2, 0, 1)[None],            # (1, C, T, N)
            "mask_features": f["mask_features"].permute(0, 3, 1, 2),     # (T, C, h, w)
            "pred_logits": f["logits"][None],                            # (1, T, N, K+1)
            "pred_masks": f["masks"].transpose(0, 1)[None],              # (1, N, T, h, w)
            "aux_outputs": []}


def run_case(torch, meta, tracker, query_feat, frames, options):
  """The authors' window loop + post-processing on one video; returns the records of the module doc."""
  tracker.inference_select_thr = options["inference_select_threshold"]
  tracker.keep_threshold = options["keep_threshold"]
  tracker.ovis_infer = options["ovis_infer"]
  tracker.kick_out_frame_num = options["kick_out_frame_num"]
  segmenter = FakeSegmenter(torch, frames, query_feat)
  snapshots = []
  original = tracker.inference

  def recorded(*args, **kwargs):
    result = original(*args, **kwargs)
    snapshots.append(dict(tracker.video_ins_hub))
    return result

  tracker.inference = recorded
  fake = types.SimpleNamespace(backbone=segmenter.backbone, sem_seg_head=segmenter, tracker=tracker,
                               aux_inference_select_thr=options["aux_inference_select_threshold"],
                               noise_frame_num=options["noise_frame_num"], keep=False,
                               max_num=options["max_num"], device=torch.device("cpu"))
  num_frames = frames["embeds"].shape[0]
  with torch.no_grad():
    outputs = meta.DVIS_DAQ_online.run_window_inference(fake, np.arange(num_frames))
    vis = meta.DVIS_DAQ_online.inference_video_vis(
        fake, outputs["pred_logits"][0], outputs["pred_masks"][0], (H, W), H, W, (H, W), outputs["pred_ids"][0])
  del tracker.inference
  hub = snapshots[-1]
  index = {seq_id: i for i, seq_id in enumerate(hub)}
  m = len(hub)
  rec = dict(seq_start=np.zeros(m, np.int64), seq_len=np.zeros(m, np.int64), seq_dead=np.zeros(m, np.int64),
             seq_stored=np.zeros((m, num_frames), bool), seq_appearance=np.zeros((m, num_frames), bool),
             seq_logits=np.zeros((m, num_frames, K + 1)), seq_masks=np.zeros((m, num_frames, H, W), np.float32))
  for i, seq in enumerate(hub.values()):
    length = len(seq.pred_logits)
    rec["seq_start"][i], rec["seq_len"][i], rec["seq_dead"][i] = seq.sT, length, seq.dead
    span = slice(seq.sT, seq.sT + length)
    rec["seq_stored"][i, span] = True
    rec["seq_appearance"][i, span] = np.asarray(seq.appearance)
    rec["seq_logits"][i, span] = torch.stack(seq.pred_logits).numpy()
    rec["seq_masks"][i, span] = torch.stack(seq.pred_masks).numpy()
  rec["kept"] = np.asarray([index[int(s)] for s in outputs["pred_ids"][0]], np.int64)
  rec["kept_logits"] = outputs["pred_logits"][0].numpy()
  rec["top_scores"] = np.asarray(vis["pred_scores"])
  rec["top_labels"] = np.asarray(vis["pred_labels"], np.int64)
  rec["top_ids"] = np.asarray([index[int(s)] for s in vis["pred_ids"]], np.int64)
  rec["top_masks"] = np.stack([np.asarray(x) for x in vis["pred_masks"]])
  return rec


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--git_dir", help="git dir of zhang-tao-whu/DVIS_Plus (bare is fine)")
  source.add_argument("--repo_dir", help="a checkout of zhang-tao-whu/DVIS_Plus")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args(argv)

  import torch
  torch.set_default_dtype(torch.float64)
  commit, texts = read_sources(args)
  with tempfile.TemporaryDirectory() as workdir:
    track_module, meta = load_modules(texts, workdir)
    torch.manual_seed(0)
    random.seed(0)
    tracker = track_module.VideoInstanceCutter(
        hidden_dim=C, feedforward_dim=FFN_DIM, num_head=HEADS, decoder_layer_num=LAYERS, mask_dim=C,
        num_classes=K, num_new_ins=N, num_slots=BG_SLOTS).double().eval()
    rng = np.random.default_rng(0)
    with torch.no_grad():
      for name, p in tracker.named_parameters():
        is_norm_scale = p.ndim == 1 and "norm" in name.split(".")[-2] + name and name.endswith("weight")
        if is_norm_scale:
          value = 1.0 + 0.2 * rng.normal(size=p.shape)
        elif p.ndim > 1:
          fan_in = int(np.prod(p.shape[1:])) if p.ndim > 2 else p.shape[-1]
          value = rng.normal(size=p.shape) * (0.8 / np.sqrt(fan_in))
          if name.endswith("embeds.weight") or name.startswith("bg_slots"):
            value = rng.normal(size=p.shape)
        else:
          value = rng.normal(size=p.shape) * 0.2
        if name.startswith("class_embed"):
          value = value * 5.0    # spread the scores around the thresholds: valid and invalid rows
        if name.startswith("pos_embed.layers.2"):
          value = value * 6.0    # rows differ by their positions (one shared emergence query)
        p.copy_(torch.from_numpy(value))
    query_feat = torch.nn.Embedding(N, C)
    with torch.no_grad():
      query_feat.weight.copy_(torch.from_numpy(rng.normal(size=(N, C))))
    arrays = {"source/commit": np.frombuffer(commit.encode(), np.uint8)}
    arrays.update({f"state/{k}": v.detach().numpy().copy() for k, v in tracker.state_dict().items()})
    arrays["query_feat"] = query_feat.weight.detach().numpy().copy()
    for name, (num_frames, options) in CASES.items():
      frames = dict(embeds=rng.normal(size=(num_frames, N, C)),
                    logits=rng.normal(size=(num_frames, N, K + 1)) * 1.5,
                    masks=rng.normal(size=(num_frames, N, H, W)) * 2.0,
                    mask_features=rng.normal(size=(num_frames, H, W, C)))
      # pred_embds are normed queries (decoder_norm output): unit-variance rows, as the tracker sees them.
      frames["embeds"] = (frames["embeds"] - frames["embeds"].mean(-1, keepdims=True)) / frames["embeds"].std(
          -1, keepdims=True)
      rec = run_case(torch, meta, tracker, query_feat, frames, options)
      for key, value in list(frames.items()) + list(rec.items()):
        arrays[f"{name}/{key}"] = value
      for key, value in options.items():
        arrays[f"{name}/options/{key}"] = np.asarray(value)
      born_late = int((rec["seq_start"] > 0).sum())
      dead = int(rec["seq_dead"].sum())
      reborn = int(sum(1 for i in range(len(rec["seq_start"])) if rec["seq_start"][i] > 0 and dead))
      print(f"{name}: T={num_frames} sequences={len(rec['seq_start'])} born after frame 0={born_late} "
            f"dead={dead} kept={len(rec['kept'])} max live={int(rec['seq_stored'].sum(0).max())} "
            f"invalid stored={int((rec['seq_stored'] & ~rec['seq_appearance']).sum())} reborn={reborn}")
  np.savez_compressed(args.out, **arrays)
  print(f"wrote {args.out}: {len(arrays)} arrays, DVIS_Plus @ {commit}")


if __name__ == "__main__":
  main()
