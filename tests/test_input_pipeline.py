"""Input pipeline: batch format, mask / pixel alignment under augmentation, exact restore from state,
disjoint shards, determinism, padding buckets, and the synthetic dataset prepared on demand. (The chunked
evaluation stream is `video_io.iter_chunks`, tested in test_video_io.py.)"""

import io

import grain
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from configs import tiny
from o2vis_jax.datasets import builders, synthetic
from o2vis_jax import input_pipeline

# pycocotools 2.0.11 warns about numpy 2 `__array__` on every decode; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def config():
  return tiny.get_config()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("pipeline"))
  synthetic.generate(root + "/raw", "train", num_videos=8, seed=0, size=96, num_frames=8)
  return builders.build("synthetic", root + "/raw", root + "/built")


def _stream(config, built, seed=0, shard=None, coco=False):
  source, _ = builders.open_split(built, "train")
  return input_pipeline.train_dataset(config, source, batch_size=2, coco_source=source if coco else None,
                                      shard_options=shard or grain.sharding.NoSharding(), seed=seed)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_batch_format_and_invariants(config, built):
  batches = _take(iter(_stream(config, built, coco=True)), 4)
  g, t = config.data.max_instances, config.data.num_frames
  for batch in batches:
    expected = {"frames": ((2, t, 96, 96, 3), np.float32), "pixel_valid": ((2, t, 96, 96), bool),
                "frame_valid": ((2, t), bool), "labels": ((2, g), np.int32), "instance_valid": ((2, g), bool),
                "masks": ((2, t, g, 96, 96), bool), "present": ((2, t, g), bool),
                "track_ids": ((2, g), np.int32)}
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected
    assert batch["frame_valid"].all()
    np.testing.assert_array_equal(batch["present"], batch["masks"].any(axis=(3, 4)))
    assert (batch["present"].any(axis=1) <= batch["instance_valid"]).all()
    assert not (batch["masks"] & ~batch["pixel_valid"][:, :, None]).any()
    assert (batch["labels"][~batch["instance_valid"]] == 0).all()
    assert (batch["track_ids"][~batch["instance_valid"]] == -1).all()
    assert (batch["track_ids"][batch["instance_valid"]] > 0).all()
    assert ((batch["labels"] >= 0) & (batch["labels"] < 5)).all()
    pad = np.asarray(config.data.pad_value, np.float32)
    assert (batch["frames"][~batch["pixel_valid"]] == pad).all()
    assert batch["frames"].min() >= 0 and batch["frames"].max() <= 255
  assert sum(b["instance_valid"].sum() for b in batches) > 4


def _png(image):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _coloured_record():
  """A 3-frame 90x120 video: a red square moving right and a green disc moving down on black."""
  height, width, length = 90, 120, 3
  frames, rles = [], [[], []]
  yy, xx = np.mgrid[0:height, 0:width]
  for t in range(length):
    square = (yy >= 10) & (yy < 40) & (xx >= 10 + 8 * t) & (xx < 45 + 8 * t)
    disc = (yy - 40 - 6 * t) ** 2 + (xx - 85) ** 2 < 18 ** 2
    image = np.zeros((height, width, 3), np.uint8)
    image[square] = (255, 0, 0)
    image[disc] = (0, 255, 0)
    frames.append(_png(image))
    for g, mask in enumerate((square, disc)):
      rles[g].append(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"])
  return {"video_id": 1, "name": b"coloured", "height": height, "width": width, "length": length,
          "frames": np.array(frames, dtype=object), "annotation_ids": np.array([11, 12], np.int64),
          "labels": np.array([3, 1], np.int32), "category_ids": np.array([4, 2], np.int32),
          "iscrowd": np.array([0, 0], np.int32), "rles": np.array(rles[0] + rles[1], dtype=object)}


@pytest.mark.parametrize("pseudo_clip", [False, True])
def test_augmentation_keeps_masks_on_their_pixels(config, pseudo_clip):
  options = input_pipeline.ClipOptions.from_config(config.data)
  record = _coloured_record()
  colours = {11: np.array([255, 0, 0]), 12: np.array([0, 255, 0])}
  flips = set()
  for seed in range(12):
    clip = input_pipeline.make_training_clip(record, np.random.default_rng(seed), options=options,
                                             pseudo_clip=pseudo_clip, pad_value=(0, 0, 0))
    frames = clip["frames"].astype(np.float32)
    assert frames.shape[0] == 3 and min(frames.shape[1:3]) in range(64, 97) and max(frames.shape[1:3]) <= 96
    for g, track in enumerate(clip["track_ids"]):
      for t in range(3):
        mask = clip["masks"][t, g]
        if not mask.any():
          continue
        # Pixels of the object's exact colour: those away from edges must be in its mask, and the mask's
        # pixels must be mostly of its colour (bilinear edges excepted).
        distance = np.abs(frames[t] - colours[track]).sum(-1)
        of_colour = distance < 30
        inside = (distance[mask] < 200).mean()
        assert inside > 0.85, (seed, t, track, inside)
        assert (mask[of_colour]).mean() > 0.9, (seed, t, track)
      # A flip is visible as the red square right of the green disc's centre.
    if len(clip["track_ids"]) == 2 and clip["present"][0].all():
      cx = [np.nonzero(clip["masks"][0, g])[1].mean() for g in range(2)]
      flips.add(cx[0] > cx[1])
  assert flips == {False, True}


def test_pseudo_clip_frames_are_small_warps_of_one_image(config):
  import dataclasses
  options = dataclasses.replace(input_pipeline.ClipOptions.from_config(config.data), crop=None,
                                min_sizes=(90,), max_size=200, flip_prob=0.0)     # warps only.
  clip = input_pipeline.make_training_clip(_coloured_record(), np.random.default_rng(0), options=options,
                                           pseudo_clip=True, pad_value=(0, 0, 0))
  assert clip["frames"].shape == (3, 90, 120, 3)
  assert not np.array_equal(clip["masks"][0], clip["masks"][1])
  # Every frame warps frame 0 of the source (scale 1 +- 0.1): the square keeps about its 30x35 area.
  square = list(clip["track_ids"]).index(11)
  ratios = clip["masks"][:, square].sum(axis=(1, 2)) / (30 * 35)
  assert np.all((ratios > 0.75) & (ratios < 1.3)), ratios


def test_choose_instances_prefers_visible_ones():
  annotated = np.array([True, True, False, True, True, True])
  visible = np.array([False, True, True, True, False, True])
  rng = np.random.default_rng(0)
  assert input_pipeline._choose_instances(annotated, visible, 6, rng).tolist() == [0, 1, 3, 4, 5]
  for _ in range(5):
    chosen = input_pipeline._choose_instances(annotated, visible, 4, rng).tolist()
    assert len(chosen) == 4 and {1, 3, 5} <= set(chosen) and 2 not in chosen
    assert set(input_pipeline._choose_instances(annotated, visible, 2, rng).tolist()) < {1, 3, 5}


def test_sample_frame_indices():
  rng = np.random.default_rng(0)
  for _ in range(20):
    indices = input_pipeline.sample_frame_indices(30, 5, 2, rng)
    assert len(set(indices)) == 5 and indices[-1] - indices[0] == 4    # 5 consecutive frames.
  short = input_pipeline.sample_frame_indices(2, 5, 2, rng)
  assert len(short) == 5 and set(short) <= {0, 1} and list(short) == sorted(short)
  assert list(input_pipeline.sample_frame_indices(1, 3, 1, rng)) == [0, 0, 0]


def test_restore_from_state_continues_exactly(config, built):
  dataset = _stream(config, built, coco=True)
  iterator = iter(dataset)
  _take(iterator, 3)
  state = iterator.get_state()
  expected = _take(iterator, 3)
  restored = iter(_stream(config, built, coco=True))
  restored.set_state(state)
  _assert_batches_equal(_take(restored, 3), expected)


def test_same_seed_same_stream_other_seed_other_stream(config, built):
  a = _take(iter(_stream(config, built, seed=1)), 2)
  b = _take(iter(_stream(config, built, seed=1)), 2)
  c = _take(iter(_stream(config, built, seed=2)), 2)
  _assert_batches_equal(a, b)
  assert not all(np.array_equal(x["frames"], y["frames"]) for x, y in zip(a, c))


def test_two_processes_read_disjoint_videos(config, built):
  tracks = []
  for index in range(2):
    shard = grain.sharding.ShardOptions(shard_index=index, shard_count=2, drop_remainder=True)
    batches = _take(iter(_stream(config, built, shard=shard)), 6)
    tracks.append({int(i) for b in batches for i in b["track_ids"][b["instance_valid"]]})
  assert tracks[0] and tracks[1] and not tracks[0] & tracks[1]


def test_pad_batch_picks_the_smallest_fitting_bucket():
  def clip(h, w):
    return {"frames": np.ones((2, h, w, 3), np.uint8), "masks": np.ones((2, 1, h, w), bool),
            "present": np.ones((2, 1), bool), "labels": np.array([2], np.int32),
            "track_ids": np.array([7], np.int32)}
  buckets = [(64, 96), (96, 64), (96, 96)]
  out = input_pipeline.pad_batch([clip(50, 90), clip(64, 70)], buckets=buckets, max_instances=3,
                                 pad_value=(1, 2, 3))
  assert out["frames"].shape == (2, 2, 64, 96, 3)
  assert out["pixel_valid"][0, 0].sum() == 50 * 90 and out["pixel_valid"][1, 0].sum() == 64 * 70
  np.testing.assert_array_equal(out["frames"][0, 0, 60, 0], [1, 2, 3])
  assert out["track_ids"].tolist() == [[7, -1, -1], [7, -1, -1]]
  assert input_pipeline.pad_batch([clip(50, 90), clip(90, 50)], buckets=buckets, max_instances=1,
                                  pad_value=(0, 0, 0))["frames"].shape[2:4] == (96, 96)
  with pytest.raises(ValueError, match="fits none of config.data.pad_buckets"):
    input_pipeline.pad_batch([clip(100, 20)], buckets=buckets, max_instances=1, pad_value=(0, 0, 0))


def test_prepare_synthetic_generates_once(config, tmp_path):
  path = input_pipeline.prepare_synthetic(config, str(tmp_path))
  assert sorted(builders.split_names(path)) == ["train", "valid"]
  train, categories = builders.open_split(path, "train")
  assert len(train) == config.data.synthetic_videos and len(categories) == 5
  assert int(train[0]["height"]) == config.data.synthetic_size
  assert int(train[0]["length"]) == config.data.synthetic_frames
  assert input_pipeline.prepare_synthetic(config, str(tmp_path)) == path
