"""Dataset runs that survive bad frames and interruptions (`inference.predict_dataset`,
`inference.FinishedVideos`): what is finished stays on disk, --resume picks it up."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from o2vis_jax import cli, inference, video_io
from tests.fake_predictor import FakePredictor

SETTINGS = dict(checkpoint="/ckpt/a", max_num=2)


def _dataset(root, lengths=(3, 2, 4)):
  """Videos 10, 11, 12 of JPEG frames under `root`."""
  videos = []
  for v, length in enumerate(lengths):
    os.makedirs(os.path.join(root, f"clip{v}"), exist_ok=True)
    names = []
    for t in range(length):
      name = f"clip{v}/{t:05d}.jpg"
      Image.fromarray(np.full((12, 16, 3), 40 * t + v, np.uint8)).save(os.path.join(root, name))
      names.append(name)
    videos.append(dict(id=10 + v, file_names=names))
  return dict(videos=videos, categories=[dict(id=5, name="a"), dict(id=3, name="b")])


def _corrupt(root, name):
  path = os.path.join(root, name)
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_each_video_is_kept_as_it_finishes_and_a_bad_frame_keeps_the_earlier_ones(tmp_path):
  root = str(tmp_path / "frames")
  dataset = _dataset(root)
  _corrupt(root, "clip1/00001.jpg")
  partial = str(tmp_path / "r.json.partial.jsonl")
  finished = inference.FinishedVideos(partial, SETTINGS)
  with pytest.raises(video_io.VideoReadError,
                     match=r"frame 1 '.*clip1/00001\.jpg' of video '11 \(clip1\)'"):
    inference.predict_dataset(FakePredictor(), dataset, root, finished=finished)
  lines = _lines(partial)
  assert lines[0] == {"o2vis_partial_results": 1, "settings": SETTINGS}
  assert [line["video_id"] for line in lines[1:]] == [10], "video 10 finished before the bad frame"
  assert [r["category_id"] for r in lines[1]["results"]] == [3, 5]   # labels 0, 1 -> sorted ids

  # The frame fixed, --resume: video 10 is not run again; all three end up in the dataset's order.
  Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(os.path.join(root, "clip1/00001.jpg"))
  predictor = FakePredictor()
  finished = inference.FinishedVideos(partial, SETTINGS, resume=True)
  assert finished.resumed == 1
  results = inference.predict_dataset(predictor, dataset, root, finished=finished)
  assert predictor.videos_seen == 2
  assert (results.run, results.resumed, results.skipped) == (2, 1, [])
  assert [r["video_id"] for r in results] == [10, 10, 11, 11, 12, 12]
  assert [len(r["segmentations"]) for r in results] == [3, 3, 2, 2, 4, 4]


def test_skip_unreadable_leaves_the_video_out_and_says_which(tmp_path):
  root = str(tmp_path / "frames")
  dataset = _dataset(root)
  _corrupt(root, "clip1/00001.jpg")
  os.remove(os.path.join(root, "clip2/00000.jpg"))    # a missing first frame: fails when opened
  results = inference.predict_dataset(FakePredictor(), dataset, root, skip_unreadable=True)
  assert [r["video_id"] for r in results] == [10, 10]
  assert [name for name, _ in results.skipped] == ["11 (clip1)", "12 (clip2)"]
  assert "00001.jpg" in results.skipped[0][1] and "clip2/00000.jpg" in results.skipped[1][1]


def test_an_interruption_keeps_the_finished_videos(tmp_path):
  root = str(tmp_path / "frames")
  dataset = _dataset(root)
  partial = str(tmp_path / "p.jsonl")
  with pytest.raises(KeyboardInterrupt):
    inference.predict_dataset(FakePredictor(interrupt_at=3), dataset, root,
                              finished=inference.FinishedVideos(partial, SETTINGS))
  assert [line["video_id"] for line in _lines(partial)[1:]] == [10, 11]


def test_a_cut_last_line_is_dropped_and_that_video_runs_again(tmp_path):
  root = str(tmp_path / "frames")
  dataset = _dataset(root)
  partial = str(tmp_path / "p.jsonl")
  inference.predict_dataset(FakePredictor(), dataset, root,
                            finished=inference.FinishedVideos(partial, SETTINGS))
  data = open(partial, "rb").read()
  with open(partial, "wb") as f:     # a crash in the middle of writing video 12's line
    f.write(data[:-40])
  finished = inference.FinishedVideos(partial, SETTINGS, resume=True)
  assert (finished.resumed, finished.dropped_line) == (2, True)
  assert open(partial, "rb").read().endswith(b"\n"), "the cut line must go before appending"
  predictor = FakePredictor()
  results = inference.predict_dataset(predictor, dataset, root, finished=finished)
  assert predictor.videos_seen == 1 and results.run == 1
  assert [line["video_id"] for line in _lines(partial)[1:]] == [10, 11, 12]


def test_resume_refuses_other_settings_and_a_fresh_run_refuses_an_unfinished_record(tmp_path):
  partial = str(tmp_path / "p.jsonl")
  inference.FinishedVideos(partial, SETTINGS)
  with pytest.raises(cli.InputError, match=r"p\.jsonl.*--resume.*delete"):
    inference.FinishedVideos(partial, SETTINGS)
  with pytest.raises(cli.InputError, match=r"max_num=2, this run has max_num=5"):
    inference.FinishedVideos(partial, dict(SETTINGS, max_num=5), resume=True)
  with open(partial, "w") as f:
    f.write('{"video_id": 1}\n')
  with pytest.raises(cli.InputError, match="no header line"):
    inference.FinishedVideos(partial, SETTINGS, resume=True)


def test_a_record_cut_in_its_header_starts_over(tmp_path):
  partial = tmp_path / "p.jsonl"
  partial.write_bytes(b'{"o2vis_partial_res')
  finished = inference.FinishedVideos(str(partial), SETTINGS, resume=True)
  assert finished.resumed == 0 and _lines(str(partial)) == [
      {"o2vis_partial_results": 1, "settings": SETTINGS}]
