"""The CAVIS frame step (ReID head + CAIT) against the authors' code (PyTorch) and next to O2VIS's step, in
one process.

  python scripts/benchmark.py cavis [--frames 10] [--mask_size 120x160] [--repeats 5]
      [--cavis_git_dir /work/.mirror/Seung-Hun-Lee+CAVIS/repo] [--matchers host,device] [--no_o2vis]

The reference is the authors' head (`get_context_queries` + `reid_embed` of
VideoMultiScaleMaskedTransformerDecoder_cavis, D:190-242) and `CAVIS_Tracker` (video_cavis_modules.py), read
from a (bare) git dir of Seung-Hun-Lee/CAVIS and imported as scripts/make_cavis_fixtures.py does, at the
reference dims (C 256, FFN 2048, 8 heads, 6 layers, ReID MLP 3 x 256, context filter 9, K 40); its random
weights are converted with `association_from_reference('cavis', ...)`, and both run the same `--frames`
frames of random segmenter outputs (N queries, mask logits and mask features h x w) in eval mode: the
reference's head over the clip's frames as one batch, then its tracker over the clip (one call,
`return_indices=True`, as CAVIS_online's window inference calls it). O2VIS: `association.track` with the
'o2vis' method at the same N, C (3 + 3 blocks, random weights). Timing: a warm-up call (for us: the
compilation), then the median of `--repeats` calls, per frame. PyTorch runs with `--threads` threads (default
the number of cores). The machine's load is printed before and after; also the largest difference of the
class logits of ours and theirs (the converted weights run the same model).
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks._common import add_step_flags, load_line, median_time

DEFAULT_CAVIS = "/work/.mirror/Seung-Hun-Lee+CAVIS/repo"




def reference_modules(git_dir, c, ffn_dim, num_classes, filter_size):
  """(head decoder, CAVIS_Tracker) of the authors' code with random weights (float32, eval)."""
  import torch
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import make_cavis_fixtures as fixtures
  commit, texts = fixtures.read_sources(argparse.Namespace(cavis_git_dir=git_dir, cavis_dir=None))
  torch.Tensor.cuda = lambda self, *a, **k: self
  decoder_module, tracker_module = fixtures.load_modules(texts, tempfile.mkdtemp(prefix="cavis_"))
  torch.manual_seed(0)
  decoder = decoder_module.VideoMultiScaleMaskedTransformerDecoder_cavis(
      in_channels=c, mask_classification=True, num_classes=num_classes, hidden_dim=c, num_queries=1, nheads=8,
      dim_feedforward=ffn_dim, dec_layers=1, pre_norm=False, mask_dim=c, enforce_input_project=False,
      num_frames=1, num_reid_head_layers=3, reid_hidden_dim=256, context_filter_size=filter_size).eval()
  tracker = tracker_module.CAVIS_Tracker(hidden_channel=c, feedforward_channel=ffn_dim, num_head=8,
                                         decoder_layer_num=6, mask_dim=c, class_num=num_classes).eval()
  rng = np.random.default_rng(0)
  with torch.no_grad():   # every weight random (the authors' init leaves the ReID head's biases at 0)
    for module in (decoder.reid_embed, tracker):
      for p in module.parameters():
        p.copy_(torch.from_numpy(rng.normal(size=p.shape) * (0.8 / np.sqrt(p.shape[-1])) if p.ndim > 1
                                 else 1.0 + 0.1 * rng.normal(size=p.shape)).float())
  return commit, decoder, tracker


def main(argv):
  parser = argparse.ArgumentParser(prog="benchmark.py cavis", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_step_flags(parser)
  parser.add_argument("--cavis_git_dir", default=DEFAULT_CAVIS, help="git dir of Seung-Hun-Lee/CAVIS")
  parser.add_argument("--no_reference", action="store_true")
  parser.add_argument("--no_o2vis", action="store_true")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp

  from o2vis_jax import association, checkpoint_conversion

  n, c, k, t = args.queries, args.channels, args.num_classes, args.frames
  h, w = (int(v) for v in args.mask_size.split("x"))
  rng = np.random.default_rng(0)
  embeds = rng.normal(size=(t, n, c)).astype(np.float32)
  embeds_without_norm = rng.normal(size=(t, n, c)).astype(np.float32)
  masks = rng.normal(size=(t, n, h, w)).astype(np.float32)
  mask_features = rng.normal(size=(t, h, w, c)).astype(np.float32)
  print(f"CAVIS step (ReID head + CAIT): N={n} C={c} FFN={args.ffn_dim} K={k} 6 layers, masks {h}x{w}, "
        f"{t} frames per call, median of {args.repeats} after a warm-up; jax {jax.__version__} on "
        f"{jax.default_backend()}, {os.cpu_count()} cores")
  print(load_line())

  reference = None
  if not args.no_reference:
    try:
      import torch
    except ImportError:
      print("torch not installed: no reference timing")
    else:
      if not os.path.isdir(args.cavis_git_dir):
        print(f"--cavis_git_dir {args.cavis_git_dir}: not found; no reference timing")
      else:
        torch.set_num_threads(args.threads)
        commit, decoder, tracker = reference_modules(args.cavis_git_dir, c, args.ffn_dim, k, 9)
        reference = (decoder, tracker)
        state_dict = {f"tracker.{key}": v.detach().numpy() for key, v in tracker.state_dict().items()}
        state_dict.update({f"sem_seg_head.predictor.{key}": v.detach().numpy()
                           for key, v in decoder.state_dict().items()
                           if key.startswith("reid_embed.") or key == "laplacian"})
        print(f"reference: CAVIS @ {commit[:7]}, torch {torch.__version__}, {torch.get_num_threads()} threads")

  if reference is not None:
    config, params = checkpoint_conversion.association_from_reference("cavis", state_dict, 8)
  else:
    from configs import base
    config = association.with_method(base.get_base_config(), "cavis")
    config.association.cavis.ffn_dim = args.ffn_dim
    params = association.get("cavis").init_params(config, jax.random.PRNGKey(0), num_classes=k, hidden_dim=c)
  frames = dict(embeds=jnp.asarray(embeds), embeds_without_norm=jnp.asarray(embeds_without_norm),
                masks=jnp.asarray(masks), mask_features=jnp.asarray(mask_features))

  ours, our_logits = {}, None
  for matcher in args.matchers.split(","):
    config.association.cavis.matcher = matcher
    run = lambda: jax.block_until_ready(association.track(config, params, frames))
    start = time.perf_counter()
    out = run()
    compile_s = time.perf_counter() - start
    ours[matcher] = median_time(run, args.repeats) / t
    print(f"jax   cavis  matcher={matcher:6s} {ours[matcher] * 1e3:8.2f} ms/frame  (first call incl. compile "
          f"{compile_s:.1f} s)")
    if matcher == "host":
      our_logits = np.asarray(out["pred_logits"])

  o2vis_time = None
  if not args.no_o2vis:
    from configs import base
    o2vis_config = association.with_method(base.get_base_config(), "o2vis")
    o2vis_config.tracker.ffn_dim = args.ffn_dim
    o2vis_params = association.get("o2vis").init_params(o2vis_config, jax.random.PRNGKey(0), num_classes=k,
                                                        hidden_dim=c)
    o2vis_frames = {key: frames[key] for key in ("embeds", "embeds_without_norm", "mask_features")}
    run = lambda: jax.block_until_ready(association.track(o2vis_config, o2vis_params, o2vis_frames))
    o2vis_time = median_time(run, args.repeats) / t
    print(f"jax   o2vis  matcher=host   {o2vis_time * 1e3:8.2f} ms/frame  (3 + 3 blocks, OHM, IOM)")

  if reference is not None:
    import torch
    decoder, tracker = reference
    torch_masks = torch.from_numpy(masks)                                   # (t, q, h, w) = (b t) q h w
    torch_features = torch.from_numpy(mask_features).permute(0, 3, 1, 2)    # (t, c, h, w)
    torch_embeds = torch.from_numpy(embeds)                                 # (t, q, c)
    no_norm = torch.from_numpy(embeds_without_norm).permute(2, 0, 1)[None]  # (1, c, t, q)

    def run_reference():
      with torch.no_grad():
        ctx = decoder.get_context_queries(torch_masks, torch_features)              # (q, t, c)
        reid = decoder.reid_embed(torch.cat([torch_embeds.transpose(0, 1), ctx], dim=-1))
        frame_embeds = torch.cat([torch_embeds.transpose(0, 1), reid], dim=-1).permute(2, 1, 0)[None]
        return tracker(frame_embeds, torch_features[None], return_indices=True, frame_embeds_no_norm=no_norm)
    out, _ = run_reference()
    reference_time = median_time(run_reference, args.repeats) / t
    print(f"torch CAVIS head + CAVIS_Tracker  {reference_time * 1e3:8.2f} ms/frame")
    with torch.no_grad():
      ctx = decoder.get_context_queries(torch_masks, torch_features)
      reid = decoder.reid_embed(torch.cat([torch_embeds.transpose(0, 1), ctx], dim=-1))
      frame_embeds = torch.cat([torch_embeds.transpose(0, 1), reid], dim=-1).permute(2, 1, 0)[None]

    def run_tracker_only():
      with torch.no_grad():
        return tracker(frame_embeds, torch_features[None], return_indices=True, frame_embeds_no_norm=no_norm)
    tracker_time = median_time(run_tracker_only, args.repeats) / t
    print(f"torch CAVIS_Tracker alone         {tracker_time * 1e3:8.2f} ms/frame  (their head is a dense "
          f"C x C x {9} x {9} conv per frame)")
    if our_logits is not None:
      difference = np.abs(out["pred_logits"][0].numpy() - our_logits).max()
      print(f"max |pred_logits jax - torch| over the clip: {difference:.2e}")
    for matcher, seconds in ours.items():
      print(f"ratio jax cavis({matcher}) / torch head + tracker time per frame: {seconds / reference_time:.3f}; "
            f"/ torch tracker alone (ours still includes the head): {seconds / tracker_time:.2f}")
  if o2vis_time is not None:
    for matcher, seconds in ours.items():
      print(f"ratio jax cavis({matcher}) / jax o2vis time per frame: {seconds / o2vis_time:.2f}")
  print(load_line())
  return 0
