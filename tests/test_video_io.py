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


# --------------------------------------------------------------------------------------------------
# Video files through ffmpeg: whole, truncated, corrupt (made here with imageio's ffmpeg writer).

def _write_mp4(path, num_frames=30, faststart=False):
  """Noise frames (big packets, so cutting the file in half loses about half of them)."""
  import imageio.v2 as imageio
  params = ["-movflags", "+faststart"] if faststart else []
  writer = imageio.get_writer(str(path), fps=10, macro_block_size=1, output_params=params)
  for frame in _frames(num_frames, 48, 64, seed=3):
    writer.append_data(frame)
  writer.close()
  return str(path)


def _cut_in_half(path, out):
  data = open(path, "rb").read()
  with open(out, "wb") as f:
    f.write(data[:len(data) // 2])
  return str(out)


def test_mp4_reads_every_frame_with_its_size_and_rate(tmp_path):
  for faststart in (False, True):
    path = _write_mp4(tmp_path / f"clip{int(faststart)}.mp4", 30, faststart)
    source = video_io.open_video(path)
    assert (len(source), source.height, source.width, source.fps) == (30, 48, 64, 10.0)
    assert source.incomplete is None
    frames = list(source)
    assert len(frames) == 30 and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8


def test_faststart_mp4_cut_in_half_is_reported_with_the_frame_where_decoding_stops(tmp_path):
  # The moov atom (index) at the front, as written for streaming: the half file still opens and
  # decodes its first half without a complaint from imageio, the silent wrong result of the issue.
  whole = _write_mp4(tmp_path / "whole.mp4", 30, faststart=True)
  assert open(whole, "rb").read(64).find(b"moov") >= 0, "faststart did not move the index forward"
  cut = _cut_in_half(whole, tmp_path / "cut.mp4")
  with pytest.raises(video_io.IncompleteVideoError) as error:
    video_io.open_video(cut)
  message = str(error.value)
  read = error.value.frames_read
  assert 0 < read < 30
  assert "cut.mp4" in message and f"decoding stops at frame {read}" in message, message
  assert "announces 30" in message and "partial file" in message, message
  assert "ffmpeg version" not in message and "\n" not in message
  # allow_partial: the frames that decode, and why the rest is missing.
  source = video_io.open_video(cut, allow_partial=True)
  assert len(source) == read and len(list(source)) == read
  assert f"frame {read}" in source.incomplete


def test_mp4_cut_before_its_index_and_non_videos_say_what_is_wrong_without_the_banner(tmp_path):
  cut = _cut_in_half(_write_mp4(tmp_path / "whole.mp4"), tmp_path / "cut.mp4")   # moov at the end
  garbage = tmp_path / "notes.mp4"
  garbage.write_bytes(b"this is not a video " * 20)
  for path in (cut, str(garbage)):
    with pytest.raises(video_io.VideoReadError) as error:
      video_io.open_video(path, allow_partial=True)   # nothing to salvage: an error regardless
    message = str(error.value)
    assert os.path.basename(path) in message and "moov atom not found" in message, message
    assert "truncated" in message                     # the true hint; not "pip install"
    assert "pip install" not in message and "ffmpeg version" not in message and "\n" not in message


def test_corrupt_packets_mid_stream_are_reported(tmp_path):
  path = _write_mp4(tmp_path / "whole.mp4", 30, faststart=True)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2: len(data) // 2 + 3000] = b"\xff" * 3000   # inside the frames, index intact
  (tmp_path / "corrupt.mp4").write_bytes(bytes(data))
  with pytest.raises(video_io.IncompleteVideoError, match=r"corrupt\.mp4.*frames decode.*announces 30"):
    video_io.open_video(str(tmp_path / "corrupt.mp4"))


def test_first_meaningful_line_drops_the_ffmpeg_banner():
  text = ("Could not load meta information\n=== stderr ===\n\nffmpeg version n9.0 Copyright (c) 2000\n"
          "  built with gcc 16\n  configuration: --enable-gpl\n  libavutil      61.  1.102 / 61.  1.102\n"
          "[in#0 @ 0x55] Format mov detected only with low score of 1, misdetection possible!\n"
          "[in#0 @ 0x55] moov atom not found\nError opening input file x.mp4.\n")
  assert video_io.first_meaningful_line(text) == "moov atom not found"


def test_install_hint_only_when_no_video_backend_is_installed(tmp_path, monkeypatch):
  garbage = tmp_path / "clip.mp4"
  garbage.write_bytes(b"not a video")
  monkeypatch.setattr(video_io, "ffmpeg_executable", lambda: None)   # the imageio route
  with pytest.raises(video_io.VideoReadError) as installed:
    video_io.open_video(str(garbage))
  assert "pip install" not in str(installed.value)   # imageio-ffmpeg is installed here
  real_find_spec = video_io.importlib.util.find_spec
  monkeypatch.setattr(video_io.importlib.util, "find_spec",
                      lambda name, *a: None if name in ("imageio_ffmpeg", "av")
                      else real_find_spec(name, *a))
  with pytest.raises(video_io.VideoReadError, match="pip install imageio-ffmpeg"):
    video_io.open_video(str(garbage))


def test_unreadable_frame_of_a_video_names_its_index_and_file(tmp_path):
  directory = _write_dir(str(tmp_path / "clip"), _frames(4), ext="jpg")
  good = open(os.path.join(directory, "00002.jpg"), "rb").read()
  with open(os.path.join(directory, "00002.jpg"), "wb") as f:
    f.write(good[:len(good) // 2])   # a truncated JPEG
  source = video_io.open_video(directory)
  with pytest.raises(video_io.VideoReadError,
                     match=r"frame 2 '.*00002\.jpg' of video 'clip': .*[Tt]runcated"):
    list(source)
