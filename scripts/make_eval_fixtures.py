"""Generates tests/fixtures/eval_official_cases.json: random YouTube-VIS / OVIS cases scored by
the official evaluators, for the parity test of `o2vis_jax.evaluation`
(tests/test_evaluation_parity.py).

Not run by the tests. It needs the official sources, which are NOT part of this repository:
`ytvos.py` + `ytvoseval.py` from github.com/youtubevos/cocoapi and `ovis.py` + `oviseval.py` from
github.com/qjy981010/cocoapi (both under PythonAPI/pycocotools/), copied into one directory:

  python scripts/make_eval_fixtures.py --official_dir /tmp/official_cocoapi

They are imported as they are; only their environment is adapted to NumPy 2 / Python 3 (np.float,
a float `num` for np.linspace, the Python 2 name `unicode`, matplotlib imports they never use).
"""

import contextlib
import copy
import importlib.util
import io
import json
import os
import sys
import types

from absl import app
from absl import flags
import numpy as np
from pycocotools import mask as mask_utils

_OFFICIAL_DIR = flags.DEFINE_string(
    "official_dir", None, "Directory holding the official ytvos.py, ytvoseval.py, ovis.py and "
    "oviseval.py.", required=True)
_OUT = flags.DEFINE_string(
    "out", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                        "fixtures", "eval_official_cases.json"), "Fixture file to write.")
_NUM_CASES = flags.DEFINE_integer("num_cases", 32, "Number of random cases (a third are OVIS).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")

OCCLUSION_LABELS = ("no_occlusion", "slight_occlusion", "severe_occlusion")
# GT `areas` are taken from the JSON, independent of the masks: these put objects on the
# area-range boundaries (128^2, 256^2) and next to them.
BOUNDARY_AREAS = (16383.0, 16384.0, 16385.0, 65535.0, 65536.0, 65537.0, 16384.5)


def _load_official(directory: str) -> dict:
  """Imports the official modules as a package whose `mask` is pycocotools.mask."""
  for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.collections", "matplotlib.patches"):
    stub = types.ModuleType(name)
    stub.PatchCollection = stub.Polygon = object
    sys.modules.setdefault(name, stub)
  np.float = float  # removed in NumPy 1.24, used by accumulate()
  linspace = np.linspace
  np.linspace = lambda start, stop, num=50, **kw: linspace(start, stop, int(num), **kw)
  package = types.ModuleType("official_cocoapi")
  package.__path__ = [directory]
  sys.modules["official_cocoapi"] = package
  sys.modules["official_cocoapi.mask"] = mask_utils
  modules = {}
  for name in ("ytvos", "ytvoseval", "ovis", "oviseval"):
    spec = importlib.util.spec_from_file_location(f"official_cocoapi.{name}",
                                                  os.path.join(directory, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    module.unicode = str
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    modules[name] = module
  return modules


def _rect_mask(rng, height, width, center=None, size=None):
  if center is None:
    center = rng.uniform([0, 0], [height, width])
  if size is None:
    size = rng.uniform([4, 4], [height * 0.9, width * 0.9])
  y0, x0 = np.clip((center - size / 2).astype(int), 0, [height - 1, width - 1])
  y1, x1 = np.clip((center + size / 2).astype(int), [y0 + 1, x0 + 1], [height, width])
  mask = np.zeros((height, width), np.uint8)
  mask[y0:y1, x0:x1] = 1
  return mask, (x0, y0, x1, y1)


def _compressed(mask):
  rle = mask_utils.encode(np.asfortranarray(mask))
  return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def _uncompressed(mask):
  flat = mask.flatten(order="F")
  changes = np.flatnonzero(np.diff(flat)) + 1
  bounds = np.concatenate([[0], changes, [flat.size]])
  counts = np.diff(bounds).tolist()
  if flat[0] == 1:
    counts = [0] + counts
  return {"size": list(mask.shape), "counts": counts}


def _gt_segmentation(rng, mask, box):
  kind = rng.choice(["compressed", "uncompressed", "polygon"], p=[0.6, 0.15, 0.25])
  if kind == "compressed":
    return _compressed(mask)
  if kind == "uncompressed":
    return _uncompressed(mask)
  x0, y0, x1, y1 = (float(v) for v in box)
  return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _track_masks(rng, height, width, num_frames, absent_probability):
  center = rng.uniform([0, 0], [height, width])
  size = rng.uniform([6, 6], [height * 0.9, width * 0.9])
  masks, boxes = [], []
  for _ in range(num_frames):
    center = center + rng.normal(0, 6, 2)
    size = np.maximum(size * rng.uniform(0.85, 1.15, 2), 4)
    if rng.random() < absent_probability:
      masks.append(None)
      boxes.append(None)
    else:
      mask, box = _rect_mask(rng, height, width, center, size)
      masks.append(mask)
      boxes.append(box)
  return masks, boxes


def _random_case(rng, with_occlusion: bool, many_predictions: bool):
  category_ids = sorted(rng.choice(np.arange(1, 9), size=rng.integers(1, 4), replace=False))
  categories = [{"id": int(c), "name": f"class_{c}", "supercategory": "object"}
                for c in category_ids]
  videos, annotations, results = [], [], []
  tie_scores = (0.3, 0.5, 0.7, 0.9)
  for video_index in range(rng.integers(1, 4)):
    video_id = int(video_index * 2 + rng.integers(1, 3))
    height, width = int(rng.integers(120, 300)), int(rng.integers(120, 400))
    num_frames = int(rng.integers(1, 8))
    videos.append({"id": video_id, "height": height, "width": width, "length": num_frames,
                   "file_names": [f"v{video_id}/{f:05d}.jpg" for f in range(num_frames)]})
    for _ in range(rng.integers(0, 5)):
      category_id = int(rng.choice(category_ids))
      masks, boxes = _track_masks(rng, height, width, num_frames, 0.2)
      segmentations = [None if m is None else _gt_segmentation(rng, m, b)
                       for m, b in zip(masks, boxes)]
      areas = [None if m is None else float(m.sum()) for m in masks]
      if rng.random() < 0.3 and any(a is not None for a in areas):
        present = [i for i, a in enumerate(areas) if a is not None]
        boundary = float(rng.choice(BOUNDARY_AREAS))
        for i in present:
          areas[i] = boundary
      annotation = {"id": len(annotations) + 1, "video_id": video_id,
                    "category_id": category_id, "iscrowd": int(rng.random() < 0.1),
                    "segmentations": segmentations, "areas": areas,
                    "bboxes": [None if b is None else [int(b[0]), int(b[1]), int(b[2] - b[0]),
                                                        int(b[3] - b[1])]
                               for b in boxes],
                    "height": height, "width": width, "length": 1}
      if with_occlusion:
        labels = [None if m is None else str(rng.choice(OCCLUSION_LABELS)) for m in masks]
        if all(label is None for label in labels):
          labels[0] = str(rng.choice(OCCLUSION_LABELS))
        annotation["occlusion"] = labels
      annotations.append(annotation)
      # Predictions near this object: jittered copies, frames dropped or added.
      for _ in range(rng.integers(0, 3)):
        predicted = []
        for mask, box in zip(masks, boxes):
          if mask is None or rng.random() < 0.15:
            predicted.append(_rect_mask(rng, height, width)[0] if rng.random() < 0.2 else None)
          else:
            x0, y0, x1, y1 = box
            shift = rng.integers(-8, 9, 4)
            jittered = np.zeros_like(mask)
            jittered[max(0, y0 + shift[1]):max(1, y1 + shift[3]),
                     max(0, x0 + shift[0]):max(1, x1 + shift[2])] = 1
            predicted.append(jittered)
        results.append(_result(rng, video_id, category_id if rng.random() < 0.85
                                else int(rng.choice(category_ids)), predicted, tie_scores))
    num_false_positives = rng.integers(9, 14) if many_predictions else rng.integers(0, 3)
    for _ in range(num_false_positives):
      masks, _ = _track_masks(rng, height, width, num_frames, 0.3)
      results.append(_result(rng, video_id, int(rng.choice(category_ids)), masks, tie_scores))
  return {"videos": videos, "categories": categories, "annotations": annotations}, results


def _result(rng, video_id, category_id, masks, tie_scores):
  score = float(rng.choice(tie_scores)) if rng.random() < 0.4 else float(rng.random())
  return {"video_id": video_id, "category_id": category_id, "score": score,
          "segmentations": [None if m is None else _compressed(m) for m in masks]}


def _official_metrics(modules, ground_truth, results, with_occlusion):
  api_name, eval_name = ("ovis", "oviseval") if with_occlusion else ("ytvos", "ytvoseval")
  api_class = modules[api_name].OVIS if with_occlusion else modules[api_name].YTVOS
  eval_class = (modules[eval_name].OVISeval if with_occlusion
                else modules[eval_name].YTVOSeval)
  with contextlib.redirect_stdout(io.StringIO()):
    gt_api = api_class()
    gt_api.dataset = copy.deepcopy(ground_truth)
    gt_api.createIndex()
    dt_api = gt_api.loadRes(copy.deepcopy(results))
    evaluator = eval_class(gt_api, dt_api, "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  stats = [float(v) for v in evaluator.stats]
  names = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
  if with_occlusion:
    names += ["AP_light", "AP_medium", "AP_heavy"]
  names += ["AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
  if with_occlusion:
    names += ["AR_light", "AR_medium", "AR_heavy"]
  metrics = dict(zip(names, stats))
  precision = evaluator.eval["precision"]
  per_category = {}
  for k, category_id in enumerate(evaluator.params.catIds):
    values = precision[:, :, k, 0, 0, -1] if with_occlusion else precision[:, :, k, 0, -1]
    defined = values[values > -1]
    name = gt_api.cats[category_id]["name"]
    per_category[name] = float(np.mean(defined)) if defined.size else -1.0
  return metrics, per_category


def main(argv):
  del argv
  modules = _load_official(_OFFICIAL_DIR.value)
  rng = np.random.default_rng(_SEED.value)
  cases = []
  while len(cases) < _NUM_CASES.value:
    index = len(cases)
    with_occlusion = index % 3 == 2
    ground_truth, results = _random_case(rng, with_occlusion, many_predictions=index % 4 == 1)
    if not results:  # the official loadRes cannot read an empty list
      continue
    metrics, per_category = _official_metrics(modules, ground_truth, results, with_occlusion)
    cases.append({"name": f"case_{index}", "ground_truth": ground_truth, "results": results,
                  "official_metrics": metrics, "official_per_category_AP": per_category})
  with open(_OUT.value, "w") as f:
    json.dump({"generator": "scripts/make_eval_fixtures.py", "seed": _SEED.value,
               "cases": cases}, f, separators=(",", ":"))
  print(f"wrote {len(cases)} cases to {_OUT.value} ({os.path.getsize(_OUT.value)} bytes)")


if __name__ == "__main__":
  app.run(main)
