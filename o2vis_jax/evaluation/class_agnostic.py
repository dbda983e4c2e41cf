"""Class-agnostic scoring: every category becomes one "object" category (a diagnostic, not the protocol).

It separates what a model gets wrong in segmentation and tracking from what it gets wrong in
classification. Ground-truth tracks keep their masks and lose their category. A results list often holds
one track several times with different categories (VIS post-processing takes the top-k over (track x
class) pairs). Those copies share their segmentations exactly; only the highest-scoring copy is kept, so
that a track is counted once.
"""

import json
import os
from typing import Tuple, Union

from o2vis_jax.evaluation.errors import read_json
from o2vis_jax.evaluation.results import read_results_file

AGNOSTIC_CATEGORY = {"id": 1, "name": "object"}


def class_agnostic(ground_truth: Union[dict, str, os.PathLike],
                   results: Union[list, str, os.PathLike]) -> Tuple[dict, list]:
  """(annotation dict, results list) with one category; pass both to `evaluation.evaluate`."""
  gt = dict(ground_truth if isinstance(ground_truth, dict) else read_json(ground_truth, "ground truth"))
  gt["annotations"] = [dict(a, category_id=AGNOSTIC_CATEGORY["id"]) for a in gt.get("annotations", [])]
  gt["categories"] = [dict(AGNOSTIC_CATEGORY)]
  if not isinstance(results, list):
    results = read_results_file(results)
  best = {}
  for entry in results:
    key = (entry.get("video_id"), json.dumps(entry.get("segmentations"), sort_keys=True))
    if key not in best or float(entry.get("score", 0.0)) > float(best[key].get("score", 0.0)):
      best[key] = dict(entry, category_id=AGNOSTIC_CATEGORY["id"])
  return gt, list(best.values())
