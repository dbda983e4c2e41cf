"""The association ceiling and the best-track frame outcomes (o2vis_jax/evaluation/ceiling.py) and the error
oracles (o2vis_jax/evaluation/oracles.py) on hand-made cases: an identity swap that perfect association undoes,
a partial mask whose tube IoU is worked out, a ghost mask while the object is hidden, the score threshold,
crowd tracks, what each oracle rewrites and the AP it then scores, and scripts/evaluate.py's flags."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from o2vis_jax import evaluation
from o2vis_jax.evaluation import ceiling, oracles
from o2vis_jax.evaluation.results import encode_masks
from o2vis_jax.evaluation.rle import decode_mask

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, FRAMES = 16, 4
# Two objects at fixed places (5 x 5 = 25 px each), visible in every frame, of categories 1 and 2;
# "left_of_2" is object 2's two left columns (5 x 2 = 10 px).
# "corner" (3 x 4 px) touches neither object.
BOXES = {1: (1, 1, 6, 6), 2: (9, 9, 14, 14), "left_of_2": (9, 9, 11, 14), "corner": (0, 12, 3, 16)}


def _mask(key):
  mask = np.zeros((SIZE, SIZE), bool)
  x0, y0, x1, y1 = BOXES[key]
  mask[y0:y1, x0:x1] = True
  return mask


def _segmentations(keys):
  return [None if key is None else encode_masks(_mask(key)[None])[0] for key in keys]


def _ground_truth(crowd_second=False):
  return {"videos": [{"id": 1, "width": SIZE, "height": SIZE, "length": FRAMES,
                      "file_names": [f"v/{t}.jpg" for t in range(FRAMES)]}],
          "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
          "annotations": [{"id": key, "video_id": 1, "category_id": key, "iscrowd": int(crowd_second and key == 2),
                           "segmentations": _segmentations([key] * FRAMES),
                           "areas": [25.0] * FRAMES} for key in (1, 2)]}


def _result(keys, score=0.9, category_id=1):
  return {"video_id": 1, "category_id": category_id, "score": score, "segmentations": _segmentations(keys)}


def _decoded(track):
  return [None if s is None else decode_mask(s) for s in track["segmentations"]]


def test_an_identity_swap_is_undone():
  # Two tracks swap the objects after frame 1: each covers 2 of 4 frames of each object, tube IoU
  # 50 / (100 + 100 - 50) = 1/3 with either: AP 0 for both categories. The per-frame masks are exact, so
  # the oracle rebuilds the ground truth: AP 1.
  results = [_result([1, 1, 2, 2], category_id=1), _result([2, 2, 1, 1], category_id=2)]
  assert evaluation.evaluate(_ground_truth(), results)["AP"] == 0.0
  oracle = ceiling.association_oracle(_ground_truth(), results)
  assert [(t["category_id"], t["score"]) for t in oracle] == [(1, 1.0), (2, 1.0)]
  for track, key in zip(oracle, (1, 2)):
    assert all(np.array_equal(m, _mask(key)) for m in _decoded(track))
  assert evaluation.evaluate(_ground_truth(), oracle)["AP"] == pytest.approx(1.0, abs=1e-12)


def test_best_mask_per_frame_and_absent_frames():
  # Object 2 is predicted only as its left part (10 of 25 px) at frames 0 and 1, whole at frame 3, and not
  # at all at frame 2 (only object 1's mask, IoU 0 with it): the oracle track is [left, left, None, whole],
  # tube IoU (10 + 10 + 0 + 25) / 100 = 0.45 < 0.5: AP 0 for category 2, so AP = (1 + 0) / 2.
  results = [_result([1, 1, 1, 1]), _result(["left_of_2", "left_of_2", None, 2], score=0.5)]
  oracle = ceiling.association_oracle(_ground_truth(), results)
  second = _decoded(oracle[1])
  assert np.array_equal(second[0], _mask("left_of_2")) and np.array_equal(second[1], _mask("left_of_2"))
  assert second[2] is None and np.array_equal(second[3], _mask(2))
  assert evaluation.evaluate(_ground_truth(), oracle)["AP"] == pytest.approx(0.5, abs=1e-12)
  # Above the threshold only the first result's masks remain: object 2 gets no mask in any frame.
  thresholded = ceiling.association_oracle(_ground_truth(), results, score_threshold=0.6)
  assert thresholded[1]["segmentations"] == [None] * FRAMES


def test_crowd_tracks_and_bad_threshold():
  oracle = ceiling.association_oracle(_ground_truth(crowd_second=True), [_result([1, 1, 1, 1])])
  assert len(oracle) == 1 and oracle[0]["category_id"] == 1
  with pytest.raises(ValueError, match="score_threshold"):
    ceiling.association_oracle(_ground_truth(), [], score_threshold=-1.0)


def test_evaluate_cli_association_ceiling(tmp_path):
  gt_path, results_path, out_path = tmp_path / "gt.json", tmp_path / "results.json", tmp_path / "m.json"
  gt_path.write_text(json.dumps(_ground_truth()))
  results_path.write_text(json.dumps([_result([1, 1, 2, 2], category_id=1), _result([2, 2, 1, 1], category_id=2)]))
  out = subprocess.run([sys.executable, os.path.join(_REPO, "scripts", "evaluate.py"), "--gt", str(gt_path),
                        "--results", str(results_path), "--association_ceiling", "--json_out", str(out_path)],
                       capture_output=True, text=True, timeout=300, cwd=_REPO)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  metrics = json.loads(out_path.read_text())
  assert metrics["AP"] == 0.0 and metrics["ceiling_AP"] == pytest.approx(1.0, abs=1e-12)
  assert metrics["ceiling_AR10"] == pytest.approx(1.0, abs=1e-12)
  assert metrics["frames_on_object"] == 0.5 and metrics["frames_elsewhere"] == 0.5
  assert "association ceiling (these masks, perfect identities): AP 100.0" in out.stdout
  assert "share of object-frames: on_object 50.0%, partial 0.0%, elsewhere 50.0%" in out.stdout


def test_best_track_frames_of_a_swap():
  # Both results have tube IoU 1/3 with either object: the first listed, [1, 1, 2, 2], is each object's best
  # track. Object 1: on, on, elsewhere, elsewhere; object 2: elsewhere, elsewhere, on, on.
  results = [_result([1, 1, 2, 2], category_id=1), _result([2, 2, 1, 1], category_id=2)]
  shares = ceiling.best_track_frames(_ground_truth(), results)
  assert shares == {"on_object": 0.5, "partial": 0.0, "elsewhere": 0.5, "missing": 0.0, "ghost": 0.0,
                    "absent_empty": 0.0}


def test_best_track_frames_ghost_partial_missing():
  # Object 1 fully hidden at frame 2. Result A = [1, 1, 2, 1] (object 2's mask at frame 2), B = [left of 2 at
  # frames 0 and 1, nothing after]. Object 1: A's tube IoU 75 / 100, B's 0 -> A: on, on, ghost, on.
  # Object 2: A's 25 / 175, B's 20 / 100 -> B: partial (IoU 10 / 25), partial, missing, missing.
  gt = _ground_truth()
  gt["annotations"][0]["segmentations"] = _segmentations([1, 1, None, 1])
  gt["annotations"][0]["areas"] = [25.0, 25.0, None, 25.0]
  results = [_result([1, 1, 2, 1]), _result(["left_of_2", "left_of_2", None, None], score=0.8)]
  shares = ceiling.best_track_frames(gt, results)
  assert shares == {"on_object": 3 / 8, "partial": 2 / 8, "elsewhere": 0.0, "missing": 2 / 8, "ghost": 1 / 8,
                    "absent_empty": 0.0}
  # Above 0.85 only A remains; object 2's best is A (IoU 1/7): elsewhere, elsewhere, on, elsewhere.
  shares = ceiling.best_track_frames(gt, results, score_threshold=0.85)
  assert shares["elsewhere"] == 3 / 8 and shares["on_object"] == 4 / 8 and shares["ghost"] == 1 / 8


def test_results_loaded_once_score_the_same():
  # scripts/evaluate.py reads and validates a results file once (`load_results` -> LoadedResults) and hands
  # the loaded tracks to every scorer: the same numbers as from the raw list; refused with another truth.
  results = [_result([1, 1, 2, 2], category_id=1), _result(["left_of_2", None, 2, 2], score=0.5, category_id=2)]
  gt = evaluation.load_ground_truth(_ground_truth())
  loaded = evaluation.load_results(results, gt)
  assert evaluation.load_results(loaded, gt) is loaded
  assert evaluation.evaluate(gt, loaded) == evaluation.evaluate(_ground_truth(), results)
  assert ceiling.association_oracle(gt, loaded) == ceiling.association_oracle(_ground_truth(), results)
  assert ceiling.best_track_frames(gt, loaded) == ceiling.best_track_frames(_ground_truth(), results)
  with pytest.raises(ValueError, match="another ground truth"):
    evaluation.evaluate(evaluation.load_ground_truth(_ground_truth()), loaded)


def _oracle_case():
  """Object 1 (category 1) hidden at frame 2; object 2 (category 2) always visible. Results:
  A: object 1 with object 2's mask at frame 2 (a ghost), category 1, score 0.3: tube IoU 75 / 100 with object 1;
  B: object 2, but category 1, score 0.9: IoU 0 with the only category-1 object (a confident wrong class);
  C: object 2, category 2, score 0.1: IoU 1; E: 'corner' at frames 0 and 2, category 2, score 0.5: IoU 0."""
  gt = _ground_truth()
  gt["annotations"][0]["segmentations"] = _segmentations([1, 1, None, 1])
  gt["annotations"][0]["areas"] = [25.0, 25.0, None, 25.0]
  results = [_result([1, 1, 2, 1], score=0.3), _result([2, 2, 2, 2], score=0.9),
             _result([2, 2, 2, 2], score=0.1, category_id=2),
             _result(["corner", None, "corner", None], score=0.5, category_id=2)]
  return gt, results


def test_error_oracles_rewrite_and_score():
  gt_json, results = _oracle_case()
  gt = evaluation.load_ground_truth(gt_json)
  rewritten = evaluation.error_oracles(gt, results)
  assert tuple(rewritten) == oracles.ORACLES
  original = evaluation.load_results(results, gt)
  # perfect ranking: scores = tube IoU with the best object of the result's own category; masks untouched.
  ranked = rewritten["perfect_ranking"]
  assert [t.score for t in ranked] == [0.75, 0.0, 1.0, 0.0]
  assert all(r.rles == o.rles for r, o in zip(ranked, original))
  # no ghosts: A loses frame 2 (object 1 absent there), area 0 there; B, C (object 2 always visible) and E
  # (touches no object) are kept as they are; scores untouched.
  no_ghosts = rewritten["no_ghosts"]
  assert no_ghosts[0].rles[2] is None and no_ghosts[0].rles[:2] == original[0].rles[:2]
  assert no_ghosts[0].frame_areas.tolist() == [25, 25, 0, 25] and no_ghosts[0].mean_area == 25.0
  assert all(no_ghosts[i].rles == original[i].rles for i in (1, 2, 3))
  assert all(np.array_equal(no_ghosts[i].frame_areas, original[i].frame_areas) for i in (1, 2, 3))
  assert [t.score for t in no_ghosts] == [0.3, 0.9, 0.1, 0.5]
  # both: A's IoU is now 1.
  assert [t.score for t in rewritten["no_ghosts_perfect_ranking"]] == [1.0, 0.0, 1.0, 0.0]
  # AP, hand-computed (10 IoU thresholds 0.5:0.95, COCO's interpolated precision):
  # as predicted: category 1: B (FP) before A (IoU 0.75: a TP at 6 of 10 thresholds): 0.6 * 0.5; category 2:
  # E (FP) before C: 0.5. Perfect ranking: A first (0.6), C first (1). No ghosts: A's IoU 1 behind B (0.5),
  # category 2 unchanged (0.5). Both: 1 and 1.
  expected = {"as predicted": (0.3 + 0.5) / 2, "perfect_ranking": (0.6 + 1.0) / 2,
              "no_ghosts": (0.5 + 0.5) / 2, "no_ghosts_perfect_ranking": 1.0}
  scored = {"as predicted": evaluation.evaluate(gt, original)["AP"]}
  scored.update({name: evaluation.evaluate(gt, tracks)["AP"] for name, tracks in rewritten.items()})
  assert scored == pytest.approx(expected, abs=1e-12)


def test_evaluate_cli_error_oracles(tmp_path):
  gt_json, results = _oracle_case()
  gt_path, results_path, out_path = tmp_path / "gt.json", tmp_path / "results.json", tmp_path / "m.json"
  gt_path.write_text(json.dumps(gt_json))
  results_path.write_text(json.dumps(results))
  out = subprocess.run([sys.executable, os.path.join(_REPO, "scripts", "evaluate.py"), "--gt", str(gt_path),
                        "--results", str(results_path), "--error_oracles", "--json_out", str(out_path)],
                       capture_output=True, text=True, timeout=300, cwd=_REPO)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  metrics = json.loads(out_path.read_text())
  assert metrics["AP"] == pytest.approx(0.4, abs=1e-12)
  assert metrics["perfect_ranking_AP"] == pytest.approx(0.8, abs=1e-12)
  assert metrics["no_ghosts_AP"] == pytest.approx(0.5, abs=1e-12)
  assert metrics["no_ghosts_perfect_ranking_AP"] == pytest.approx(1.0, abs=1e-12)
  assert "oracle no_ghosts: AP 50.0" in out.stdout
