"""The O2VIS tracker step against the authors' LOMM tracker (PyTorch), side by side in one process.

  python scripts/benchmark.py tracker [--frames 10] [--mask_size 120x160] [--repeats 5]
      [--lomm_git_dir /work/.mirror/Seung-Hun-Lee+LOMM/repo] [--matchers host,device]

The reference is `LOMM_Tracker` of lomm/lomm_tracker.py, read from a (bare) git dir of Seung-Hun-Lee/LOMM
and imported from a temporary directory with its detectron2 / fvcore imports stubbed (as
scripts/make_refiner_fixtures.py does); it is built at the reference dims (C 256, FFN 2048, 8 heads,
3 + 3 blocks, K 40), its random weights are converted with `association.o2vis.convert`, and both run the
same `--frames` frames of random segmenter outputs (N queries, mask features h x w) in eval mode, the
reference as LOMM's inference calls it (one forward over the clip, `return_indices=True`). Timing: one
warm-up call (for us: the compilation), then the median of `--repeats` calls, per frame. PyTorch runs
with as many threads as XLA's CPU client uses (`--threads`, default the number of cores). The machine's
load (`os.getloadavg()`) is printed before and after: the reference suffers more from load than XLA, so
a figure taken on a loaded machine flatters us. Also printed: the largest difference of the class
logits of the two (a check that the converted weights run the same model), and the number of host
callbacks per frame of our step.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

from benchmarks._common import add_step_flags, load_line, median_time

DEFAULT_LOMM = "/work/.mirror/Seung-Hun-Lee+LOMM/repo"
TRACKER_FILE = "lomm/lomm_tracker.py"
LAYERS_FILE = "mask2former_video/modeling/transformer_decoder/video_mask2former_transformer_decoder.py"



def load_text(git_dir, path):
  return subprocess.check_output(["git", f"--git-dir={git_dir}", "show", f"HEAD:{path}"], text=True)


def _stub_modules():
  """sys.modules stubs for the imports of the LOMM files that the tracker does not use."""
  def module(name, **attrs):
    mod = sys.modules.get(name) or types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod

  class Registry:
    def register(self, *args, **kwargs):
      return lambda obj: obj

  import torch
  fill = lambda layer: (torch.nn.init.kaiming_uniform_(layer.weight, a=1),
                        torch.nn.init.zeros_(layer.bias) if layer.bias is not None else None)
  module("fvcore")
  module("fvcore.nn", weight_init=module("fvcore.nn.weight_init", c2_xavier_fill=fill))
  module("detectron2")
  module("detectron2.config", configurable=lambda f=None, **kw: f if f is not None else (lambda g: g))
  module("detectron2.layers", Conv2d=None)
  for name in ("mask2former", "mask2former.modeling", "mask2former.modeling.transformer_decoder"):
    module(name)
  module("mask2former.modeling.transformer_decoder.maskformer_transformer_decoder",
         TRANSFORMER_DECODER_REGISTRY=Registry())


def load_lomm_tracker_class(git_dir, workdir):
  """`LOMM_Tracker` of the authors' lomm/lomm_tracker.py (and the layer file it imports)."""
  import importlib.util
  for path in (TRACKER_FILE, LAYERS_FILE):
    full = os.path.join(workdir, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
      f.write(load_text(git_dir, path))
  package = os.path.join(workdir, os.path.dirname(LAYERS_FILE))
  with open(os.path.join(package, "position_encoding.py"), "w") as f:
    f.write("PositionEmbeddingSine3D = None  # stub: the tracker uses no positions\n")
  for directory in ("lomm", "mask2former_video", "mask2former_video/modeling", os.path.dirname(LAYERS_FILE)):
    open(os.path.join(workdir, directory, "__init__.py"), "a").close()
  _stub_modules()
  sys.path.insert(0, workdir)
  spec = importlib.util.spec_from_file_location("lomm_tracker_reference", os.path.join(workdir, TRACKER_FILE))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.LOMM_Tracker



def count_callbacks(fn, *args):
  """pure_callback equations in the jaxpr of `fn(*args)` (inside loops and conds, counted once each)."""
  import jax
  import jax.extend.core
  count = 0

  def walk(jaxpr):
    nonlocal count
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "pure_callback":
        count += 1
      for value in eqn.params.values():
        for sub in (value if isinstance(value, (list, tuple)) else [value]):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            walk(sub)
  walk(jax.make_jaxpr(fn)(*args).jaxpr)
  return count


def main(argv):
  parser = argparse.ArgumentParser(prog="benchmark.py tracker", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_step_flags(parser, mask_size_help="h x w of mask_features (480x640 input / 4)")
  parser.add_argument("--layers", type=int, default=3, help="blocks in T_E and in T_A each")
  parser.add_argument("--lomm_git_dir", default=DEFAULT_LOMM, help="git dir of Seung-Hun-Lee/LOMM")
  parser.add_argument("--no_reference", action="store_true")
  args = parser.parse_args(argv)

  import jax
  import jax.numpy as jnp

  from o2vis_jax import association
  from o2vis_jax.association.o2vis import convert

  n, c, k, t = args.queries, args.channels, args.num_classes, args.frames
  h, w = (int(v) for v in args.mask_size.split("x"))
  rng = np.random.default_rng(0)
  embeds = rng.normal(size=(t, n, c)).astype(np.float32)
  embeds_without_norm = rng.normal(size=(t, n, c)).astype(np.float32)
  mask_features = rng.normal(size=(t, h, w, c)).astype(np.float32)
  logits = (rng.normal(size=(t, n, k + 1)) * 2).astype(np.float32)
  print(f"O2VIS tracker step: N={n} C={c} FFN={args.ffn_dim} K={k} {args.layers}+{args.layers} blocks, "
        f"masks {h}x{w}, {t} frames per call, median of {args.repeats} after a warm-up; "
        f"jax {jax.__version__} on {jax.default_backend()}, {os.cpu_count()} cores")
  print(load_line())

  reference = None
  state_dict = None
  if not args.no_reference:
    try:
      import torch
    except ImportError:
      print("torch not installed: no reference timing")
    else:
      if not os.path.isdir(args.lomm_git_dir):
        print(f"--lomm_git_dir {args.lomm_git_dir}: not found; no reference timing")
      else:
        torch.set_num_threads(args.threads)
        workdir = tempfile.mkdtemp(prefix="lomm_tracker_")
        tracker_class = load_lomm_tracker_class(args.lomm_git_dir, workdir)
        torch.manual_seed(0)
        reference = tracker_class(hidden_channel=c, feedforward_channel=args.ffn_dim, num_head=8,
                                  decoder_layer_num=2 * args.layers, mask_dim=c, class_num=k).eval()
        state_dict = {key: v.detach().numpy() for key, v in reference.state_dict().items()}

  if state_dict is not None:
    config, params = convert.tracker_from_reference(state_dict, 8)
  else:
    from configs import base
    config = association.with_method(base.get_base_config(), "o2vis")
    config.tracker.ffn_dim, config.tracker.num_layers = args.ffn_dim, args.layers
    params = association.get("o2vis").init_params(config, jax.random.PRNGKey(0), num_classes=k, hidden_dim=c)
  frames = dict(embeds=jnp.asarray(embeds), embeds_without_norm=jnp.asarray(embeds_without_norm),
                mask_features=jnp.asarray(mask_features), logits=jnp.asarray(logits))

  ours = {}
  for matcher in args.matchers.split(","):
    config.tracker.matcher = matcher
    run = lambda: jax.block_until_ready(association.track(config, params, frames))
    start = time.perf_counter()
    out = run()
    compile_s = time.perf_counter() - start
    ours[matcher] = median_time(run, args.repeats) / t
    callbacks = count_callbacks(lambda p, f: association.track(config, p, f), params, frames)
    print(f"jax    matcher={matcher:6s} {ours[matcher] * 1e3:8.2f} ms/frame  (first call incl. compile "
          f"{compile_s:.1f} s; host callbacks per frame: {callbacks})")
    if matcher == "host":
      our_logits = np.asarray(out["pred_logits"])

  if reference is not None:
    import torch
    fg_prob = 1 - torch.softmax(torch.from_numpy(logits), -1)[..., -1:]          # t q 1
    inputs = dict(frame_embeds=torch.from_numpy(embeds).permute(2, 0, 1)[None],  # b c t q
                  frame_embeds_no_norm=torch.from_numpy(embeds_without_norm).permute(2, 0, 1)[None],
                  mask_features=torch.from_numpy(mask_features).permute(0, 3, 1, 2)[None],  # b t c h w
                  fg_prob=fg_prob[:, :, None])                                    # t q b 1

    def run_reference():
      with torch.no_grad():
        return reference(inputs["frame_embeds"], inputs["mask_features"], inputs["fg_prob"],
                         return_indices=True, frame_embeds_no_norm=inputs["frame_embeds_no_norm"])
    out, _ = run_reference()
    reference_time = median_time(run_reference, args.repeats) / t
    print(f"torch  LOMM_Tracker   {reference_time * 1e3:8.2f} ms/frame  ({torch.get_num_threads()} threads, "
          f"torch {torch.__version__})")
    if "host" in ours:
      difference = np.abs(out["pred_logits"][0].numpy() - our_logits).max()
      print(f"max |pred_logits jax - torch| over the clip: {difference:.2e}")
    for matcher, seconds in ours.items():
      print(f"ratio jax({matcher}) / torch time per frame: {seconds / reference_time:.2f}")
  print(load_line())
  return 0
