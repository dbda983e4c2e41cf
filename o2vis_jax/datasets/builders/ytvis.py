"""TFDS builder (array_record) for YouTube-VIS 2019 / 2021 / 2022, OVIS and the synthetic dataset.

All five share one JSON layout (SPEC section 7) and differ only in where the files sit in the directory the
user names (`manual_dir`); nothing is downloaded. Splits: `train` (minus the holdout), `holdout` (a seeded
choice of `holdout_videos` train videos with their labels: the official validation sets have no public
annotations), and `valid` / `test` when their JSON is present (unlabelled for the real datasets).

TFDS 4.9 writes array_record without TensorFlow (checked: `download_and_prepare` and
`builder_from_directory(...).as_data_source()` run with TensorFlow absent), so this is a plain
`GeneratorBasedBuilder`; it writes into TFDS's `incomplete.*` directory and renames it only after every
split is written, so a build that fails leaves no dataset behind. Every input is validated before or while it
is written; a refusal raises `DataValidationError` naming the JSON file, the video and the annotation.
"""

import dataclasses
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow_datasets as tfds

from o2vis_jax.datasets.builders import common

# Per dataset: candidate annotation files and image roots, relative to the manual dir, for a split.
LAYOUTS = {
    "ytvis_2019": (("{split}.json", "{split}/instances.json", "annotations/instances_{split}.json"),
                   ("{split}/JPEGImages", "{split}")),
    "ytvis_2021": (("{split}/instances.json", "{split}.json", "annotations/instances_{split}.json"),
                   ("{split}/JPEGImages", "{split}")),
    "ytvis_2022": (("{split}/instances.json", "{split}.json", "annotations/instances_{split}.json"),
                   ("{split}/JPEGImages", "{split}")),
    "ovis": (("annotations_{split}.json", "annotations/annotations_{split}.json", "{split}.json"),
             ("{split}", "{split}/JPEGImages")),
    "synthetic": (("{split}.json",), ("{split}/JPEGImages",)),
}
SOURCE_SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class VideoConfig(tfds.core.BuilderConfig):
  dataset: str = "ytvis_2019"
  holdout_videos: int = 0
  holdout_seed: int = 0


def make_config(dataset: str, holdout_videos: int = 0, holdout_seed: int = 0) -> VideoConfig:
  if dataset not in LAYOUTS:
    raise ValueError(f"unknown video dataset {dataset!r}; known: {', '.join(LAYOUTS)}")
  name = dataset if holdout_videos == 0 else f"{dataset}_holdout{holdout_videos}_seed{holdout_seed}"
  return VideoConfig(name=name, dataset=dataset, holdout_videos=holdout_videos, holdout_seed=holdout_seed,
                     description=f"{dataset} videos, {holdout_videos} train videos held out")


class VideoInstances(common.SourceFileCodePath, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Video instance segmentation datasets in the YouTube-VIS JSON layout."""

  name = "o2vis_video_instances"
  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place the dataset as distributed (e.g. YouTube-VIS 2019: train.json + train/JPEGImages/...; 2021/2022: "
      "train/instances.json + train/JPEGImages/...; OVIS: annotations_train.json + train/<video>/...) in a "
      "directory and pass it as the manual dir (`python -m data.build --data_dir`).")
  disable_shuffling = True   # records are written as generated, not shuffled by key hash.

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=common.record_features(),
                                 metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    config = self.builder_config
    manual_dir = os.fspath(dl_manager.manual_dir)
    annotation_candidates, image_candidates = LAYOUTS[config.dataset]
    splits, categories = {}, None
    for split in SOURCE_SPLITS:
      candidates = [c.format(split=split) for c in annotation_candidates]
      present = [c for c in candidates if os.path.isfile(os.path.join(manual_dir, c))]
      if not present:
        if split == "train":
          common.find_first(manual_dir, candidates, "train annotation file", isdir=False)   # raises.
        continue
      json_path = os.path.join(manual_dir, present[0])
      source = common.load_json(json_path)
      videos, annotations = _validate(source, json_path)
      if categories is None and source.get("categories"):
        categories = source["categories"]
      image_root = _image_root(manual_dir, [c.format(split=split) for c in image_candidates], videos)
      if split == "train" and config.holdout_videos:
        held = set(common.holdout_ids([v["id"] for v in videos], config.holdout_videos,
                                      config.holdout_seed, json_path))
        kept = [v for v in videos if v["id"] not in held]
        splits["train"] = self._generate_examples(kept, annotations, json_path, image_root)
        splits["holdout"] = self._generate_examples(
            [v for v in videos if v["id"] in held], annotations, json_path, image_root)
      else:
        splits[split] = self._generate_examples(videos, annotations, json_path, image_root)
    self.info.metadata["categories"] = [
        {"id": int(c["id"]), "name": str(c["name"])} for c in sorted(categories or [], key=lambda c: c["id"])]
    self.info.metadata["dataset"] = config.dataset
    return splits

  def _generate_examples(self, videos, annotations, json_path, image_root):
    for video in videos:
      where = common.describe_video(json_path, video)
      height, width = common.frame_size(video, where)
      frames = [common.read_jpeg(os.path.join(image_root, name), height, width, f"{where} frame {t}")
                for t, name in enumerate(video["file_names"])]
      anns = annotations.get(video["id"], [])
      rles = [rle for _, _, rle_list in anns for rle in rle_list]
      yield int(video["id"]), {
          "video_id": int(video["id"]),
          "name": common.video_name(video),
          "height": height, "width": width, "length": len(frames),
          "frames": np.array(frames, dtype=object),
          "annotation_ids": np.array([a["id"] for a, _, _ in anns], np.int64),
          "labels": np.array([label for _, label, _ in anns], np.int32),
          "category_ids": np.array([a["category_id"] for a, _, _ in anns], np.int32),
          "iscrowd": np.array([int(a.get("iscrowd", 0)) for a, _, _ in anns], np.int32),
          "rles": np.array(rles, dtype=object),
      }


def _image_root(manual_dir: str, candidates: List[str], videos: List[dict]) -> str:
  """The candidate folder holding the first video's first frame (else the first existing folder)."""
  existing = [os.path.join(manual_dir, c) for c in candidates if os.path.isdir(os.path.join(manual_dir, c))]
  for root in existing:
    if videos and videos[0].get("file_names") and os.path.isfile(
        os.path.join(root, videos[0]["file_names"][0])):
      return root
  if not existing:
    common.find_first(manual_dir, candidates, "image folder", isdir=True)   # raises.
  return existing[0]


def _validate(source: dict, json_path: str) -> Tuple[List[dict], Dict[int, list]]:
  """Checks the JSON without reading images; returns videos and, per video id, the annotations as
  (annotation, contiguous label, [compressed RLE per frame])."""
  for key in ("videos", "categories"):
    if not isinstance(source.get(key), list):
      raise common.DataValidationError(f"{json_path}: missing list '{key}'")
  labels = common.category_labels(source["categories"], json_path)
  videos, by_id = [], {}
  for video in source["videos"]:
    where = common.describe_video(json_path, video)
    if "id" not in video or not isinstance(video.get("file_names"), list) or not video["file_names"]:
      raise common.DataValidationError(f"{where}: needs 'id' and a non-empty 'file_names' list")
    if "length" in video and int(video["length"]) != len(video["file_names"]):
      raise common.DataValidationError(f"{where}: 'length' is {video['length']} but it lists "
                                       f"{len(video['file_names'])} file_names")
    if video["id"] in by_id:
      raise common.DataValidationError(f"{where}: duplicate video id")
    common.frame_size(video, where)
    by_id[video["id"]] = video
    videos.append(video)
  annotations: Dict[int, list] = {}
  seen_ids = set()
  for ann in source.get("annotations") or []:
    where = f"{json_path}: annotation {ann.get('id')}"
    video = by_id.get(ann.get("video_id"))
    if video is None:
      raise common.DataValidationError(f"{where} refers to unknown video {ann.get('video_id')}")
    where = f"{common.describe_video(json_path, video)}: annotation {ann.get('id')}"
    if ann.get("id") is None or ann["id"] in seen_ids:
      raise common.DataValidationError(f"{where}: missing or duplicate annotation id")
    seen_ids.add(ann["id"])
    if ann.get("category_id") not in labels:
      raise common.DataValidationError(f"{where}: unknown category {ann.get('category_id')} (known: "
                                       f"{sorted(labels)})")
    segmentations = ann.get("segmentations")
    num_frames = len(video["file_names"])
    if not isinstance(segmentations, list) or len(segmentations) != num_frames:
      count = len(segmentations) if isinstance(segmentations, list) else "no"
      raise common.DataValidationError(f"{where}: has {count} segmentations, the video has {num_frames} "
                                       "frames")
    height, width = common.frame_size(video, where)
    rles = [common.segmentation_to_rle(s, height, width, f"{where} frame {t}")
            for t, s in enumerate(segmentations)]
    annotations.setdefault(video["id"], []).append((ann, labels[ann["category_id"]], rles))
  return videos, annotations
