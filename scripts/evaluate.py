"""Scores a YouTube-VIS / OVIS results file, or packages it for the evaluation servers.

  python scripts/evaluate.py --gt valid.json --results results.json [--json_out metrics.json]
  python scripts/evaluate.py --results results.json --zip submission.zip [--gt valid.json]

Prints the metrics x100 (as papers report them); `--json_out` (alias `--json-out`) writes them as
fractions under the keys AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl (-1 where
undefined), plus AP_light/medium/heavy and AR_light/medium/heavy for OVIS and per_category_AP.
`--zip` writes the archive the servers accept (results.json at its root); with `--gt` the results
are validated first. `--class_agnostic` scores with all categories merged into one (a diagnostic of
segmentation + tracking without classification; o2vis_jax/evaluation/class_agnostic.py).
`--tracking_metrics` adds the identity metrics HOTA, DetA, AssA and IDF1, computed by TrackEval
(o2vis_jax/evaluation/tracking.py) on the tracks scoring at least `--tracking_score_threshold`.
`--association_ceiling` also scores the oracle association of the same per-frame masks (perfect identities,
categories and ranking; o2vis_jax/evaluation/ceiling.py): its AP minus the results' AP is what association
loses, 1 minus it what per-frame segmentation loses; and where the results lose it: along each object's best
track, the share of object-frames on the object (IoU >= 0.5), partial, elsewhere, missing, ghost (a mask while
the object is absent) and absent_empty. `--error_oracles` scores the results with one kind of error removed
(o2vis_jax/evaluation/oracles.py): perfect ranking (scores = tube IoU with the best object of the category),
no ghosts (masks dropped where the track's object is absent), and both.
"""

import json
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from o2vis_jax import cli, evaluation  # noqa: E402

_GT = flags.DEFINE_string(
    "gt", None, "Ground-truth annotation JSON (YouTube-VIS 2019/2021/2022 or OVIS layout).")
_RESULTS = flags.DEFINE_string(
    "results", None, "Results JSON (list of {video_id, category_id, score, segmentations}) or a "
    "server zip holding results.json.", required=True)
_JSON_OUT = flags.DEFINE_string(
    "json_out", None, "Where to write the metrics as fractions (JSON); nothing written if unset.")
flags.DEFINE_alias("json-out", "json_out")
_CLASS_AGNOSTIC = flags.DEFINE_bool(
    "class_agnostic", False, "Merge all categories into one before scoring (a track listed with several "
    "categories counts once, at its best score). A diagnostic, not the official protocol.")
_TRACKING = flags.DEFINE_bool(
    "tracking_metrics", False, "Also compute HOTA, DetA, AssA and IDF1 with TrackEval (identity metrics: "
    "AP barely sees identity switches); in the table and in --json_out.")
_TRACKING_THRESHOLD = flags.DEFINE_float(
    "tracking_score_threshold", evaluation.DEFAULT_SCORE_THRESHOLD, "With --tracking_metrics: the results "
    "that count as the tracker's output (score >= this); the rest of the top-k list is left out.",
    lower_bound=0.0)
_CEILING = flags.DEFINE_bool(
    "association_ceiling", False, "Also score the association ceiling: per ground-truth track and frame, "
    "the predicted mask (of any result) with the highest IoU, the ground truth's category, score 1. Printed "
    "as a second line, and as ceiling_AP, ceiling_AP50, ceiling_AP75, ceiling_AR10 in --json_out; with, "
    "along each object's best track, the share of object-frames per outcome (frames_on_object, frames_partial, "
    "frames_elsewhere, frames_missing, frames_ghost, frames_absent_empty).")
_ORACLES = flags.DEFINE_bool(
    "error_oracles", False, "Also score the results with one kind of error removed: 'perfect_ranking' "
    "(each score replaced by the track's best tube IoU with an object of its category), 'no_ghosts' (masks "
    "dropped at frames where the track's best-matching object is absent) and both. Printed as one line each, "
    "and as <oracle>_AP, _AP50, _AP75, _AR10 in --json_out.")
_ZIP = flags.DEFINE_string(
    "zip", None, "Write the results as a server submission archive (results.json at its root) "
    "to this path.")


CEILING_METRIC_NAMES = ("AP", "AP50", "AP75", "AR10")


def format_table(metrics: dict) -> str:
  """Metrics (fractions) -> a two-line table x100; undefined (-1) shown as '-'."""
  names = list(evaluation.METRIC_NAMES) + [
      name for name in evaluation.OCCLUSION_METRIC_NAMES + evaluation.TRACKING_METRIC_NAMES
      if name in metrics]
  cells = ["-" if metrics[name] == -1 else f"{100 * metrics[name]:.1f}" for name in names]
  widths = [max(len(n), len(c)) for n, c in zip(names, cells)]
  header = "  ".join(n.rjust(w) for n, w in zip(names, widths))
  values = "  ".join(c.rjust(w) for c, w in zip(cells, widths))
  return f"{header}\n{values}"


def check_paths():
  """Inputs readable and outputs writable, before any scoring (which can take minutes on OVIS)."""
  inputs = {}
  if _GT.value is not None:
    inputs["gt"] = cli.check_input_file(_GT.value, "gt")
  inputs["results"] = cli.check_input_file(_RESULTS.value, "results")
  outputs = {}
  for flag, value in (("json_out", _JSON_OUT.value), ("zip", _ZIP.value)):
    if value:
      outputs[flag] = cli.check_output_file(value, flag)
  for flag, path in outputs.items():
    for input_flag, input_path in inputs.items():
      if os.path.exists(path) and os.path.samefile(path, input_path):
        raise cli.InputError(f"--{flag} {path!r} is the --{input_flag} file; give another path")
  if len(set(outputs.values())) < len(outputs):
    raise cli.InputError(f"--json_out and --zip are the same file {outputs['zip']!r}")
  return inputs, outputs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _GT.value is None and _ZIP.value is None:
    raise app.UsageError("--gt is required unless only --zip is asked")
  inputs, outputs = check_paths()
  metrics = None
  if "gt" in inputs:
    gt, results = inputs["gt"], inputs["results"]
    if _CLASS_AGNOSTIC.value:
      gt, results = evaluation.class_agnostic(gt, results)
    gt = evaluation.load_ground_truth(gt)   # read and validated once for every score below
    results = evaluation.load_results(results, gt)
    metrics = evaluation.evaluate(gt, results)
    if _TRACKING.value:
      metrics.update(evaluation.tracking_metrics(gt, results, _TRACKING_THRESHOLD.value))
    if _CEILING.value:
      ceiling = evaluation.evaluate(gt, evaluation.association_oracle(gt, results))
      metrics.update({f"ceiling_{name}": ceiling[name] for name in CEILING_METRIC_NAMES})
      metrics.update({f"frames_{name}": share
                      for name, share in evaluation.best_track_frames(gt, results).items()})
    if _ORACLES.value:
      for name, rewritten in evaluation.error_oracles(gt, results).items():
        scored = evaluation.evaluate(gt, rewritten)
        metrics.update({f"{name}_{metric}": scored[metric] for metric in CEILING_METRIC_NAMES})
  results = evaluation.read_results_file(inputs["results"]) if "zip" in outputs else None
  if metrics is not None:
    print(format_table(metrics))
    if "ceiling_AP" in metrics:
      print("association ceiling (these masks, perfect identities): " + ", ".join(
          f"{name} {100 * metrics['ceiling_' + name]:.1f}" for name in CEILING_METRIC_NAMES))
      print("each object's best track, share of object-frames: " + ", ".join(
          f"{name} {100 * metrics['frames_' + name]:.1f}%" for name in evaluation.FRAME_OUTCOMES
          if "frames_" + name in metrics))
    for name in evaluation.ORACLES:
      if f"{name}_AP" in metrics:
        print(f"oracle {name}: " + ", ".join(
            f"{metric} {100 * metrics[f'{name}_{metric}']:.1f}" for metric in CEILING_METRIC_NAMES))
    per_category = metrics["per_category_AP"]
    print("per-category AP: " + ", ".join(
        f"{name} {'-' if ap == -1 else f'{100 * ap:.1f}'}" for name, ap in per_category.items()))
    if "json_out" in outputs:
      def write_metrics(path):
        with open(path, "w") as f:
          json.dump(metrics, f, indent=1)
      cli.write_atomically(outputs["json_out"], write_metrics)
      print(f"wrote {_JSON_OUT.value}")
  if "zip" in outputs:
    cli.write_atomically(outputs["zip"], lambda path: evaluation.write_results_zip(path, results))
    print(f"wrote {_ZIP.value}")


if __name__ == "__main__":
  cli.run(main)
