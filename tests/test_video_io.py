"""Frame sources, test-time geometry and chunking of `o2vis_jax.video_io`."""

import os

import numpy as np
import pytest
from PIL import Image

from o2vis_jax import video_io


def _frames(num, height=12, width=20, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(num)]


def _write_dir(directory, frames, ext="png"):
  os.makedirs(directory, exist_ok=True)
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(os.path.join(directory, f"{i:05d}.{ext}"))
  return directory


def test_resized_and_padded_shapes_hand_computed():
  # 720x1280 -> shorter side 480: 1280 * 480 / 720 = 853.33 -> 853; padded to 32: 864.
  assert video_io.resized_shape(720, 1280, 480) == (480, 853)
  assert video_io.padded_shape(480, 853, 32) == (480, 864)
  # portrait, rounding up: 80 * 64 / 48 = 106.67 -> 107.
  assert video_io.resized_shape(80, 48, 64) == (107, 64)
  # max_size: 100x1000 at 480 -> 480x4800, shrunk by 1333 / 4800 -> 133.3 x 1333.
  assert video_io.resized_shape(100, 1000, 480, max_size=1333) == (133, 1333)
  assert video_io.padded_shape(33, 64, 32) == (64, 64)
  assert video_io.padded_shape(33, 65, 0) == (33, 65)
  g = video_io.FrameGeometry.for_video(48, 80, 64, 32)
  assert (g.resized_height, g.resized_width, g.padded_height, g.padded_width) == (64, 107, 64, 128)


def test_preprocess_resizes_with_pil_and_pads_with_the_pixel_mean():
  frame = _frames(1, 48, 80)[0]
  g = video_io.FrameGeometry.for_video(48, 80, 64, 32)
  pad = (123.675, 116.28, 103.53)
  out = video_io.preprocess_frame(frame, g, pad)
  assert out.shape == (64, 128, 3) and out.dtype == np.float32
  expected = np.asarray(Image.fromarray(frame).resize((107, 64), Image.BILINEAR), np.float32)
  np.testing.assert_array_equal(out[:, :107], expected)
  np.testing.assert_allclose(out[:, 107:], np.broadcast_to(np.float32(pad), (64, 21, 3)))
  with pytest.raises(ValueError, match="48x80"):
    video_io.preprocess_frame(frame[:40], g, pad)


def test_frame_directory_reads_sorted_frames_exactly(tmp_path):
  frames = _frames(3)
  directory = _write_dir(str(tmp_path / "clip"), frames)
  with open(os.path.join(directory, "notes.txt"), "w") as f:   # not a frame: ignored
    f.write("not a frame")
  source = video_io.open_video(directory)
  assert (len(source), source.height, source.width) == (3, 12, 20)
  assert source.frame_names == ["00000.png", "00001.png", "00002.png"]
  for got, want in zip(source, frames):
    np.testing.assert_array_equal(got, want)


def test_unreadable_frame_names_the_file(tmp_path):
  directory = _write_dir(str(tmp_path / "clip"), _frames(3))
  bad = os.path.join(directory, "00001.png")
  with open(bad, "wb") as f:
    f.write(b"this is not a png")
  source = video_io.open_video(directory)
  iterator = iter(source)
  next(iterator)
  with pytest.raises(video_io.VideoReadError, match="00001.png"):
    next(iterator)


def test_frame_of_another_size_names_the_file(tmp_path):
  directory = _write_dir(str(tmp_path / "clip"), _frames(2) + _frames(1, 10, 20))
  with pytest.raises(video_io.VideoReadError, match="00002.png.*10x20.*12x20"):
    list(video_io.open_video(directory))


def test_missing_empty_and_corrupt_inputs_are_named(tmp_path):
  with pytest.raises(video_io.VideoReadError, match="nowhere.mp4"):
    video_io.open_video(str(tmp_path / "nowhere.mp4"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(video_io.VideoReadError, match="empty.*no image frames"):
    video_io.open_video(str(tmp_path / "empty"))
  corrupt = tmp_path / "broken.gif"
  corrupt.write_bytes(b"GIF89a but then garbage")
  with pytest.raises(video_io.VideoReadError, match="broken.gif"):
    video_io.open_video(str(corrupt))
  with pytest.raises(video_io.VideoReadError, match="video 'v7' has no frames"):
    video_io.FrameFiles([], name="v7")


def test_video_file_streams_frames(tmp_path):
  # Flat colour blocks survive GIF palette quantisation exactly.
  frames = []
  for i in range(5):
    frame = np.zeros((16, 24, 3), np.uint8)
    frame[:, :8] = (255, 0, 0)
    frame[:, 8 + 2 * i: 12 + 2 * i] = (0, 0, 255)
    frames.append(frame)
  path = str(tmp_path / "clip.gif")
  images = [Image.fromarray(f) for f in frames]
  images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)
  source = video_io.open_video(path)
  assert isinstance(source, video_io.VideoFile)
  assert (source.height, source.width, len(source)) == (16, 24, 5)
  assert source.fps == pytest.approx(10.0)
  got = list(source)
  assert len(got) == 5
  for g, f in zip(got, frames):
    np.testing.assert_array_equal(g, f)


def test_iter_chunks_pads_the_last_chunk():
  frames = _frames(7, 12, 20)
  g = video_io.FrameGeometry.for_video(12, 20, 12, 8)    # no resize, padded to 16 x 24
  pad = (1.0, 2.0, 3.0)
  chunks = list(video_io.iter_chunks(iter(frames), g, 5, pad))
  assert [(c.start, c.num_valid) for c in chunks] == [(0, 5), (5, 2)]
  np.testing.assert_array_equal(chunks[1].frame_valid, [True, True, False, False, False])
  assert chunks[0].images.shape == (5, 16, 24, 3)
  np.testing.assert_array_equal(chunks[1].images[1, :12, :20], frames[6].astype(np.float32))
  np.testing.assert_array_equal(chunks[1].images[2:], np.broadcast_to(np.float32(pad), (3, 16, 24, 3)))
  np.testing.assert_array_equal(chunks[0].images[3, 12:], np.broadcast_to(np.float32(pad), (4, 24, 3)))
