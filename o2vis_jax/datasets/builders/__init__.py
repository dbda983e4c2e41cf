"""Dataset builders: `build(...)` writes a TFDS array_record dataset from a directory the user names;
`open_split(...)` reads one split back as a random-access data source without TensorFlow.

  path = build("ytvis_2019", "/data/ytvis2019", "/data/built", holdout_videos=300)
  source, categories = open_split(path, "train")      # source[i] is a record (builders/common.py)
"""

import os
from typing import List, Optional, Tuple

import tensorflow_datasets as tfds

from o2vis_jax.datasets.builders import coco, ytvis
from o2vis_jax.datasets.builders.common import DataValidationError  # noqa: F401  (re-exported)

VIDEO_DATASETS = tuple(ytvis.LAYOUTS)
DATASETS = VIDEO_DATASETS + ("coco",)


def make_builder(dataset: str, out_dir: str, holdout_videos: int = 0, holdout_seed: int = 0,
                 coco_target_json: str = "") -> tfds.core.GeneratorBasedBuilder:
  if dataset == "coco":
    if holdout_videos:
      raise ValueError("holdout_videos applies to the video datasets, not to coco")
    return coco.ImageInstances(config=coco.make_config(coco_target_json), data_dir=out_dir,
                               file_format="array_record")
  if dataset not in VIDEO_DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
  return ytvis.VideoInstances(config=ytvis.make_config(dataset, holdout_videos, holdout_seed),
                              data_dir=out_dir, file_format="array_record")


def build(dataset: str, data_dir: str, out_dir: str, holdout_videos: int = 0, holdout_seed: int = 0,
          coco_target_json: str = "") -> str:
  """Builds `dataset` from the raw files in `data_dir` into `out_dir`; returns the built dataset's
  directory (pass it to `open_split` or as `config.data.data_dir`). Rebuilding an existing one is a no-op."""
  if not os.path.isdir(data_dir):
    raise DataValidationError(f"{data_dir}: raw data directory not found")
  builder = make_builder(dataset, out_dir, holdout_videos, holdout_seed, coco_target_json)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=data_dir))
  return os.fspath(builder.data_path)


def open_split(dataset_dir: str, split: str) -> Tuple[object, List[dict]]:
  """(random-access source of records, categories sorted by id) of a built dataset's split."""
  if not os.path.isfile(os.path.join(dataset_dir, "dataset_info.json")):
    raise FileNotFoundError(f"{dataset_dir}: not a built dataset (no dataset_info.json); run "
                            "`python -m data.build` first")
  builder = tfds.builder_from_directory(dataset_dir)
  if split not in builder.info.splits:
    raise KeyError(f"{dataset_dir}: no split {split!r}; it has {', '.join(builder.info.splits)}")
  return builder.as_data_source(split), list(builder.info.metadata.get("categories", []))


def split_names(dataset_dir: str) -> List[str]:
  return list(tfds.builder_from_directory(dataset_dir).info.splits)


def find_built(out_dir: str, dataset: str, holdout_videos: int = 0, holdout_seed: int = 0,
               coco_target_json: str = "") -> Optional[str]:
  """The directory `build` would return, if that dataset is already built there."""
  path = os.fspath(make_builder(dataset, out_dir, holdout_videos, holdout_seed, coco_target_json).data_path)
  return path if os.path.isfile(os.path.join(path, "dataset_info.json")) else None
