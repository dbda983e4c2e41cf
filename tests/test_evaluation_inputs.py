"""Inputs the evaluation refuses (with errors naming the video and entry), the accepted mask
formats, the RLE decoder, results files and scripts/evaluate.py."""

import copy
import json
import os
import subprocess
import sys
import zipfile

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from o2vis_jax import evaluation
from o2vis_jax.evaluation import rle as rle_lib
from test_evaluation import BOTTOM, H, TOP, W, approx, box, gt_ann, make_gt, result, to_rle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gt():
  return make_gt({7: (H, W, 2)}, [1, 2], [gt_ann(7, 1, [TOP, None]), gt_ann(7, 2, [BOTTOM, TOP])])


def _refused(results=None, gt=None, match=""):
  with pytest.raises(evaluation.EvaluationInputError, match=match) as error:
    evaluation.evaluate(_gt() if gt is None else gt,
                        [result(7, 1, 0.5, [TOP, TOP])] if results is None else results)
  return str(error.value)


# ---------------------------------------------------------------------------------------------
# Refused results


def test_refuses_a_prediction_with_another_frame_count():
  message = _refused([result(7, 1, 0.9, [TOP, TOP]), result(7, 1, 0.5, [TOP, TOP, TOP])])
  assert "result 1" in message and "video 7 ('video7')" in message
  assert "3 segmentations, the video has 2 frames" in message


def test_refuses_a_mask_of_another_size():
  message = _refused([result(7, 1, 0.5, [TOP, box(H + 1, W, 0, 2, 0, 2)])])
  assert "result 0" in message and "video 7" in message and "frame 1" in message
  assert f"mask size {H + 1}x{W} differs from the video size {H}x{W}" in message


def test_refuses_unknown_video_and_category_ids():
  assert "result 0: unknown video id 8" in _refused([result(8, 1, 0.5, [TOP, TOP])])
  message = _refused([result(7, 3, 0.5, [TOP, TOP])])
  assert "result 0" in message and "video 7" in message and "unknown category id 3" in message


@pytest.mark.parametrize("missing", ["video_id", "category_id", "score", "segmentations"])
def test_refuses_results_with_missing_keys(missing):
  entry = result(7, 1, 0.5, [TOP, TOP])
  del entry[missing]
  assert f"result 0: missing key(s) ['{missing}']" in _refused([entry])


@pytest.mark.parametrize("score", [float("nan"), float("inf"), "0.5", None, True])
def test_refuses_non_numeric_scores(score):
  _refused([result(7, 1, score, [TOP, TOP])], match="score must be a finite number")


@pytest.mark.parametrize("rle, match", [
    ({"size": [H, W], "counts": "0a~"}, "outside the RLE alphabet"),
    ({"size": [H, W], "counts": "0n"}, "ends inside a value"),  # 'n' = 62 has the 'more' bit
    ({"size": [H, W], "counts": "0"}, "runs cover 0 pixels, video is 8x8 = 64"),
    ({"size": [H, W], "counts": ""}, "empty counts"),
    ({"size": [H, W], "counts": [10, 60]}, "runs cover 70 pixels"),
    ({"size": [H, W], "counts": [70, -6]}, "negative run length"),
    ({"size": [H, W], "counts": 12}, "counts is a int"),
    ({"counts": "PP1"}, r"missing key\(s\) \['size'\]"),
    ({"size": [H], "counts": "PP1"}, "is not \\[height, width\\]"),
    ([[0, 0, 4, 4]], "malformed polygon"),  # pycocotools would read 4 numbers as a box
    ([[0, 0, 4, 4, 4]], "malformed polygon"),
    ("PP1", "must be null, an RLE dict or a list of polygons"),
])
def test_refuses_malformed_masks(rle, match):
  entry = result(7, 1, 0.5, [TOP, TOP])
  entry["segmentations"][1] = rle
  message = _refused([entry], match=match)
  assert "result 0" in message and "video 7" in message and "frame 1" in message


def test_refuses_a_compressed_string_with_a_negative_run():
  # Value 3 is stored as a difference to value 1; a large negative difference makes it < 0.
  counts = mask_utils.encode(np.asfortranarray(box(H, W, 2, 3, 2, 3)))["counts"]
  runs = rle_lib.run_lengths(counts)
  assert runs.tolist() == [2 * H + 2, 1, H * W - 2 * H - 3]  # column-major pixel 18
  with pytest.raises(ValueError):
    rle_lib.run_lengths(b"")
  entry = result(7, 1, 0.5, [TOP, TOP])
  entry["segmentations"][0] = {"size": [H, W], "counts": "0M0"}  # runs 0, -3, 0
  _refused([entry], match="negative run length")


def test_refuses_a_results_archive_without_results_json(tmp_path):
  path = tmp_path / "submission.zip"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("predictions/results.json", "[]")
  with pytest.raises(evaluation.EvaluationInputError, match="no results.json at its root"):
    evaluation.evaluate(_gt(), path)


# ---------------------------------------------------------------------------------------------
# Refused ground truth


def _gt_refused(edit, match):
  gt = _gt()
  edit(gt)
  with pytest.raises(evaluation.EvaluationInputError, match=match) as error:
    evaluation.load_ground_truth(gt)
  return str(error.value)


def test_refuses_ground_truth_with_wrong_frame_counts_or_sizes():
  def more_frames(gt):
    gt["annotations"][1]["segmentations"].append(None)
  message = _gt_refused(more_frames, "3 segmentations, the video has 2 frames")
  assert "annotations[1]: video 7 ('video7'), annotation 2" in message

  def bigger(gt):
    gt["annotations"][0]["segmentations"][0] = to_rle(box(H, W + 2, 0, 1, 0, 1))
  _gt_refused(bigger, f"annotation 1, frame 0: mask size {H}x{W + 2} differs")

  def areas(gt):
    gt["annotations"][0]["areas"] = [1.0]
  _gt_refused(areas, "'areas' must list one value per frame")

  def length(gt):
    gt["videos"][0]["length"] = 3
  _gt_refused(length, "'length' 3 differs from its 2 file_names")


@pytest.mark.parametrize("key", ["id", "video_id", "category_id", "iscrowd", "segmentations",
                                 "areas"])
def test_refuses_ground_truth_annotations_with_missing_keys(key):
  _gt_refused(lambda gt: gt["annotations"][0].pop(key), rf"annotations\[0\]: missing key")


def test_refuses_ground_truth_with_unknown_ids_duplicates_or_bad_occlusion():
  _gt_refused(lambda gt: gt["annotations"][0].update(video_id=9), "unknown video id 9")
  _gt_refused(lambda gt: gt["annotations"][0].update(category_id=5), "unknown category id 5")
  _gt_refused(lambda gt: gt["annotations"][1].update(id=1), "duplicate id 1")
  _gt_refused(lambda gt: gt["annotations"][1].update(iscrowd="0"), "'iscrowd' must be 0 or 1")
  _gt_refused(lambda gt: [v.pop(k) for v in gt["videos"] for k in ("length", "file_names")],
              "needs 'length' or 'file_names'")
  _gt_refused(lambda gt: gt["annotations"][0].update(occlusion=["no_occlusion", None]),
              r"annotations\[1\]: missing key\(s\) \['occlusion'\]")  # all or none
  _gt_refused(lambda gt: [a.update(occlusion=["partly", None]) for a in gt["annotations"]],
              "unknown occlusion label 'partly'")
  _gt_refused(lambda gt: [a.update(occlusion=[None, None]) for a in gt["annotations"]],
              "no non-null label")


# ---------------------------------------------------------------------------------------------
# Accepted formats


def test_ground_truth_mask_formats_agree():
  mask = box(H, W, 2, 6, 1, 5)
  compressed = mask_utils.encode(np.asfortranarray(mask))
  flat = mask.flatten(order="F")
  uncompressed = {"size": [H, W], "counts": [int(n) for n in np.diff(
      np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]]))]}
  # A polygon through pixel corners covers the same 4x4 pixels in pycocotools' rasteriser.
  polygon = [[1.0, 2.0, 5.0, 2.0, 5.0, 6.0, 1.0, 6.0]]
  formats = [compressed, dict(compressed, counts=compressed["counts"].decode()), uncompressed,
             polygon]
  for segmentation in formats:
    gt = make_gt({1: (H, W, 2)}, [1], [gt_ann(1, 1, [mask, None])])
    gt["annotations"][0]["segmentations"][0] = segmentation
    track = evaluation.load_ground_truth(gt).tracks[0]
    np.testing.assert_array_equal(mask_utils.decode(track.rles[0]), mask)
    assert track.rles[1] is None and track.frame_areas.tolist() == [16.0, 0.0]
    metrics = evaluation.evaluate(gt, [result(1, 1, 0.5, [mask, None])])
    assert metrics["AP"] == approx(1.0)


def test_ovis_test_split_with_null_annotations_loads():
  gt = make_gt({1: (H, W, 1)}, [1], [])
  gt["annotations"] = None
  assert evaluation.evaluate(gt, [result(1, 1, 0.5, [TOP])])["AP"] == -1.0


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_run_lengths_decode_pycocotools_strings(height, width, density, seed):
  mask = (np.random.default_rng(seed).random((height, width)) < density).astype(np.uint8)
  runs = rle_lib.run_lengths(mask_utils.encode(np.asfortranarray(mask))["counts"])
  decoded = np.repeat(np.arange(runs.size) % 2, runs).astype(np.uint8)
  np.testing.assert_array_equal(decoded, mask.flatten(order="F"))


def test_run_lengths_of_long_runs():
  mask = np.zeros((720, 1280), np.uint8)
  mask[100:600, 200:1100] = 1
  runs = rle_lib.run_lengths(mask_utils.encode(np.asfortranarray(mask))["counts"])
  assert runs.size == 1 + 2 * 900 and runs.sum() == 720 * 1280
  assert (runs[0], runs[1], runs[2], runs[-1]) == (200 * 720 + 100, 500, 220, 180 * 720 + 120)


def test_decode_mask_reads_every_counts_form_and_masks_from_counts_the_records():
  mask = box(H, W, 2, 6, 1, 5)
  compressed = mask_utils.encode(np.asfortranarray(mask))
  flat = mask.flatten(order="F")
  uncompressed = [int(n) for n in np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1,
                                                          [flat.size]]))]
  for counts in (compressed["counts"], compressed["counts"].decode(), uncompressed):
    decoded = rle_lib.decode_mask({"size": [H, W], "counts": counts})
    assert decoded.dtype == bool
    np.testing.assert_array_equal(decoded, mask)
  stored = rle_lib.masks_from_counts(np.array([b"", compressed["counts"]], dtype=object), H, W)
  assert stored.shape == (2, H, W) and not stored[0].any()
  np.testing.assert_array_equal(stored[1], mask)
  with pytest.raises(ValueError, match="size"):
    rle_lib.decode_mask({"counts": compressed["counts"]})


# ---------------------------------------------------------------------------------------------
# Results files


def test_instance_to_result_from_arrays_and_from_rles():
  masks = np.stack([TOP, np.zeros_like(TOP), BOTTOM]).astype(bool)
  from_array = evaluation.instance_to_result(np.int64(7), np.int32(2), np.float32(0.25), masks)
  assert (from_array["video_id"], from_array["category_id"], from_array["score"]) == (7, 2, 0.25)
  assert all(isinstance(s["counts"], str) for s in from_array["segmentations"])
  assert [s["size"] for s in from_array["segmentations"]] == [[H, W]] * 3
  for frame, mask in enumerate(masks):
    rle = dict(from_array["segmentations"][frame])
    np.testing.assert_array_equal(mask_utils.decode(rle), mask)
  rles = [mask_utils.encode(np.asfortranarray(TOP)), None, BOTTOM]
  from_rles = evaluation.instance_to_result(7, 1, 0.5, rles)
  assert from_rles["segmentations"] == [to_rle(TOP), None, to_rle(BOTTOM)]
  json.dumps(from_rles)
  with pytest.raises(ValueError, match="frame 1"):
    evaluation.instance_to_result(7, 1, 0.5, [None, "PP1"])
  with pytest.raises(ValueError, match="not finite"):
    evaluation.instance_to_result(7, 1, float("nan"), [None])


def test_written_results_and_server_archive_evaluate_like_the_list(tmp_path):
  gt = _gt()
  results = [evaluation.instance_to_result(7, 1, 0.9, np.stack([TOP, TOP])),
             evaluation.instance_to_result(7, 2, 0.8, [to_rle(BOTTOM), to_rle(TOP)])]
  expected = evaluation.evaluate(gt, results)
  evaluation.write_results(tmp_path / "results.json", results)
  evaluation.write_results_zip(tmp_path / "submission.zip", results)
  with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
    assert archive.namelist() == ["results.json"]
  assert evaluation.evaluate(gt, tmp_path / "results.json") == expected
  assert evaluation.evaluate(gt, tmp_path / "submission.zip") == expected
  # TOP in frame 1 of category 1 is a false extra frame: IoU 1/2, AP50 only.
  assert (expected["AP50"], expected["AP75"]) == approx((1.0, 0.5))


def test_evaluate_script_prints_the_table_and_writes_fractions(tmp_path):
  gt_path, results_path = tmp_path / "gt.json", tmp_path / "results.json"
  out_path, zip_path = tmp_path / "metrics.json", tmp_path / "submission.zip"
  gt_path.write_text(json.dumps(_gt()))
  evaluation.write_results(results_path, evaluation.ground_truth_to_results(_gt()))
  process = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "evaluate.py"), f"--gt={gt_path}",
       f"--results={results_path}", "--json-out", str(out_path), f"--zip={zip_path}"],
      capture_output=True, text=True, check=True, timeout=120)
  lines = process.stdout.splitlines()
  assert lines[0].split() == list(evaluation.METRIC_NAMES)
  assert lines[1].split() == ["100.0"] * 3 + ["100.0", "-", "-"] + ["100.0"] * 4 + ["-", "-"]
  metrics = json.loads(out_path.read_text())
  assert set(metrics) == set(evaluation.METRIC_NAMES) | {"per_category_AP"}
  assert metrics["AP"] == approx(1.0) and metrics["APm"] == -1.0
  assert zipfile.ZipFile(zip_path).namelist() == ["results.json"]
  bad = copy.deepcopy(json.loads(results_path.read_text()))
  bad[0]["segmentations"].append(None)
  results_path.write_text(json.dumps(bad))
  process = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "evaluate.py"), f"--gt={gt_path}",
       f"--results={results_path}"], capture_output=True, text=True, timeout=120)
  assert process.returncode == 2 and "Traceback" not in process.stderr
  assert f"error: results {results_path}: result 0" in process.stderr
  assert "3 segmentations, the video has 2 frames" in process.stderr


def test_unreadable_or_malformed_json_files_are_named(tmp_path):
  good_gt, good_results = tmp_path / "gt.json", tmp_path / "results.json"
  good_gt.write_text(json.dumps(_gt()))
  good_results.write_text(json.dumps([result(7, 1, 0.5, [TOP, TOP])]))
  broken = tmp_path / "broken.json"
  broken.write_text('{"videos": [')
  missing = tmp_path / "missing.json"
  cases = [(broken, good_results, f"ground truth {broken}: not valid JSON"),
           (missing, good_results, f"ground truth {missing}: cannot be read"),
           (good_gt, broken, f"results {broken}: not valid JSON"),
           (good_gt, missing, f"results {missing}: cannot be read")]
  for gt, results, message in cases:
    with pytest.raises(evaluation.EvaluationInputError) as error:
      evaluation.evaluate(str(gt), str(results))
    assert message in str(error.value)
  with pytest.raises(evaluation.EvaluationInputError, match="not valid JSON"):
    evaluation.class_agnostic(str(broken), str(good_results))
  archive = tmp_path / "submission.zip"
  with zipfile.ZipFile(archive, "w") as z:
    z.writestr("results.json", "[{")
  with pytest.raises(evaluation.EvaluationInputError, match="submission.zip: results.json: not valid JSON"):
    evaluation.evaluate(str(good_gt), str(archive))
  # The good pair still scores.
  assert 0.0 <= evaluation.evaluate(str(good_gt), str(good_results))["AP"] <= 1.0
