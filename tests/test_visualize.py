"""Overlays, identity colours and PNG masks of `o2vis_jax.visualize`."""

import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util

from o2vis_jax import visualize


def _rle(mask):
  rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
  rle["counts"] = rle["counts"].decode("utf-8")
  return rle


def _square(height, width, y0, x0, size):
  mask = np.zeros((height, width), bool)
  mask[y0:y0 + size, x0:x0 + size] = True
  return mask


def test_identity_colours_are_stable_and_distinct():
  colours = [visualize.identity_colour(i) for i in range(24)]
  again = [visualize.identity_colour(i) for i in range(24)]
  for a, b in zip(colours, again):
    np.testing.assert_array_equal(a, b)
  stacked = np.stack(colours).astype(np.int64)
  distances = np.abs(stacked[:, None] - stacked[None]).sum(-1)
  np.fill_diagonal(distances, 10 ** 6)
  assert distances.min() >= 20, f"two identities get near-identical colours: {distances.min()}"


def test_overlay_frame_blends_hand_computed():
  frame = np.full((10, 10, 3), 100, np.uint8)
  mask = _square(10, 10, 2, 2, 5)
  colour = visualize.identity_colour(3).astype(np.float64)
  out = visualize.overlay_frame(frame, mask[None], [3], alpha=0.5)
  np.testing.assert_array_equal(out[4, 4], np.round(0.5 * 100 + 0.5 * colour))   # interior
  np.testing.assert_array_equal(out[2, 4], colour)                                 # contour
  np.testing.assert_array_equal(out[0, 0], [100, 100, 100])                        # outside
  np.testing.assert_array_equal(out[8, 8], [100, 100, 100])


def test_overlay_label_draws_text_inside_the_box():
  frame = np.full((40, 60, 3), 200, np.uint8)
  mask = _square(40, 60, 5, 5, 30)
  plain = visualize.overlay_frame(frame, mask[None], [0])
  labelled = visualize.overlay_frame(frame, mask[None], [0], labels=["cat 0.9"])
  changed = np.any(plain != labelled, axis=-1)
  assert changed.any() and not changed[:5].any() and not changed[:, :4].any()
  assert (labelled.max(-1) < 30).any(), "label text (dark) missing"


def test_overlay_colour_follows_identity_not_order(tmp_path):
  height, width, frames = 12, 16, 3
  instances = [
      dict(identity=7, score=0.9, segmentations=[_rle(_square(height, width, 1, 1 + t, 4))
                                                  for t in range(frames)]),
      dict(identity=2, score=0.5, segmentations=[_rle(_square(height, width, 6, 8, 4))
                                                  if t != 1 else None for t in range(frames)]),
  ]
  video = [np.full((height, width, 3), 50, np.uint8) for _ in range(frames)]
  out_a = visualize.write_overlay(iter(video), instances, str(tmp_path / "a"), fps=5)
  out_b = visualize.write_overlay(iter(video), instances[::-1], str(tmp_path / "b"), fps=5)
  expect7 = np.round(0.5 * 50 + 0.5 * visualize.identity_colour(7).astype(np.float64))
  expect2 = np.round(0.5 * 50 + 0.5 * visualize.identity_colour(2).astype(np.float64))
  for t in range(frames):
    a = np.asarray(Image.open(os.path.join(out_a, f"{t:05d}.png")))
    b = np.asarray(Image.open(os.path.join(out_b, f"{t:05d}.png")))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[2, 2 + t], expect7)   # interior of identity 7, every frame
    if t != 1:
      np.testing.assert_array_equal(a[7, 9], expect2)
    else:
      np.testing.assert_array_equal(a[7, 9], [50, 50, 50])   # null segmentation: not drawn


def test_writer_formats(tmp_path, monkeypatch):
  frames = [np.full((8, 8, 3), 30 * i, np.uint8) for i in range(4)]
  with visualize.OverlayWriter(str(tmp_path / "v.gif"), fps=4) as writer:
    for f in frames:
      writer.write(f)
  with Image.open(writer.path) as gif:
    assert gif.n_frames == 4
  assert visualize.ffmpeg_available()   # imageio-ffmpeg is pinned in requirements.txt.
  with visualize.OverlayWriter(str(tmp_path / "v.mp4"), fps=4) as writer:
    for f in frames:
      writer.write(f)
  assert writer.kind == "video" and os.path.getsize(writer.path) > 0
  # Without an mp4 backend: PNG frames next to the requested path.
  monkeypatch.setattr(visualize, "ffmpeg_available", lambda: False)
  with visualize.OverlayWriter(str(tmp_path / "w.mp4"), fps=4) as writer:
    for f in frames:
      writer.write(f)
  assert writer.kind == "png" and writer.path == str(tmp_path / "w_frames")
  assert sorted(os.listdir(writer.path)) == [f"{i:05d}.png" for i in range(4)]
  np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(writer.path, "00002.png"))), frames[2])


def test_png_masks_indexed_higher_score_on_top(tmp_path):
  a = _square(10, 10, 0, 0, 6)
  b = _square(10, 10, 3, 3, 6)
  instances = [dict(identity=4, score=0.2, segmentations=[_rle(a), None]),
               dict(identity=9, score=0.8, segmentations=[_rle(b), _rle(a)])]
  visualize.write_png_masks(str(tmp_path), ["00000.jpg", "00001.jpg"], instances, 10, 10)
  first = Image.open(tmp_path / "00000.png")
  assert first.mode == "P"
  index = np.asarray(first)
  assert index[0, 0] == 1 and index[4, 4] == 2 and index[8, 8] == 2
  assert index[9, 9] == 0 and index[0, 9] == 0
  palette = np.asarray(first.getpalette()[:9]).reshape(3, 3)
  np.testing.assert_array_equal(palette[1], visualize.identity_colour(4))
  np.testing.assert_array_equal(palette[2], visualize.identity_colour(9))
  second = np.asarray(Image.open(tmp_path / "00001.png"))
  np.testing.assert_array_equal(second, np.where(a, 2, 0))


def test_progress_is_reported_for_every_frame_written(tmp_path):
  # A 3,000-frame video takes minutes to write: the command line shows a bar fed by these calls.
  frames = 5
  instances = [dict(identity=1, score=0.7,
                    segmentations=[_rle(_square(8, 8, 1, 1, 3)) for _ in range(frames)])]
  calls = []
  visualize.write_png_masks(str(tmp_path / "png"), [f"{t:05d}.jpg" for t in range(frames)],
                            instances, 8, 8, progress=calls.append)
  assert calls == [1] * frames and len(os.listdir(tmp_path / "png")) == frames
  calls.clear()
  video = [np.zeros((8, 8, 3), np.uint8)] * frames
  visualize.write_overlay(iter(video), instances, str(tmp_path / "overlay.gif"), progress=calls.append)
  assert calls == [1] * frames


def test_overlay_target_says_what_a_path_becomes(tmp_path, monkeypatch):
  assert visualize.overlay_target("a/b.mp4") == ("video", "a/b.mp4")
  assert visualize.overlay_target("a/b.GIF") == ("gif", "a/b.GIF")
  assert visualize.overlay_target("a/frames") == ("png", "a/frames")
  with pytest.raises(ValueError, match=r"b\.png.*\.png is not an overlay format"):
    visualize.overlay_target("a/b.png")
  monkeypatch.setattr(visualize, "ffmpeg_available", lambda: False)
  assert visualize.overlay_target("a/b.mp4") == ("png", "a/b_frames")
