r"""Writes tests/fixtures/refiner_reference.npz: the AUTHORS' `TemporalRefiner` (LOMM `lomm/refiner.py`,
itself a copy of DVIS++'s) run in float64 on small random weights, so that tests/test_refiner.py needs no torch.

  python scripts/make_refiner_fixtures.py --lomm_git_dir /path/to/LOMM/.git     # a (bare) git dir, or
  python scripts/make_refiner_fixtures.py --lomm_dir /path/to/LOMM               # a checkout

Needs torch (2.13.0 CPU was used). The authors' code is not part of this repository: the two files the
refiner needs, `lomm/refiner.py` and the layer file it imports
(`mask2former_video/modeling/transformer_decoder/video_mask2former_transformer_decoder.py`), are copied
into a temporary package at run time; the detectron2 / fvcore / mask2former imports of the layer file are
replaced by stubs in `sys.modules` (the refiner uses none of them).

What it records (sizes below; float64 unless noted):
  source/commit                   the LOMM commit the code came from (bytes of the hex string)
  state/<key>                     the refiner's state dict (PyTorch names, no `refiner.` prefix); every
                                  parameter drawn at random, LayerNorm scales around 1
  T{t}/instance_embeds [1,C,T,N], T{t}/frame_embeds [1,C,T,Nseg], T{t}/mask_features [1,T,C,h,w]
  T{t}/pred_logits [1,T,N,K+1], T{t}/pred_masks [1,N,T,h,w]  training mode, last layer
  T{t}/aux{l}/pred_logits, T{t}/aux{l}/pred_masks           training mode, layers l = 0..L-2
  T{t}/eval/pred_logits, T{t}/eval/pred_masks               eval mode (windows_prediction, cast to float32
                                                            by the authors' code)
for T = 1, 7, 40.
"""

import argparse
import importlib.util
import os
import sys
import tempfile

import numpy as np

import reference_sources  # scripts/reference_sources.py (next to this script)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "refiner_reference.npz")

# The sizes tests/test_refiner.py uses.
C, HEADS, FFN_DIM, K, LAYERS, N, N_SEG, H, W, WINDOWS = 16, 4, 24, 4, 3, 4, 5, 6, 5, 3
FRAMES = (1, 7, 40)

REFINER = "lomm/refiner.py"
LAYERS_FILE = "mask2former_video/modeling/transformer_decoder/video_mask2former_transformer_decoder.py"


def read_sources(args):
  """(commit, {path: text}) of the authors' files, from a git dir or a checkout."""
  return reference_sources.read_sources((REFINER, LAYERS_FILE), args.lomm_git_dir, args.lomm_dir)


def install_stubs():
  """sys.modules stubs for the imports of the layer file that the refiner does not use."""
  module = reference_sources.stub_module

  Registry = reference_sources.Registry

  module("fvcore")
  module("fvcore.nn", weight_init=module("fvcore.nn.weight_init"))
  module("detectron2")
  module("detectron2.config", configurable=lambda f=None, **kw: f if f is not None else (lambda g: g))
  module("detectron2.layers", Conv2d=None)
  for name in ("mask2former", "mask2former.modeling", "mask2former.modeling.transformer_decoder"):
    module(name)
  module("mask2former.modeling.transformer_decoder.maskformer_transformer_decoder",
         TRANSFORMER_DECODER_REGISTRY=Registry())


def load_refiner_class(texts, workdir):
  """Writes the two files into `workdir` as packages and imports `TemporalRefiner`."""
  for path, text in texts.items():
    full = os.path.join(workdir, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
      f.write(text)
  package = os.path.join(workdir, os.path.dirname(LAYERS_FILE))
  with open(os.path.join(package, "position_encoding.py"), "w") as f:
    f.write("PositionEmbeddingSine3D = None  # stub: the refiner uses no positions\n")
  for directory in ("lomm", "mask2former_video", "mask2former_video/modeling", os.path.dirname(LAYERS_FILE)):
    open(os.path.join(workdir, directory, "__init__.py"), "w").close()
  install_stubs()
  sys.path.insert(0, workdir)
  spec = importlib.util.spec_from_file_location("lomm_refiner", os.path.join(workdir, REFINER))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.TemporalRefiner


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--lomm_git_dir", help="git dir of Seung-Hun-Lee/LOMM (bare is fine)")
  source.add_argument("--lomm_dir", help="a checkout of Seung-Hun-Lee/LOMM")
  parser.add_argument("--out", default=OUT)
  args = parser.parse_args(argv)

  import torch
  torch.set_default_dtype(torch.float64)
  commit, texts = read_sources(args)
  with tempfile.TemporaryDirectory() as workdir:
    refiner_class = load_refiner_class(texts, workdir)
    torch.manual_seed(0)
    model = refiner_class(hidden_channel=C, feedforward_channel=FFN_DIM, num_head=HEADS,
                          decoder_layer_num=LAYERS, mask_dim=C, class_num=K, windows=WINDOWS).double()
    rng = np.random.default_rng(0)
    with torch.no_grad():
      for name, p in model.named_parameters():
        # Every parameter random (biases too), LayerNorm scales around 1: zero biases would hide swaps.
        is_norm_scale = p.ndim == 1 and ("norm" in name) and name.endswith("weight")
        value = (1.0 + 0.2 * rng.normal(size=p.shape)) if is_norm_scale else (
            rng.normal(size=p.shape) * (0.6 / np.sqrt(p.shape[-1] if p.ndim > 1 else C)) if p.ndim > 1
            else rng.normal(size=p.shape) * 0.2)
        if p.ndim == 3:  # conv [C_out, C_in, k]: fan-in is C_in * k
          value = rng.normal(size=p.shape) * (0.6 / np.sqrt(p.shape[1] * p.shape[2]))
        p.copy_(torch.from_numpy(value))
    arrays = {"source/commit": np.frombuffer(commit.encode(), np.uint8)}
    arrays.update({f"state/{k}": v.detach().numpy().copy() for k, v in model.state_dict().items()})
    for t in FRAMES:
      inputs = dict(instance_embeds=rng.normal(size=(1, C, t, N)),
                    frame_embeds=rng.normal(size=(1, C, t, N_SEG)),
                    mask_features=rng.normal(size=(1, t, C, H, W)))
      arrays.update({f"T{t}/{k}": v for k, v in inputs.items()})
      torch_inputs = [torch.from_numpy(inputs[k])
                      for k in ("instance_embeds", "frame_embeds", "mask_features")]
      with torch.no_grad():
        model.train()
        out = model(*torch_inputs)
        arrays[f"T{t}/pred_logits"] = out["pred_logits"].numpy()
        arrays[f"T{t}/pred_masks"] = out["pred_masks"].numpy()
        assert len(out["aux_outputs"]) == LAYERS - 1
        for layer, aux in enumerate(out["aux_outputs"]):
          arrays[f"T{t}/aux{layer}/pred_logits"] = aux["pred_logits"].numpy()
          arrays[f"T{t}/aux{layer}/pred_masks"] = aux["pred_masks"].numpy()
        model.eval()
        out = model(*torch_inputs)
        assert out["aux_outputs"] == []
        arrays[f"T{t}/eval/pred_logits"] = out["pred_logits"].numpy()
        arrays[f"T{t}/eval/pred_masks"] = out["pred_masks"].numpy()
  np.savez_compressed(args.out, **arrays)
  print(f"wrote {args.out}: {len(arrays)} arrays, LOMM @ {commit}")


if __name__ == "__main__":
  main()
