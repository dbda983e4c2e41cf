"""YouTube-VIS / OVIS evaluation (SPEC section 8) and results files.

`evaluate(ground_truth, results)` -> the 12 metrics as fractions (+ OVIS occlusion AP/AR and
per-category AP); `tracking_metrics(ground_truth, results)` -> HOTA, DetA, AssA, IDF1 (TrackEval);
`association_oracle(ground_truth, results)` -> the results' per-frame masks with perfect identities;
`best_track_frames(ground_truth, results)` -> what each object's best track holds, frame by frame;
`error_oracles(ground_truth, results)` -> the results with one kind of error removed (ranking, ghosts);
`instance_to_result`, `write_results`, `write_results_zip` write what the
evaluation servers accept.
"""

from o2vis_jax.evaluation.ceiling import FRAME_OUTCOMES, association_oracle, best_track_frames
from o2vis_jax.evaluation.class_agnostic import class_agnostic
from o2vis_jax.evaluation.errors import EvaluationInputError
from o2vis_jax.evaluation.evaluate import evaluate
from o2vis_jax.evaluation.ground_truth import GroundTruth, load_ground_truth
from o2vis_jax.evaluation.oracles import ORACLES, error_oracles
from o2vis_jax.evaluation.protocol import METRIC_NAMES, OCCLUSION_METRIC_NAMES
from o2vis_jax.evaluation.results import (ground_truth_to_results, instance_to_result,
                                          load_results, read_results_file, write_results,
                                          write_results_zip)
from o2vis_jax.evaluation.tracking import (DEFAULT_SCORE_THRESHOLD, TRACKING_METRIC_NAMES,
                                           tracking_metrics)

__all__ = [
    "EvaluationInputError", "GroundTruth", "ORACLES", "association_oracle", "best_track_frames",
    "error_oracles", "FRAME_OUTCOMES", "class_agnostic", "METRIC_NAMES", "OCCLUSION_METRIC_NAMES", "evaluate",
    "ground_truth_to_results", "instance_to_result", "load_ground_truth", "load_results",
    "read_results_file", "write_results", "write_results_zip", "DEFAULT_SCORE_THRESHOLD",
    "TRACKING_METRIC_NAMES", "tracking_metrics",
]
