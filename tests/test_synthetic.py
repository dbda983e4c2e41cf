"""The synthetic occlusion dataset: self-consistent JSON, the events it promises, determinism by seed."""

import filecmp
import json
import os

import numpy as np
import pytest

from o2vis_jax.datasets import synthetic
from o2vis_jax.evaluation import rle

# pycocotools 2.0.11 warns about numpy 2 `__array__` on every decode; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("synthetic"))
  path = synthetic.generate(out, "train", num_videos=12, seed=0, size=64, num_frames=16)
  with open(path) as f:
    return out, json.load(f)


def test_layout_and_categories(generated):
  out, data = generated
  assert [c["name"] for c in data["categories"]] == ["circle", "square", "triangle", "star", "ring"]
  assert len(data["videos"]) == 12
  for video in data["videos"]:
    assert video["length"] == len(video["file_names"]) == 16
    for name in video["file_names"]:
      assert os.path.isfile(os.path.join(out, "train", "JPEGImages", name)), name


def test_areas_and_bboxes_are_the_mask_statistics(generated):
  _, data = generated
  videos = {v["id"]: v for v in data["videos"]}
  checked = 0
  for ann in data["annotations"]:
    video = videos[ann["video_id"]]
    assert len(ann["segmentations"]) == len(ann["areas"]) == len(ann["bboxes"]) == video["length"]
    assert any(s is not None for s in ann["segmentations"]), f"annotation {ann['id']} never visible"
    for seg, area, bbox in zip(ann["segmentations"], ann["areas"], ann["bboxes"]):
      if seg is None:
        assert area is None and bbox is None
        continue
      assert seg["size"] == [video["height"], video["width"]]
      assert sum(seg["counts"]) == 64 * 64
      mask = rle.decode_mask(seg)
      ys, xs = np.nonzero(mask)
      assert area == mask.sum() > 0
      assert bbox == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
      checked += 1
  assert checked > 100


def test_masks_are_disjoint_visible_regions(generated):
  _, data = generated
  for video in data["videos"]:
    anns = [a for a in data["annotations"] if a["video_id"] == video["id"]]
    for t in range(video["length"]):
      total = np.zeros((64, 64), np.int32)
      for ann in anns:
        if ann["segmentations"][t] is not None:
          total += rle.decode_mask(ann["segmentations"][t])
      assert total.max() <= 1, f"video {video['id']} frame {t}: modal masks overlap"


def _visibility(ann):
  return np.array([s is not None for s in ann["segmentations"]])


def test_occlusion_events_happen(generated):
  _, data = generated
  late, reentries, long_gaps = 0, 0, 0
  for ann in data["annotations"]:
    visible = _visibility(ann)
    first, last = np.flatnonzero(visible)[[0, -1]]
    late += first > 0
    hidden_inside = ~visible[first:last + 1]
    if hidden_inside.any():
      reentries += 1
      runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], hidden_inside, [0]]))))[::2]
      long_gaps += runs.max() >= 3
  lookalike_videos = sum(
      len(cats) != len(set(cats)) for cats in
      ([a["category_id"] for a in data["annotations"] if a["video_id"] == v["id"]] for v in data["videos"]))
  assert late >= 3, late
  assert reentries >= 3, reentries
  assert long_gaps >= 2, long_gaps         # hidden for several frames, then visible again.
  assert lookalike_videos >= 3, lookalike_videos


def test_same_seed_same_files_other_seed_other_videos(tmp_path):
  a = synthetic.generate(str(tmp_path / "a"), "train", 3, seed=5, size=48, num_frames=6)
  b = synthetic.generate(str(tmp_path / "b"), "train", 3, seed=5, size=48, num_frames=6)
  c = synthetic.generate(str(tmp_path / "c"), "valid", 3, seed=6, size=48, num_frames=6)
  assert open(a).read() == open(b).read()
  names = json.load(open(a))["videos"][0]["file_names"]
  for name in names:
    assert filecmp.cmp(os.path.join(tmp_path, "a", "train", "JPEGImages", name),
                       os.path.join(tmp_path, "b", "train", "JPEGImages", name), shallow=False)
  other = json.load(open(c))
  first_a = json.load(open(a))["annotations"][0]["segmentations"]
  assert all(ann["segmentations"] != first_a for ann in other["annotations"])


def test_cli_writes_what_it_is_asked(tmp_path):
  from data import synthetic as synthetic_cli   # the command line over the library module.
  assert synthetic_cli.main(["--out", str(tmp_path / "cli"), "--split", "valid", "--videos", "1", "--seed",
                             "3", "--size", "32", "--frames", "40", "--radius_range", "0.2", "0.3"]) == 0
  data = json.load(open(tmp_path / "cli" / "valid.json"))
  assert data["videos"][0]["length"] == 40 and data["videos"][0]["height"] == 32


def _largest_extents(path):
  """Per annotation, the largest bbox side over its frames, in pixels."""
  with open(path) as f:
    data = json.load(f)
  return [max(max(b[2], b[3]) for b in ann["bboxes"] if b is not None) for ann in data["annotations"]]


def test_radius_range_sets_the_object_size(tmp_path):
  # A shape of radius r spans at most 2r + 2 pixels; circles, rings and squares seen whole span about
  # 1.6r..2r, so the largest extent over a video bounds r from above and (loosely) below.
  size = 96
  small = _largest_extents(synthetic.generate(str(tmp_path / "s"), "train", 6, seed=2, size=size,
                                              num_frames=12, radius_range=(0.08, 0.08)))
  large = _largest_extents(synthetic.generate(str(tmp_path / "l"), "train", 6, seed=2, size=size,
                                              num_frames=12, radius_range=(0.25, 0.25)))
  # Occluder-crossing objects are capped at 0.35 x the bar width (>= 0.3 x size): >= 0.105 x size.
  assert max(small) <= 2 * 0.08 * 1.1 * size + 2
  assert max(large) > 2 * 0.2 * size
  assert np.median(large) > 1.5 * np.median(small)
  with pytest.raises(ValueError, match="radius_range"):
    synthetic.generate(str(tmp_path / "bad"), "train", 1, seed=0, size=32, num_frames=2,
                       radius_range=(0.3, 0.1))


def test_class_appearance_colour_family(tmp_path):
  # appearance='class': every visible object's median hue lies in its class's hue band (centre +- 15 deg,
  # plus JPEG and texture slack); 'random' draws colours regardless of the class.
  import colorsys
  from PIL import Image

  def hue_errors(appearance):
    out = tmp_path / appearance
    data = json.load(open(synthetic.generate(str(out), "train", 6, seed=4, size=64, num_frames=4,
                                             appearance=appearance)))
    names = {v["id"]: v["file_names"] for v in data["videos"]}
    errors = []
    for ann in data["annotations"]:
      t = next(t for t, s in enumerate(ann["segmentations"]) if s is not None)
      mask = rle.decode_mask(ann["segmentations"][t])
      if mask.sum() < 30:
        continue
      image = np.asarray(Image.open(out / "train" / "JPEGImages" / names[ann["video_id"]][t]), np.float64)
      pixels = image[mask] / 255.0
      hues = np.array([colorsys.rgb_to_hsv(*p)[0] * 360 for p in pixels[pixels.max(-1) > 0.2]])
      centre = synthetic.CLASS_HUES[ann["category_id"] - 1]
      errors.append(np.median(np.abs((hues - centre + 180) % 360 - 180)))
    return np.array(errors)

  class_errors, random_errors = hue_errors("class"), hue_errors("random")
  assert len(class_errors) >= 8 and class_errors.max() < 30, class_errors
  assert np.median(random_errors) > 30, random_errors
  with pytest.raises(ValueError, match="appearance"):
    synthetic.generate(str(tmp_path / "bad"), "train", 1, seed=0, size=32, num_frames=2, appearance="x")



def test_lookalikes_share_class_colour_texture_but_keep_a_trait_each():
  # appearance='class': a look-alike group shares class, hue and texture; each member has its own
  # (brightness, texture scale) level of LOOKALIKE_LEVELS for the whole video. 'random' keeps the old
  # near-identical copies (the earlier dataset bit for bit).
  import colorsys
  groups = 0
  for index in range(40):
    rng = np.random.default_rng([0, index])
    occluders = synthetic._random_occluders(rng, 128, True)
    objects = synthetic._random_objects(rng, 128, 24, 5, occluders, appearance="class")
    members = [o for o in objects if o.lookalike_member >= 0]
    if not members:
      continue
    groups += 1
    assert len(members) >= 2 and {o.category_id for o in members} == {members[0].category_id}
    assert {o.texture for o in members} == {synthetic.CLASS_TEXTURES[members[0].category_id - 1]}
    frequencies = [o.texture_frequency for o in members]
    assert len(set(frequencies)) == len(members)
    assert set(frequencies) <= {level[1] for level in synthetic.LOOKALIKE_LEVELS}
    # Brightness levels 0.62 / 0.82 / 1.0 of one colour (+-12 levels of noise per channel before them): the
    # brightest channel follows the member's level.
    by_level = sorted(members, key=lambda o: synthetic.LOOKALIKE_LEVELS[
        [level[1] for level in synthetic.LOOKALIKE_LEVELS].index(o.texture_frequency)][0])
    values = [max(o.colour) for o in by_level]
    assert min(np.diff(values)) > 5, values
    hues = [colorsys.rgb_to_hsv(*(o.colour / 255))[0] * 360 for o in members]
    spread = max(abs((a - b + 180) % 360 - 180) for a in hues for b in hues)   # on the hue circle.
    assert spread < 15, hues
  assert groups >= 15, groups
