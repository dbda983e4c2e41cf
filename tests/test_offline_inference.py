"""Offline video inference (`VideoPredictor.from_config(..., offline=True)`; reference/refiner.md
"Inputs" and "Inference scoring"): the online chunks, one refiner call over the video, masks chunk by
chunk, LOMM's max(refiner, online) scores.

The tiny config with random weights (a random refiner too). References: the same predictor in one chunk,
`refiner.refine` on the inputs the predictor collected, and NumPy (float64) for the softmax / max / top-k
and the mask resize.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

from o2vis_jax import inference
from shared_inputs import moving_square_video
from o2vis_jax import refiner as refiner_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HEIGHT, _WIDTH, _FRAMES = 48, 80, 7     # -> resized 64x107, padded 64x128, masks 16x32
_MAX_NUM = 10


def _tiny_config():
  from configs import tiny
  config = tiny.get_config()
  if config.get("refiner") is None:   # a config from before the refiner section
    with config.unlocked():
      config.refiner = refiner_lib.default_config()
      refiner_lib.tiny(config.refiner)
  return config


@pytest.fixture(scope="module")
def offline_run():
  config = _tiny_config()
  params = inference.init_params(config, seed=0, offline=True)
  assert set(params) == {"segmenter", "tracker", "refiner"}
  video = moving_square_video(_HEIGHT, _WIDTH, _FRAMES)
  predictors = {c: inference.VideoPredictor.from_config(config, params, chunk_size=c, offline=True)
                for c in (2, 7)}
  predictions = {c: p.predict(iter(video), _HEIGHT, _WIDTH, keep_frame_logits=True,
                              keep_mask_logits=True, keep_refiner_inputs=True)
                 for c, p in predictors.items()}
  return config, params, predictors, predictions


def _masks(prediction):
  return np.stack([prediction.slot_masks(t) for t in range(prediction.num_frames)])


def test_offline_chunked_equals_one_chunk(offline_run):
  _, _, predictors, predictions = offline_run
  got, want = predictions[2], predictions[7]
  assert got.num_frames == want.num_frames == _FRAMES
  # float32 with different batch sizes (XLA kernels): ~1e-6; a lost frame or carry is O(1).
  for name in ("instance_embeds", "frame_embeds", "mask_features"):
    np.testing.assert_allclose(got.refiner_inputs[name], want.refiner_inputs[name], atol=2e-4,
                               rtol=1e-4, err_msg=f"refiner input {name}: chunk 2 vs one chunk")
  np.testing.assert_allclose(got.frame_logits, want.frame_logits, atol=2e-4, rtol=1e-4)
  np.testing.assert_allclose(got.refiner_logits, want.refiner_logits, atol=2e-4, rtol=1e-4)
  np.testing.assert_allclose(got.frame_mask_logits, want.frame_mask_logits, atol=5e-4, rtol=1e-4)
  got_masks, want_masks = _masks(got), _masks(want)
  assert got_masks.shape == (_FRAMES, 8, _HEIGHT, _WIDTH)
  assert np.mean(got_masks != want_masks) < 1e-4, "refined masks: chunk 2 vs one chunk"
  # (Random weights: the refiner's masks cover ~0.4% of the pixels, the same in every slot.)
  assert want_masks.any() and not want_masks.all(), "degenerate test: masks all empty or all full"
  np.testing.assert_allclose([i["score"] for i in got.instances(_MAX_NUM)],
                             [i["score"] for i in want.instances(_MAX_NUM)], rtol=1e-4)
  # One compilation of the chunk function and one of the mask function serve every video length.
  short_video = moving_square_video(_HEIGHT, _WIDTH, _FRAMES)[:3]
  short = predictors[2].predict(iter(short_video), _HEIGHT, _WIDTH, keep_mask_logits=True)
  assert short.num_frames == 3 and predictors[2].num_compilations == 2


def _softmax(logits):
  logits = np.asarray(logits, np.float64)
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_offline_scores_are_max_of_refiner_and_online(offline_run):
  config, params, _, predictions = offline_run
  prediction = predictions[2]
  inputs = prediction.refiner_inputs
  refined = refiner_lib.refine(config, params["refiner"], inputs["instance_embeds"],
                               inputs["frame_embeds"], inputs["mask_features"])
  np.testing.assert_allclose(prediction.refiner_logits, refined["pred_logits"], atol=1e-4, rtol=1e-4)
  refiner_probs = _softmax(refined["pred_logits"])[:, :-1]
  online_probs = _softmax(prediction.frame_logits.mean(0))[:, :-1]
  scores = np.maximum(refiner_probs, online_probs)                              # [S, K]
  # Not degenerate: each source gives the maximum somewhere.
  assert (refiner_probs > online_probs).any() and (online_probs > refiner_probs).any()
  flat = scores.reshape(-1)
  order = np.argsort(-flat, kind="stable")[:_MAX_NUM]   # flat index = slot * K + class
  instances = prediction.instances(_MAX_NUM)
  np.testing.assert_allclose([i["score"] for i in instances], flat[order], rtol=1e-4)
  num_classes = scores.shape[1]
  # (slot, label) where the score is not within float32 noise of another one.
  for inst, index in zip(instances, order):
    if np.sort(np.abs(flat - flat[index]))[1] > 1e-5:
      assert (inst["identity"], inst["label"]) == (index // num_classes, index % num_classes)
  assert all(len(i["segmentations"]) == _FRAMES for i in instances)


def test_offline_masks_are_the_refiners_resized(offline_run):
  config, params, predictors, predictions = offline_run
  prediction = predictions[2]
  inputs = prediction.refiner_inputs
  masks = np.asarray(refiner_lib.refine(config, params["refiner"], inputs["instance_embeds"],
                                        inputs["frame_embeds"], inputs["mask_features"])["pred_masks"])
  assert masks.shape == (_FRAMES, 8, 16, 32)
  np.testing.assert_allclose(prediction.frame_mask_logits, masks, atol=5e-4, rtol=1e-4)
  m_y, m_x = inference.mask_resize_matrices(16, 32, predictors[2].geometry(_HEIGHT, _WIDTH))
  full = np.einsum("yh,tnhw,xw->tnyx", m_y.astype(np.float64), masks.astype(np.float64),
                   m_x.astype(np.float64))
  decided = np.abs(full) > 1e-3
  assert decided.mean() > 0.99 and (full[decided] > 0).sum() > 100, "degenerate test"
  got = _masks(prediction)
  np.testing.assert_array_equal(got[decided], (full > 0)[decided])


def test_offline_refuses_without_refiner_or_embeds(offline_run):
  config, params, _, _ = offline_run
  online_params = {k: v for k, v in params.items() if k != "refiner"}
  with pytest.raises(inference.OfflineInferenceError, match=r"params\['refiner'\]"):
    inference.VideoPredictor.from_config(config, online_params, offline=True)
  # A method whose frames give no pred_embeds (MinVIS-style training-free association).
  baseline = config.copy_and_resolve_references()
  baseline.association.method = "training_free"
  with pytest.raises(inference.OfflineInferenceError, match="pred_embeds"):
    inference.VideoPredictor.from_config(baseline, params, offline=True)
  # Online still runs on the same params.
  assert not inference.VideoPredictor.from_config(config, params).offline


def _run_infer(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "o2vis_jax_test_jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  return subprocess.run([sys.executable, os.path.join(_ROOT, "scripts", "infer.py"), *args],
                        capture_output=True, text=True, timeout=600, env=env, cwd=_ROOT)


def test_infer_script_offline_end_to_end(tmp_path):
  frames = tmp_path / "frames"
  frames.mkdir()
  for t, frame in enumerate(moving_square_video(_HEIGHT, _WIDTH, _FRAMES)[:3]):
    Image.fromarray(frame).save(frames / f"{t:05d}.png")
  output = tmp_path / "r.json"
  run = _run_infer("--offline", "--config", os.path.join(_ROOT, "configs", "tiny.py"), "--input",
                   str(frames), "--output", str(output), "--chunk_size", "2", "--no_progress")
  assert run.returncode == 0, run.stderr[-3000:]
  with open(output) as f:
    results = json.load(f)
  assert len(results) == _MAX_NUM
  assert all(len(r["segmentations"]) == 3 and r["video_id"] == 1 for r in results)
  scores = [r["score"] for r in results]
  assert scores == sorted(scores, reverse=True)
