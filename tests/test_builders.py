"""Dataset builders: exact mask round trip, holdout split, COCO mapping, and every refused input named."""

import json
import os
import shutil

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from o2vis_jax.datasets import builders, synthetic
from o2vis_jax.datasets.builders import common
from o2vis_jax.evaluation import rle

# pycocotools 2.0.11 warns about numpy 2 `__array__` on every decode; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("raw"))
  synthetic.generate(out, "train", num_videos=6, seed=0, size=48, num_frames=6)
  synthetic.generate(out, "valid", num_videos=2, seed=1, size=48, num_frames=5)
  return out


def _copy_raw(raw, tmp_path):
  target = str(tmp_path / "raw")
  shutil.copytree(raw, target)
  return target


def _edit_json(path, edit):
  with open(path) as f:
    data = json.load(f)
  edit(data)
  with open(path, "w") as f:
    json.dump(data, f)
  return data


def _json_mask(segmentation, height, width):
  if segmentation is None:
    return np.zeros((height, width), bool)
  if isinstance(segmentation["counts"], list):
    segmentation = mask_utils.frPyObjects(segmentation, height, width)
  return mask_utils.decode(segmentation).astype(bool)


def _stored_mask(counts, height, width):
  return rle.masks_from_counts([counts], height, width)[0]


def test_round_trip_masks_frames_labels_and_holdout(raw, tmp_path):
  path = builders.build("synthetic", raw, str(tmp_path / "built"), holdout_videos=2, holdout_seed=3)
  assert sorted(builders.split_names(path)) == ["holdout", "train", "valid"]
  source = json.load(open(os.path.join(raw, "train.json")))
  videos = {v["id"]: v for v in source["videos"]}
  seen = {}
  for split in ("train", "holdout"):
    records, categories = builders.open_split(path, split)
    assert categories == [{"id": c["id"], "name": c["name"]} for c in source["categories"]]
    for i in range(len(records)):
      record = records[i]
      video = videos[int(record["video_id"])]
      seen[video["id"]] = split
      assert record["name"].decode() == video["name"] and record["length"] == video["length"]
      for t, name in enumerate(video["file_names"]):
        with open(os.path.join(raw, "train", "JPEGImages", name), "rb") as f:
          assert record["frames"][t] == f.read()
      anns = [a for a in source["annotations"] if a["video_id"] == video["id"]]
      assert list(record["annotation_ids"]) == [a["id"] for a in anns]
      assert list(record["labels"]) == [a["category_id"] - 1 for a in anns]   # ids 1..5 -> 0..4.
      rles = common.split_rles(record["rles"], len(anns), video["length"])
      for g, ann in enumerate(anns):
        for t, segmentation in enumerate(ann["segmentations"]):
          np.testing.assert_array_equal(_stored_mask(rles[g, t], 48, 48),
                                        _json_mask(segmentation, 48, 48))
          assert (len(rles[g, t]) == 0) == (segmentation is None)
  assert len(seen) == 6 and sum(s == "holdout" for s in seen.values()) == 2
  valid, _ = builders.open_split(path, "valid")
  assert len(valid) == 2
  # The same seed holds out the same videos.
  assert common.holdout_ids(list(range(1, 7)), 2, 3, "x") == sorted(
      v for v, s in seen.items() if s == "holdout")


def test_compressed_rle_and_polygon_segmentations(raw, tmp_path):
  root = _copy_raw(raw, tmp_path)
  train_json = os.path.join(root, "train.json")

  def to_compressed_and_polygon(data):
    ann = data["annotations"][0]
    for t, seg in enumerate(ann["segmentations"]):
      if seg is not None:
        rle = mask_utils.frPyObjects(seg, 48, 48)
        ann["segmentations"][t] = {"size": [48, 48], "counts": rle["counts"].decode()}
    data["annotations"][1]["segmentations"][0] = [[2, 2, 20, 2, 20, 10, 2, 10]]   # a rectangle.
  data = _edit_json(train_json, to_compressed_and_polygon)
  path = builders.build("synthetic", root, str(tmp_path / "built"))
  records, _ = builders.open_split(path, "train")
  by_id = {int(records[i]["video_id"]): records[i] for i in range(len(records))}
  ann0, ann1 = data["annotations"][0], data["annotations"][1]
  record = by_id[ann0["video_id"]]
  rles = common.split_rles(record["rles"], len(record["annotation_ids"]), record["length"])
  row = list(record["annotation_ids"]).index(ann0["id"])
  for t, seg in enumerate(ann0["segmentations"]):
    np.testing.assert_array_equal(_stored_mask(rles[row, t], 48, 48), _json_mask(seg, 48, 48))
  record = by_id[ann1["video_id"]]
  rles = common.split_rles(record["rles"], len(record["annotation_ids"]), record["length"])
  polygon_mask = _stored_mask(rles[list(record["annotation_ids"]).index(ann1["id"]), 0], 48, 48)
  assert polygon_mask[3:10, 3:20].all() and polygon_mask.sum() < 19 * 9 + 30 and not polygon_mask[20:].any()


def _first_video_and_annotation(root):
  data = json.load(open(os.path.join(root, "train.json")))
  ann = data["annotations"][0]
  video = next(v for v in data["videos"] if v["id"] == ann["video_id"])
  return video, ann


def _drop_segmentation(data):
  data["annotations"][0]["segmentations"].pop()


def _wrong_size(data):
  ann = data["annotations"][0]
  t = next(t for t, s in enumerate(ann["segmentations"]) if s is not None)
  ann["segmentations"][t]["size"] = [40, 48]


def _unknown_category(data):
  data["annotations"][0]["category_id"] = 99


@pytest.mark.parametrize("case", ["missing_frame", "unreadable_jpeg", "segmentation_length", "mask_size",
                                  "unknown_category"])
def test_refused_inputs_are_named_and_leave_no_dataset(raw, tmp_path, case):
  root = _copy_raw(raw, tmp_path)
  video, ann = _first_video_and_annotation(root)
  train_json = os.path.join(root, "train.json")
  frame_path = os.path.join(root, "train", "JPEGImages", video["file_names"][2])
  if case == "missing_frame":
    os.remove(frame_path)
    expected = [train_json, f"video {video['id']}", video["name"], frame_path, "missing"]
  elif case == "unreadable_jpeg":
    with open(frame_path, "wb") as f:
      f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    expected = [train_json, f"video {video['id']}", frame_path, "not a readable image"]
  elif case == "segmentation_length":
    _edit_json(train_json, _drop_segmentation)
    expected = [train_json, f"video {video['id']}", f"annotation {ann['id']}",
                f"has {video['length'] - 1} segmentations, the video has {video['length']} frames"]
  elif case == "mask_size":
    _edit_json(train_json, _wrong_size)
    expected = [train_json, f"video {video['id']}", f"annotation {ann['id']}", "mask size [40, 48]"]
  else:
    _edit_json(train_json, _unknown_category)
    expected = [train_json, f"video {video['id']}", f"annotation {ann['id']}", "unknown category 99"]
  out = str(tmp_path / "built")
  with pytest.raises(builders.DataValidationError) as error:
    builders.build("synthetic", root, out)
  for part in expected:
    assert part in str(error.value), (part, str(error.value))
  assert builders.find_built(out, "synthetic") is None
  for dirpath, _, files in os.walk(out):
    assert "dataset_info.json" not in files, dirpath


def _write_coco(raw, root):
  """A small COCO-layout dataset made of synthetic first frames: RLE, polygon and crowd annotations."""
  source = json.load(open(os.path.join(raw, "train.json")))
  os.makedirs(os.path.join(root, "train2017"))
  os.makedirs(os.path.join(root, "annotations"))
  # COCO-style ids and names: 'circle' is 7 here and maps to the target's 'circle' (id 1, label 0);
  # 'car' (an alias of 'sedan', absent from this target) is dropped.
  categories = [{"id": 7, "name": "circle"}, {"id": 9, "name": "square"}, {"id": 11, "name": "car"}]
  to_coco = {1: 7, 2: 9, 3: 11, 4: 7, 5: 9}
  images, annotations = [], []
  for video in source["videos"][:3]:
    name = f"{video['id']:012d}.jpg"
    shutil.copy(os.path.join(raw, "train", "JPEGImages", video["file_names"][0]),
                os.path.join(root, "train2017", name))
    images.append({"id": video["id"], "file_name": name, "height": 48, "width": 48})
    for ann in source["annotations"]:
      if ann["video_id"] == video["id"] and ann["segmentations"][0] is not None:
        annotations.append({"id": len(annotations) + 1, "image_id": video["id"],
                            "category_id": to_coco.get(ann["category_id"], 11), "iscrowd": 0,
                            "segmentation": ann["segmentations"][0]})
  annotations.append({"id": 1000, "image_id": images[1]["id"], "category_id": 7, "iscrowd": 1,
                      "segmentation": {"size": [48, 48], "counts": [100, 50, 48 * 48 - 150]}})
  annotations.append({"id": 1001, "image_id": images[1]["id"], "category_id": 9, "iscrowd": 0,
                      "segmentation": [[1, 1, 30, 1, 30, 20, 1, 20]]})
  with open(os.path.join(root, "annotations", "instances_train2017.json"), "w") as f:
    json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
  return annotations


def test_coco_builder_maps_categories_and_round_trips(raw, tmp_path):
  root = str(tmp_path / "coco")
  annotations = _write_coco(raw, root)
  target = os.path.join(raw, "train.json")
  path = builders.build("coco", root, str(tmp_path / "built"), coco_target_json=target)
  records, categories = builders.open_split(path, "train")
  assert [c["name"] for c in categories] == ["circle", "square", "triangle", "star", "ring"]
  kept = {a["id"]: a for a in annotations if a["category_id"] in (7, 9)}
  found = 0
  for i in range(len(records)):
    record = records[i]
    assert record["length"] == 1
    for g, ann_id in enumerate(record["annotation_ids"]):
      ann = kept[int(ann_id)]
      assert record["labels"][g] == {7: 0, 9: 1}[ann["category_id"]]
      assert record["iscrowd"][g] == ann["iscrowd"]
      expected = (mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], 48, 48)))
                  if isinstance(ann["segmentation"], list) else _json_mask(ann["segmentation"], 48, 48))
      np.testing.assert_array_equal(_stored_mask(record["rles"][g], 48, 48), expected.astype(bool))
      found += 1
  assert found == len(kept) >= 3


def test_map_category_names_with_aliases():
  source = [{"id": 3, "name": "car"}, {"id": 4, "name": "motorcycle"}, {"id": 43, "name": "tennis racket"},
            {"id": 90, "name": "toothbrush"}]
  target = [{"id": 6, "name": "sedan"}, {"id": 21, "name": "motorbike"}, {"id": 40, "name": "tennis_racket"}]
  assert common.map_category_names(source, target, {"car": "sedan", "motorcycle": "motorbike"}) == {
      3: 6, 4: 21, 43: 40}


def test_coco_unknown_category_is_named(raw, tmp_path):
  root = str(tmp_path / "coco")
  _write_coco(raw, root)
  path = os.path.join(root, "annotations", "instances_train2017.json")
  data = _edit_json(path, lambda d: d["annotations"][0].update(category_id=5))
  with pytest.raises(builders.DataValidationError) as error:
    builders.build("coco", root, str(tmp_path / "built"))
  image = data["annotations"][0]["image_id"]
  for part in (path, f"image {image}", "annotation 1", "unknown category 5"):
    assert part in str(error.value), (part, str(error.value))


def test_build_cli(raw, tmp_path, capsys):
  from data import build
  assert build.main(["--dataset", "synthetic", "--data_dir", str(tmp_path / "absent"),
                     "--out", str(tmp_path / "built")]) == 1
  assert "refused:" in capsys.readouterr().err
  assert build.main(["--dataset", "synthetic", "--data_dir", raw, "--out", str(tmp_path / "built"),
                     "--holdout_videos", "1"]) == 0
  path = capsys.readouterr().out.strip().splitlines()[-1]
  assert sorted(builders.split_names(path)) == ["holdout", "train", "valid"]
