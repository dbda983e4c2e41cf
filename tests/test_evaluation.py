"""YouTube-VIS / OVIS metrics on hand-computed cases (SPEC section 8).

Builders at the top are shared with the other test_evaluation_* files.
"""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from o2vis_jax import evaluation
from o2vis_jax.evaluation import ground_truth as ground_truth_lib
from o2vis_jax.evaluation import rle as rle_lib
from o2vis_jax.evaluation.tracks import Track
from o2vis_jax.evaluation.tube_iou import tube_ious

# ---------------------------------------------------------------------------------------------
# Builders: videos of H x W pixels, masks as boxes, compressed RLE with str counts.


def box(height, width, y0, y1, x0, x1):
  mask = np.zeros((height, width), np.uint8)
  mask[y0:y1, x0:x1] = 1
  return mask


def to_rle(mask):
  if mask is None:
    return None
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}


def make_gt(videos, categories, annotations):
  """videos: {id: (height, width, num_frames)}; categories: ids; annotations: from `gt_ann`."""
  return {
      "videos": [{"id": v, "height": h, "width": w, "length": t,
                  "file_names": [f"video{v}/{f:05d}.jpg" for f in range(t)]}
                 for v, (h, w, t) in videos.items()],
      "categories": [{"id": c, "name": f"class{c}"} for c in categories],
      "annotations": [dict(a, id=i + 1) for i, a in enumerate(annotations)],
  }


def gt_ann(video_id, category_id, masks, iscrowd=0, areas=None, occlusion=None):
  """A ground-truth track; `areas` default to the mask areas (null where absent)."""
  if areas is None:
    areas = [None if m is None else float(m.sum()) for m in masks]
  annotation = {"video_id": video_id, "category_id": category_id, "iscrowd": iscrowd,
                "segmentations": [to_rle(m) for m in masks], "areas": areas}
  if occlusion is not None:
    annotation["occlusion"] = occlusion
  return annotation


def result(video_id, category_id, score, masks):
  return {"video_id": video_id, "category_id": category_id, "score": score,
          "segmentations": [to_rle(m) for m in masks]}


H, W = 8, 8
TOP = box(H, W, 0, 4, 0, 8)  # 32 px
BOTTOM = box(H, W, 4, 8, 0, 8)  # 32 px, disjoint from TOP
LEFT = box(H, W, 0, 8, 0, 4)  # 32 px, overlaps TOP by 16 (IoU 1/3)


def approx(expected):
  """Precision is tp / (tp + fp + eps) as in the official code, so a perfect AP is 1 - 2e-16."""
  return pytest.approx(expected, abs=1e-12)


def _all(metrics, names, value):
  return {n: metrics[n] for n in names} == approx({n: value for n in names})


# ---------------------------------------------------------------------------------------------
# Tube IoU


def _track(masks):
  rles = [to_rle(m) for m in masks]
  areas = rle_lib.frame_areas(rles)
  return Track(video_id=1, category_id=1, rles=rles, frame_areas=areas, mean_area=0.0)


def test_tube_iou_counts_one_sided_frames_in_the_union_and_skips_empty_frames():
  gt = [box(4, 4, 0, 2, 0, 4), box(4, 4, 0, 2, 0, 4), None, None]  # 8, 8, -, -
  prediction = [box(4, 4, 0, 1, 0, 4), None, box(4, 4, 0, 4, 0, 4), None]  # 4, -, 16, -
  # intersections 4 (frame 0); unions 8 + 8 (gt only) + 16 (prediction only) + 0 = 32.
  np.testing.assert_array_equal(tube_ious([_track(prediction)], [_track(gt)]), [[4 / 32]])


def test_tube_iou_matrix_equals_dense_numpy():
  rng = np.random.default_rng(0)
  masks = rng.random((5, 3, 6, 7)) < 0.4  # 5 tracks x 3 frames
  masks[1, 2] = False
  tracks = [_track([m if (i + f) % 4 else None for f, m in enumerate(track)])
            for i, track in enumerate(masks)]
  dense = np.array([[m if (i + f) % 4 else np.zeros_like(m) for f, m in enumerate(track)]
                    for i, track in enumerate(masks)])
  inter = np.einsum("dfhw,gfhw->dg", dense[:3].astype(int), dense[3:].astype(int))
  union = (dense[:3, None] | dense[None, 3:]).sum(axis=(2, 3, 4))
  np.testing.assert_array_equal(tube_ious(tracks[:3], tracks[3:]), inter / union)


def test_tube_iou_is_zero_when_both_tracks_are_empty():
  assert tube_ious([_track([None, None])], [_track([None, None])])[0, 0] == 0.0


# ---------------------------------------------------------------------------------------------
# Metrics


def test_perfect_prediction_scores_one():
  gt = make_gt({1: (H, W, 2), 2: (H, W, 3)}, [1, 2],
               [gt_ann(1, 1, [TOP, TOP]), gt_ann(1, 2, [BOTTOM, None]),
                gt_ann(2, 1, [None, LEFT, LEFT])])
  metrics = evaluation.evaluate(gt, evaluation.ground_truth_to_results(gt))
  assert _all(metrics, ["AP", "AP50", "AP75", "APs", "AR1", "AR10", "AR100", "ARs"], 1.0)
  assert _all(metrics, ["APm", "APl", "ARm", "ARl"], -1.0)  # every object is small
  assert metrics["per_category_AP"] == approx({"class1": 1.0, "class2": 1.0})
  assert not any(name in metrics for name in evaluation.OCCLUSION_METRIC_NAMES)


def test_empty_results_give_zero_and_minus_one_where_undefined():
  gt = make_gt({1: (H, W, 1)}, [1, 2], [gt_ann(1, 1, [TOP])])
  metrics = evaluation.evaluate(gt, [])
  assert _all(metrics, ["AP", "AP50", "AP75", "APs", "AR1", "AR10", "AR100", "ARs"], 0.0)
  assert _all(metrics, ["APm", "APl", "ARm", "ARl"], -1.0)
  assert metrics["per_category_AP"] == approx({"class1": 0.0, "class2": -1.0})
  assert evaluation.evaluate(make_gt({1: (H, W, 1)}, [1], []), [])["AP"] == -1.0


def test_tied_scores_keep_result_order_within_a_video():
  gt = make_gt({1: (H, W, 1)}, [1], [gt_ann(1, 1, [TOP])])
  hit, miss = result(1, 1, 0.5, [TOP]), result(1, 1, 0.5, [BOTTOM])
  assert evaluation.evaluate(gt, [hit, miss])["AP"] == approx(1.0)
  # miss ranked first: precision 1/2 at recall 1 for all 101 recall thresholds.
  assert evaluation.evaluate(gt, [miss, hit])["AP"] == approx(0.5)


def test_tied_scores_across_videos_follow_video_id_order():
  gt = make_gt({1: (H, W, 1), 2: (H, W, 1)}, [1], [gt_ann(2, 1, [TOP])])
  hit_in_2, miss_in_1 = result(2, 1, 0.5, [TOP]), result(1, 1, 0.5, [TOP])
  for results in ([hit_in_2, miss_in_1], [miss_in_1, hit_in_2]):
    assert evaluation.evaluate(gt, results)["AP"] == approx(0.5)


def test_iou_threshold_counts_at_equality_and_ap50_ap75():
  # LEFT vs TOP: IoU 16/48 = 1/3; a 6-row box vs TOP: IoU 32/48 = 2/3 (>= .5, .55, .6, .65).
  gt = make_gt({1: (H, W, 1)}, [1], [gt_ann(1, 1, [TOP])])
  metrics = evaluation.evaluate(gt, [result(1, 1, 0.9, [box(H, W, 0, 6, 0, 8)])])
  assert (metrics["AP50"], metrics["AP75"]) == approx((1.0, 0.0))
  assert metrics["AP"] == approx(0.4)  # 4 of 10 thresholds
  # IoU exactly 0.5 (32 / 64) is a match at 0.5 only.
  gt = make_gt({1: (H, W, 1)}, [1], [gt_ann(1, 1, [box(H, W, 0, 8, 0, 4)])])
  metrics = evaluation.evaluate(gt, [result(1, 1, 0.9, [box(H, W, 0, 8, 0, 8)])])
  assert (metrics["AP50"], metrics["AP75"], metrics["AR100"]) == approx((1.0, 0.0, 0.1))


def test_crowd_ground_truth_absorbs_predictions_and_is_not_a_target():
  regular, crowd = gt_ann(1, 1, [TOP]), gt_ann(1, 1, [BOTTOM], iscrowd=1)
  results = [result(1, 1, 0.95, [BOTTOM]), result(1, 1, 0.9, [BOTTOM]),
             result(1, 1, 0.8, [TOP])]
  # Both BOTTOM predictions fall on the crowd object and are ignored.
  with_crowd = evaluation.evaluate(make_gt({1: (H, W, 1)}, [1], [regular, crowd]), results)
  assert (with_crowd["AP"], with_crowd["AR100"]) == approx((1.0, 1.0))
  without_crowd = evaluation.evaluate(make_gt({1: (H, W, 1)}, [1], [regular]), results)
  # They are now false positives ranked first: precision 1/3 at recall 1.
  assert without_crowd["AP"] == approx(1 / 3)
  only_crowd = evaluation.evaluate(make_gt({1: (H, W, 1)}, [1], [crowd]), results)
  assert only_crowd["AP"] == -1.0


@pytest.mark.parametrize("mean_area, expected", [
    (128**2 - 1, (1.0, -1.0, -1.0)),
    (128**2, (1.0, 1.0, -1.0)),  # bounds are inclusive: both small and medium
    (128**2 + 1, (-1.0, 1.0, -1.0)),
    (256**2, (-1.0, 1.0, 1.0)),
    (256**2 + 1, (-1.0, -1.0, 1.0)),
])
def test_area_range_boundaries_use_the_json_areas(mean_area, expected):
  # Frames 1 and 2 average to mean_area; the null and zero frames are left out of the mean.
  areas = [None, 0, mean_area - 100.5, mean_area + 100.5]
  gt = make_gt({1: (H, W, 4)}, [1], [gt_ann(1, 1, [None, TOP, TOP, TOP], areas=areas)])
  metrics = evaluation.evaluate(gt, [result(1, 1, 0.9, [None, TOP, TOP, TOP])])
  assert (metrics["APs"], metrics["APm"], metrics["APl"]) == approx(expected)
  assert (metrics["ARs"], metrics["ARm"], metrics["ARl"]) == approx(expected)
  assert metrics["AP"] == approx(1.0)


@pytest.mark.parametrize("false_positive_area, expected_aps",
                         [(128 * 128, 0.5), (128 * 128 + 1, 1.0)])
def test_unmatched_prediction_outside_the_area_range_is_ignored(false_positive_area, expected_aps):
  size = 130
  small_object = box(size, size, 0, 2, 0, 2)
  false_positive = np.zeros((size, size), np.uint8)
  false_positive.reshape(-1)[size * size - false_positive_area:] = 1  # area exactly as asked
  gt = make_gt({1: (size, size, 1)}, [1], [gt_ann(1, 1, [small_object])])
  metrics = evaluation.evaluate(gt, [result(1, 1, 0.9, [false_positive]),
                                     result(1, 1, 0.8, [small_object])])
  assert metrics["APs"] == approx(expected_aps)
  assert metrics["AP"] == approx(0.5)


def test_max_dets_counts_per_video_and_category():
  two_in_one_video = make_gt({1: (H, W, 1)}, [1], [gt_ann(1, 1, [TOP]), gt_ann(1, 1, [BOTTOM])])
  results = [result(1, 1, 0.9, [TOP]), result(1, 1, 0.8, [BOTTOM])]
  metrics = evaluation.evaluate(two_in_one_video, results)
  assert (metrics["AR1"], metrics["AR10"], metrics["AR100"], metrics["AP"]) == approx(
      (0.5, 1.0, 1.0, 1.0))
  one_per_video = make_gt({1: (H, W, 1), 2: (H, W, 1)}, [1],
                          [gt_ann(1, 1, [TOP]), gt_ann(2, 1, [BOTTOM])])
  metrics = evaluation.evaluate(one_per_video, [result(1, 1, 0.9, [TOP]),
                                                result(2, 1, 0.8, [BOTTOM])])
  assert metrics["AR1"] == approx(1.0)


def test_only_the_100_best_predictions_of_a_video_and_category_count():
  gt = make_gt({1: (H, W, 1)}, [1], [gt_ann(1, 1, [TOP])])
  misses = [result(1, 1, 0.9, [BOTTOM]) for _ in range(100)]
  assert evaluation.evaluate(gt, misses + [result(1, 1, 0.5, [TOP])])["AR100"] == 0.0
  assert evaluation.evaluate(gt, misses[:99] + [result(1, 1, 0.5, [TOP])])["AR100"] == 1.0


def test_categories_are_averaged_and_a_right_mask_with_a_wrong_class_is_a_miss():
  gt = make_gt({1: (H, W, 1)}, [1, 2, 3], [gt_ann(1, 1, [TOP]), gt_ann(1, 2, [BOTTOM])])
  results = [result(1, 1, 0.9, [TOP]), result(1, 3, 0.9, [BOTTOM])]
  metrics = evaluation.evaluate(gt, results)
  assert metrics["per_category_AP"] == approx({"class1": 1.0, "class2": 0.0, "class3": -1.0})
  assert (metrics["AP"], metrics["AR10"]) == approx((0.5, 0.5))


def test_greedy_matching_prefers_the_highest_iou_and_takes_each_object_once():
  # Both predictions overlap both objects; the first (higher score) takes TOP (IoU 1), the
  # second then gets BOTTOM only at IoU 1/3: a miss at every threshold.
  gt = make_gt({1: (H, W, 1)}, [1], [gt_ann(1, 1, [BOTTOM]), gt_ann(1, 1, [TOP])])
  metrics = evaluation.evaluate(gt, [result(1, 1, 0.9, [TOP]), result(1, 1, 0.8, [LEFT])])
  assert metrics["AR100"] == approx(0.5)
  assert metrics["AP"] == approx(51 / 101)  # precision 1 up to recall 0.5: thresholds 0..0.50


def test_an_iou_tie_between_objects_goes_to_the_last_in_file_order():
  # The full frame has IoU 1/2 with both TOP and BOTTOM. The official scan replaces its running
  # best on >=, so at IoU 0.5 it takes the later object; the TOP prediction then finds TOP free
  # when TOP comes first in the file, and taken when it comes last.
  full, top = box(H, W, 0, 8, 0, 8), box(H, W, 0, 4, 0, 8)
  results = [result(1, 1, 0.9, [full]), result(1, 1, 0.8, [top])]
  top_first = make_gt({1: (H, W, 1)}, [1], [gt_ann(1, 1, [TOP]), gt_ann(1, 1, [BOTTOM])])
  assert evaluation.evaluate(top_first, results)["AP50"] == approx(1.0)
  top_last = make_gt({1: (H, W, 1)}, [1], [gt_ann(1, 1, [BOTTOM]), gt_ann(1, 1, [TOP])])
  assert evaluation.evaluate(top_last, results)["AP50"] == approx(51 / 101)


# ---------------------------------------------------------------------------------------------
# OVIS occlusion


@pytest.mark.parametrize("labels, expected", [
    (["no_occlusion", "no_occlusion", "slight_occlusion"], 0.125),  # top 2 of [0, 0, .25]
    (["severe_occlusion", "slight_occlusion", None], 0.75),  # top 1 of [.25, .75]
    (["slight_occlusion", None, "slight_occlusion"], 0.25),
    (["severe_occlusion", "no_occlusion", "no_occlusion", "slight_occlusion"], 0.5),
])
def test_occlusion_score_is_the_mean_of_the_highest_half(labels, expected):
  assert ground_truth_lib.occlusion_score(labels, "test") == expected


def test_occlusion_ap_per_level():
  light = gt_ann(1, 1, [TOP, TOP], occlusion=["no_occlusion", "slight_occlusion"])  # 0.25
  heavy = gt_ann(1, 1, [BOTTOM, None], occlusion=["severe_occlusion", None])  # 0.75
  faint = gt_ann(2, 1, [LEFT, LEFT], occlusion=["no_occlusion", "no_occlusion"])  # 0
  gt = make_gt({1: (H, W, 2), 2: (H, W, 2)}, [1], [light, heavy, faint])
  results = [result(1, 1, 0.9, [TOP, TOP]), result(2, 1, 0.8, [LEFT, LEFT])]
  metrics = evaluation.evaluate(gt, results)
  # light [0, .25] holds both found objects, medium [.25, .5] the 0.25 one, heavy the missed one.
  assert (metrics["AP_light"], metrics["AP_medium"], metrics["AP_heavy"]) == approx(
      (1.0, 1.0, 0.0))
  assert (metrics["AR_light"], metrics["AR_medium"], metrics["AR_heavy"]) == approx(
      (1.0, 1.0, 0.0))
  # Overall: recall 2/3 at precision 1 -> 67 of the 101 recall thresholds.
  assert metrics["AP"] == approx(67 / 101)
  for annotation in gt["annotations"]:
    del annotation["occlusion"]
  plain = evaluation.evaluate(gt, results)
  assert {n: plain[n] for n in evaluation.METRIC_NAMES} == {
      n: metrics[n] for n in evaluation.METRIC_NAMES}
