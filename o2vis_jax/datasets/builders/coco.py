"""TFDS builder (array_record) for COCO instances, written as videos of length 1 (common.py's format) so
the input pipeline turns them into pseudo-clips (SPEC section 5: COCO joins training 1:1 with the videos).

Manual dir layout as distributed: `annotations/instances_{train,val}2017.json` + `{train,val}2017/*.jpg`.
`target_json` (optional) names a video dataset's JSON; COCO categories are then mapped to its categories by
name (plus `COCO_TO_VIS_ALIASES`), annotations of other categories are dropped, and labels are the target's
contiguous labels, so the pseudo-clips share the video dataset's label space. Images left with no
annotation are skipped in train. Errors name the JSON file, the image and the annotation.
"""

import dataclasses
import os
from typing import Dict

import numpy as np
import tensorflow_datasets as tfds

from o2vis_jax.datasets.builders import common

SPLITS = {"train": ("annotations/instances_train2017.json", "train2017"),
          "val": ("annotations/instances_val2017.json", "val2017")}
# COCO name -> YouTube-VIS / OVIS name where the names differ (after lower-casing, spaces -> '_').
COCO_TO_VIS_ALIASES = {"car": "sedan", "motorcycle": "motorbike"}


@dataclasses.dataclass
class ImageConfig(tfds.core.BuilderConfig):
  target_json: str = ""


def make_config(target_json: str = "") -> ImageConfig:
  name = "coco" if not target_json else "coco_to_" + os.path.splitext(os.path.basename(target_json))[0]
  return ImageConfig(name=name.replace(".", "_"), target_json=target_json,
                     description="COCO instances" + (f" mapped to {target_json}" if target_json else ""))


class ImageInstances(common.SourceFileCodePath, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """COCO instance annotations as one-frame videos."""

  name = "o2vis_image_instances"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Place COCO as distributed (annotations/instances_train2017.json, "
                                  "train2017/*.jpg) in a directory and pass it as the manual dir.")
  disable_shuffling = True

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=common.record_features(),
                                 metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    target = common.load_json(self.builder_config.target_json) if self.builder_config.target_json else None
    splits, categories = {}, None
    for split, (json_name, image_dir) in SPLITS.items():
      json_path = os.path.join(manual_dir, json_name)
      if not os.path.isfile(json_path):
        if split == "train":
          raise common.DataValidationError(f"{json_path}: COCO train annotation file not found")
        continue
      source = common.load_json(json_path)
      for key in ("images", "annotations", "categories"):
        if not isinstance(source.get(key), list):
          raise common.DataValidationError(f"{json_path}: missing list '{key}'")
      if target is not None:
        to_target = common.map_category_names(source["categories"], target["categories"],
                                              COCO_TO_VIS_ALIASES)
        categories = target["categories"]
      else:
        to_target = {int(c["id"]): int(c["id"]) for c in source["categories"]}
        categories = source["categories"]
      labels = common.category_labels(categories, self.builder_config.target_json or json_path)
      per_image = _validate(source, json_path, to_target, labels)
      splits[split] = self._generate_examples(source["images"], per_image, json_path,
                                              os.path.join(manual_dir, image_dir), split == "train")
    self.info.metadata["categories"] = [
        {"id": int(c["id"]), "name": str(c["name"])} for c in sorted(categories, key=lambda c: c["id"])]
    self.info.metadata["dataset"] = "coco"
    return splits

  def _generate_examples(self, images, per_image, json_path, image_root, skip_empty):
    for image in images:
      anns = per_image.get(image["id"], [])
      if skip_empty and not any(not a.get("iscrowd", 0) for a, _, _, _ in anns):
        continue
      where = f"{json_path}: image {image['id']} ({image.get('file_name')!r})"
      height, width = int(image["height"]), int(image["width"])
      frame = common.read_jpeg(os.path.join(image_root, image["file_name"]), height, width, where)
      yield int(image["id"]), {
          "video_id": int(image["id"]), "name": str(image["file_name"]),
          "height": height, "width": width, "length": 1,
          "frames": np.array([frame], dtype=object),
          "annotation_ids": np.array([a["id"] for a, _, _, _ in anns], np.int64),
          "labels": np.array([label for _, label, _, _ in anns], np.int32),
          "category_ids": np.array([category for _, _, category, _ in anns], np.int32),
          "iscrowd": np.array([int(a.get("iscrowd", 0)) for a, _, _, _ in anns], np.int32),
          "rles": np.array([rle for _, _, _, rle in anns], dtype=object),
      }


def _validate(source: dict, json_path: str, to_target: Dict[int, int], labels: Dict[int, int]):
  """Per image id: [(annotation, contiguous label, target category id, compressed RLE)]."""
  images = {}
  for image in source["images"]:
    if "id" not in image or "file_name" not in image:
      raise common.DataValidationError(f"{json_path}: image {image!r} needs 'id' and 'file_name'")
    common.frame_size(image, f"{json_path}: image {image['id']} ({image['file_name']!r})")
    images[image["id"]] = image
  known_categories = {int(c["id"]) for c in source["categories"]}
  per_image = {}
  for ann in source["annotations"]:
    image = images.get(ann.get("image_id"))
    if image is None:
      raise common.DataValidationError(f"{json_path}: annotation {ann.get('id')} refers to unknown image "
                                       f"{ann.get('image_id')}")
    where = f"{json_path}: image {image['id']} ({image['file_name']!r}): annotation {ann.get('id')}"
    if ann.get("category_id") not in known_categories:
      raise common.DataValidationError(f"{where}: unknown category {ann.get('category_id')}")
    rle = common.segmentation_to_rle(ann.get("segmentation"), int(image["height"]), int(image["width"]),
                                     where)
    target_category = to_target.get(int(ann["category_id"]))
    if target_category is None or not rle:
      continue
    per_image.setdefault(image["id"], []).append((ann, labels[target_category], target_category, rle))
  return per_image
