"""scripts/measure_daq_slots.py on the shipped DVIS-DAQ checkpoint (2 held-out videos of 6 frames, chunks of
2 frames): per-call bookkeeping that must hold whatever the model predicts, the summary it prints, and the
one-line refusal of a checkpoint that is not DVIS-DAQ's."""

import json
import os
import subprocess
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = os.path.join(_REPO, "scripts", "measure_daq_slots.py")


def _run(*flags):
  return subprocess.run([sys.executable, _SCRIPT, *flags], capture_output=True, text=True, timeout=600,
                        cwd=_REPO)


def test_slots_per_call_add_up(tmp_path):
  out = _run("--checkpoint", os.path.join(_REPO, "assets", "synthetic_tiny_dvis_daq"), "--videos", "2",
             "--frames", "6", "--long_frames", "0", "--chunk_size", "2", "--workdir", str(tmp_path / "w"),
             "--out", str(tmp_path / "slots.json"))
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  report = json.loads((tmp_path / "slots.json").read_text())
  assert report["num_slots"] == 256 and report["chunk_size"] == 2 and "long" not in report
  held_out = report["held-out"]
  videos = held_out["per_video"]
  assert held_out["videos"] == len(videos) == 2 and held_out["track_calls"] == 6
  calls = []
  for video in videos:
    assert video["frames"] == 6 and len(video["calls"]) == 3 and video["dropped"] == 0
    # A call occupies the sequences live when it starts (those live after the previous call: the dead
    # ones are released in between) plus those it creates; the created ones add up to the video's.
    live_before = 0
    for call in video["calls"]:
      assert call["slots_used"] == live_before + call["created"], video
      assert 0 <= call["live_end"] <= call["slots_used"] <= report["num_slots"]
      live_before = call["live_end"]
    assert sum(c["created"] for c in video["calls"]) == video["created"] > 0
    calls += video["calls"]
  assert held_out["max_slots_used_per_call"] == max(c["slots_used"] for c in calls)
  assert held_out["max_created_per_call"] == max(c["created"] for c in calls)
  assert held_out["max_live"] == max(c["live_end"] for c in calls)
  assert held_out["max_created_per_video"] == max(v["created"] for v in videos)
  assert held_out["mean_created_per_video"] == sum(v["created"] for v in videos) / 2
  assert held_out["dropped"] == 0
  printed = json.loads(out.stdout.split("held-out: ", 1)[1].splitlines()[0])
  assert printed == {k: v for k, v in held_out.items() if k != "per_video"}


def test_refuses_a_checkpoint_that_is_not_dvis_daq(tmp_path):
  out = _run("--checkpoint", os.path.join(_REPO, "assets", "synthetic_tiny"), "--videos", "1",
             "--long_frames", "0", "--workdir", str(tmp_path / "w"))
  assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
  assert "not a trained 'dvis_daq' checkpoint (association.method 'o2vis')" in out.stderr
  assert not os.path.exists(tmp_path / "w"), "nothing generated before the refusal"
