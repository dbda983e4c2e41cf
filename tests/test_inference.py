"""Video inference (`o2vis_jax.inference`): chunking, video-level top-k, mask geometry, RLE, results.

References: PyTorch (`F.interpolate`, `softmax`, `topk`) for REFERENCE.md 8.3-8.4, recorded by
scripts/make_torch_fixtures.py, a NumPy bilinear resize checked against them, a one-shot run for the
chunked scan, and hand-made chunk models whose outputs are known.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from o2vis_jax import association, inference, video_io
from o2vis_jax.evaluation import rle as rle_lib
from shared_inputs import moving_square_video


# --------------------------------------------------------------------------------------------------
# Video-level scores: REFERENCE.md 8.3-8.4 in PyTorch (mean logits, softmax, no-object dropped, topk).

TORCH = os.path.join(os.path.dirname(__file__), "fixtures", "torch_references.npz")


@pytest.mark.parametrize("max_num", [1, 10, 24])
def test_video_topk_matches_torch(max_num):
  fixture = np.load(TORCH)
  frame_logits = fixture[f"topk_{max_num}/frame_logits"]          # T=9, N=6, K=4
  scores, labels, slots = inference.video_topk(frame_logits.mean(0), max_num)
  np.testing.assert_allclose(scores, fixture[f"topk_{max_num}/scores"], rtol=1e-12)
  np.testing.assert_array_equal(labels, fixture[f"topk_{max_num}/labels"])
  np.testing.assert_array_equal(slots, fixture[f"topk_{max_num}/slots"])


def test_video_topk_hand_computed_one_slot_two_classes():
  # slot 1: logits (log 6, log 3, log 1) -> probs (0.6, 0.3, 0.1 no-object); slot 0: all no-object.
  mean_logits = np.log(np.array([[1e-3, 1e-3, 1.0], [6.0, 3.0, 1.0]]))
  scores, labels, slots = inference.video_topk(mean_logits, 3)
  np.testing.assert_allclose(scores[:2], [0.6, 0.3])
  np.testing.assert_array_equal(labels, [0, 1, 0])
  np.testing.assert_array_equal(slots, [1, 1, 0])


# --------------------------------------------------------------------------------------------------
# Mask geometry: resize to padded input, crop, resize to original, threshold (REFERENCE.md 8.4).

def _bilinear(x, height, width):
  """PyTorch `F.interpolate(bilinear, align_corners=False)` of x [..., h, w], written pixel by pixel: the
  source coordinate (dst + 0.5) * in / out - 0.5, clamped at 0; the right / lower neighbour clamped to the
  last pixel."""
  def axis(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(int), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, src - low
  y0, y1, wy = axis(x.shape[-2], height)
  x0, x1, wx = axis(x.shape[-1], width)
  rows = x[..., y0, :] * (1 - wy)[:, None] + x[..., y1, :] * wy[:, None]
  return rows[..., x0] * (1 - wx) + rows[..., x1] * wx


def _reference_masks(logits, geometry):
  """REFERENCE.md 8.4: resize to the padded input, crop to the resized image, resize to the original."""
  g = geometry
  x = _bilinear(logits, g.padded_height, g.padded_width)[..., :g.resized_height, :g.resized_width]
  return _bilinear(x, g.height, g.width)


@pytest.mark.parametrize("height,width", [(50, 70), (20, 30), (37, 23)])
def test_mask_resize_crop_matches_torch(height, width):
  fixture = np.load(TORCH)
  g = video_io.FrameGeometry.for_video(height, width, 32, 32)
  mask_h, mask_w = g.padded_height // 4, g.padded_width // 4
  logits = fixture[f"resize_{height}x{width}/logits"]
  assert logits.shape == (3, mask_h, mask_w)
  want = fixture[f"resize_{height}x{width}/out"]
  # The NumPy reference used below on model outputs is PyTorch's resize.
  np.testing.assert_allclose(_reference_masks(logits, g), want, rtol=0, atol=1e-12)
  m_y, m_x = inference.mask_resize_matrices(mask_h, mask_w, g)
  np.testing.assert_allclose(np.einsum("yh,nhw,xw->nyx", m_y, logits, m_x), want, atol=1e-5)
  packed = jax.jit(inference.binary_masks)(jnp.asarray(logits[None], jnp.float32), m_y, m_x)
  got = inference.unpack_masks(np.asarray(packed), width)[0]
  assert got.shape == (3, height, width)
  decided = np.abs(want) > 1e-4            # away from the threshold float32 rounding cannot flip
  assert decided.mean() > 0.99
  np.testing.assert_array_equal(got[decided], (want > 0)[decided])


# --------------------------------------------------------------------------------------------------
# RLE.

@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 13), st.integers(1, 13), st.integers(0, 2 ** 31 - 1))
def test_rle_round_trip(num, height, width, seed):
  rng = np.random.default_rng(seed)
  masks = rng.random((num, height, width)) < rng.random()
  rles = inference.encode_rle(masks)
  assert len(rles) == num
  for mask, rle in zip(masks, rles):
    assert isinstance(rle["counts"], str) and rle["size"] == [height, width]
    json.dumps(rle)
    np.testing.assert_array_equal(rle_lib.decode_mask(rle), mask)


def test_results_format_and_category_mapping():
  masks = np.zeros((2, 3, 4, 5), bool)     # [N, T, H, W]
  masks[1, :, 1:3, 2:4] = True
  mean_logits = np.log(np.array([[1.0, 1.0, 8.0], [7.0, 2.0, 1.0]]))
  o2vis = association.get("o2vis")
  prediction = inference.VideoPrediction(
      mean_logits=mean_logits, slot_rles=[inference.encode_rle(masks[n]) for n in range(2)], height=4,
      width=5, score_instances=lambda k: o2vis.score_instances(
          None, {"logit_sum": 3 * mean_logits, "count": 3}, k))
  assert prediction.num_frames == 3
  instances = prediction.instances(max_num=2)
  assert [(i["identity"], i["label"]) for i in instances] == [(1, 0), (1, 1)]
  results = inference.to_results(instances, video_id=17, category_ids=[3, 9])
  loaded = json.loads(json.dumps(results))
  assert [r["category_id"] for r in loaded] == [3, 9]
  assert loaded[0]["video_id"] == 17 and loaded[0]["score"] == pytest.approx(0.7)
  assert len(loaded[0]["segmentations"]) == 3
  np.testing.assert_array_equal(rle_lib.decode_mask(loaded[0]["segmentations"][2]), masks[1, 2])
  assert [r["category_id"] for r in inference.to_results(instances, 17)] == [1, 2]
  np.testing.assert_array_equal(prediction.slot_masks(1), masks[:, 1])
  every_slot = prediction.slot_instances()      # best class per slot, for drawing all tracks
  assert [(i["identity"], i["label"]) for i in every_slot] == [(0, 0), (1, 0)]
  np.testing.assert_allclose([i["score"] for i in every_slot], [0.1, 0.7])


# --------------------------------------------------------------------------------------------------
# The chunk loop with a hand-made model: the carry counts valid frames and sums image means, so
# any frame dropped, repeated, or a padded frame that leaks into the carry changes the outputs.

_N, _K = 3, 2


def _toy_chunk_model(params, carry, images, pixel_valid, frame_valid):
  del pixel_valid

  def step(carry, frame):
    image, valid = frame
    mean = image.mean() / 255.0
    new = dict(count=carry["count"] + 1.0, total=carry["total"] + mean)
    new = jax.tree.map(lambda a, b: jnp.where(valid, a, b), new, carry)
    logits = (params["w"][:, None] * new["total"] / new["count"]
              + jnp.arange(_K + 1)[None] * new["count"] * 0.1)
    h, w = image.shape[0] // 4, image.shape[1] // 4
    yy = jnp.arange(h)[:, None] / h
    masks = (params["w"][:, None, None] * (yy - mean) + 0.01 * jnp.arange(w)[None] - 0.05
             + jnp.zeros((_N, h, w)))
    return new, dict(pred_logits=logits, pred_masks=masks)

  return jax.lax.scan(step, carry, (images, frame_valid))


def _toy_init(params, images, pixel_valid):
  del params, images, pixel_valid
  return dict(count=jnp.zeros(()), total=jnp.zeros(()))


def _toy_predictor(chunk_size):
  return inference.VideoPredictor(dict(w=jnp.array([1.0, -2.0, 0.5])), _toy_chunk_model, _toy_init,
                                  chunk_size=chunk_size, min_size=32, size_divisibility=32,
                                  pad_value=(0.0, 0.0, 0.0))


def test_toy_chunked_equals_one_shot_and_hand_computed():
  frames = [np.full((24, 40, 3), 20 * t, np.uint8) for t in range(7)]
  results = {c: _toy_predictor(c).predict(iter(frames), 24, 40, keep_frame_logits=True)
             for c in (2, 5, 7)}
  # 24x40 -> 32x53 (32 * 40 / 24 = 53.3), padded with 0 to 32x64: the image mean is scaled by 53/64.
  means = np.array([20.0 * t / 255.0 * 53 / 64 for t in range(7)])
  count = np.arange(1, 8, dtype=np.float64)
  w = np.array([1.0, -2.0, 0.5])
  want = (w[None, :, None] * (np.cumsum(means) / count)[:, None, None]
          + np.arange(_K + 1)[None, None] * count[:, None, None] * 0.1)
  for c, prediction in results.items():
    np.testing.assert_allclose(prediction.frame_logits, want, rtol=1e-5, err_msg=f"chunk {c}")
    np.testing.assert_allclose(prediction.mean_logits, want.mean(0), rtol=1e-5)
    assert prediction.num_frames == 7 and prediction.slot_rles[2][6]["size"] == [24, 40]
    assert prediction.slot_rles == results[7].slot_rles, f"chunk {c}: masks differ from one-shot"


def test_predict_dataset_maps_categories_and_checks_frames(tmp_path):
  from PIL import Image
  dataset = dict(categories=[dict(id=9, name="b"), dict(id=4, name="a"), dict(id=7, name="c")],
                 videos=[])
  for v, length in enumerate((3, 4)):
    names = []
    for t in range(length):
      name = f"clip{v}/{t:05d}.png"
      (tmp_path / f"clip{v}").mkdir(exist_ok=True)
      Image.fromarray(np.full((24, 40, 3), 30 * t + v, np.uint8)).save(tmp_path / name)
      names.append(name)
    dataset["videos"].append(dict(id=10 + v, height=24, width=40, length=length, file_names=names))
  results = inference.predict_dataset(_toy_predictor(2), dataset, str(tmp_path), max_num=4)
  assert [r["video_id"] for r in results] == [10] * 4 + [11] * 4
  assert {r["category_id"] for r in results} <= {4, 7}   # labels 0, 1 of K=2 -> the lowest ids
  assert [len(r["segmentations"]) for r in results] == [3] * 4 + [4] * 4
  dataset["videos"][1]["file_names"].append("clip1/99999.png")
  with pytest.raises(video_io.VideoReadError, match="99999.png"):
    inference.predict_dataset(_toy_predictor(2), dataset, str(tmp_path))


# --------------------------------------------------------------------------------------------------
# The real model (tiny config, random weights): segmenter + trackers, and a baseline.
# One predictor per chunk size for the whole module: each is one compilation.

_HEIGHT, _WIDTH, _FRAMES = 48, 80, 7     # -> resized 64x107, padded 64x128, masks 16x32


@pytest.fixture(scope="module")
def video():
  return moving_square_video(_HEIGHT, _WIDTH, _FRAMES)


@pytest.fixture(scope="module")
def tiny_model():
  from configs import tiny
  config = tiny.get_config()
  return config, inference.init_params(config, seed=0)


@pytest.fixture(scope="module")
def tracker_predictions(tiny_model, video):
  config, params = tiny_model
  predictors = {c: inference.VideoPredictor.from_config(config, params, chunk_size=c)
                for c in (2, 5, 7)}
  predictions = {c: p.predict(iter(video), _HEIGHT, _WIDTH, keep_frame_logits=True,
                              keep_mask_logits=True) for c, p in predictors.items()}
  return predictors, predictions


def _assert_same_prediction(got, want, what):
  # float32 through a recurrent memory, with batch sizes (hence XLA kernels) that differ: ~1e-5;
  # a lost or repeated frame, or a carry not passed on, changes the logits by O(1).
  np.testing.assert_allclose(got.frame_logits, want.frame_logits, atol=2e-4, rtol=1e-4,
                             err_msg=f"{what}: class logits")
  np.testing.assert_allclose(got.mean_logits, want.mean_logits, atol=2e-4, rtol=1e-4)
  if want.frame_mask_logits is not None:
    np.testing.assert_allclose(got.frame_mask_logits, want.frame_mask_logits, atol=5e-4, rtol=1e-4,
                               err_msg=f"{what}: mask logits")
  assert got.num_frames == want.num_frames == _FRAMES
  got_masks = np.stack([got.slot_masks(t) for t in range(_FRAMES)])
  want_masks = np.stack([want.slot_masks(t) for t in range(_FRAMES)])
  assert got_masks.shape == (_FRAMES, len(want.slot_rles), _HEIGHT, _WIDTH)
  # Thresholding at 0 can flip a pixel whose logit is within float32 rounding of 0.
  assert np.mean(got_masks != want_masks) < 1e-4, f"{what}: masks differ"
  return want_masks


def test_chunked_equals_one_shot_trackers(tracker_predictions, video):
  predictors, predictions = tracker_predictions
  # One compilation serves every video length: 7 frames (4 chunks of 2) and then 3 frames.
  short = predictors[2].predict(iter(video[:3]), _HEIGHT, _WIDTH, keep_frame_logits=True,
                                keep_mask_logits=True)
  assert predictors[2].num_compilations == 1 and short.num_frames == 3
  np.testing.assert_allclose(short.frame_logits, predictions[2].frame_logits[:3], atol=1e-6)
  for chunk in (2, 5):
    _assert_same_prediction(predictions[chunk], predictions[7], f"trackers, chunk {chunk}")
  for chunk in (2, 5):
    got = [(i["identity"], i["label"]) for i in predictions[chunk].instances(5)]
    want_scores = [i["score"] for i in predictions[7].instances(5)]
    np.testing.assert_allclose([i["score"] for i in predictions[chunk].instances(5)], want_scores,
                               rtol=1e-4)
    assert len(got) == 5
  # The streaming scoring (per chunk) equals the method's scoring of the whole outputs.
  config = predictors[2].config
  whole = association.video_instances(config, {"pred_logits": predictions[7].frame_logits}, 5)
  streamed = predictions[2].instances(5)
  assert [(i["slot"], i["label"]) for i in whole] == [(i["identity"], i["label"]) for i in streamed]
  np.testing.assert_allclose([i["score"] for i in whole], [i["score"] for i in streamed], rtol=1e-4)


def test_padded_frames_change_nothing(tiny_model, tracker_predictions, video):
  config, params = tiny_model
  predictors, _ = tracker_predictions
  predictor = predictors[5]
  geometry = predictor.geometry(_HEIGHT, _WIDTH)
  step = predictor._step_fn(geometry, True)   # the compiled chunk function of the predictions
  pixel_valid = jnp.asarray(predictor.pixel_valid(geometry))
  pad = tuple(config.model.pixel_mean)
  first = next(video_io.iter_chunks(iter(video[:5]), geometry, 5, pad))
  carry = predictor.init_carry(params, first.images, pixel_valid)
  carry, _ = step(params, carry, jnp.asarray(first.images), pixel_valid, jnp.asarray(first.frame_valid))
  # A chunk of padding only (noise images, all invalid) leaves the memory exactly as it was.
  noise = np.random.default_rng(1).uniform(0, 255, first.images.shape).astype(np.float32)
  same, _ = step(params, carry, jnp.asarray(noise), pixel_valid, jnp.zeros((5,), bool))
  jax.tree.map(np.testing.assert_array_equal, same, carry)
  # Two real frames followed by three padded ones: what the padding holds does not matter.
  last = next(video_io.iter_chunks(iter(video[5:]), geometry, 5, pad))
  noisy = last.images.copy()
  noisy[2:] = noise[2:]
  a_carry, a_out = step(params, carry, jnp.asarray(last.images), pixel_valid,
                        jnp.asarray(last.frame_valid))
  b_carry, b_out = step(params, carry, jnp.asarray(noisy), pixel_valid, jnp.asarray(last.frame_valid))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), a_carry, b_carry)
  np.testing.assert_allclose(a_out["pred_logits"][:2], b_out["pred_logits"][:2], atol=1e-5)


@pytest.fixture(scope="module")
def baseline_predictions(tiny_model, video):
  from configs import tiny
  config = tiny.get_config()
  config.association.method = "training_free"
  config.inference.max_num = 3
  _, params = tiny_model
  predictors = {c: inference.VideoPredictor.from_config(config, params, chunk_size=c) for c in (3, 7)}
  predictions = {c: p.predict(iter(video), _HEIGHT, _WIDTH, keep_frame_logits=True,
                              keep_mask_logits=True) for c, p in predictors.items()}
  return predictors, predictions


def test_baseline_chunked_equals_one_shot(baseline_predictions):
  predictors, predictions = baseline_predictions
  assert predictors[3].max_num == 10   # MinVIS keeps 10 whatever MAX_NUM says (REFERENCE.md 11)
  masks = _assert_same_prediction(predictions[3], predictions[7], "baseline, chunk 3")
  assert 0.01 < masks.mean() < 0.99, "degenerate test: masks all empty or all full"


def test_mask_logits_reach_the_original_size(baseline_predictions):
  """The RLEs are REFERENCE.md 8.4 (in PyTorch) applied to the model's low-resolution mask logits."""
  predictors, predictions = baseline_predictions
  prediction = predictions[3]
  geometry = predictors[3].geometry(_HEIGHT, _WIDTH)
  assert (geometry.padded_height, geometry.padded_width) == (64, 128)
  logits = prediction.frame_mask_logits
  assert logits.shape == (_FRAMES, 8, 16, 32)
  full = np.stack([_reference_masks(logits[t].astype(np.float64), geometry) for t in range(_FRAMES)])
  masks = np.stack([prediction.slot_masks(t) for t in range(_FRAMES)])
  assert 0.01 < masks.mean() < 0.99
  decided = np.abs(full) > 1e-4
  assert decided.mean() > 0.99
  np.testing.assert_array_equal(masks[decided], (full > 0)[decided])


def test_results_of_a_video_round_trip(tracker_predictions, tmp_path):
  from o2vis_jax.evaluation import results as results_lib
  _, predictions = tracker_predictions
  instances = predictions[5].instances(4)
  results = inference.to_results(instances, video_id=3, category_ids=[11, 12, 13, 14, 15])
  path = tmp_path / "results.json"
  results_lib.write_results(path, results)
  results_lib.write_results_zip(tmp_path / "results.zip", results)
  # The evaluator's strict reader accepts the file (frame count, mask size, ids checked).
  from o2vis_jax.evaluation.ground_truth import load_ground_truth
  ground_truth = load_ground_truth(dict(
      videos=[dict(id=3, width=_WIDTH, height=_HEIGHT, length=_FRAMES,
                   file_names=[f"v/{t:05d}.jpg" for t in range(_FRAMES)])],
      categories=[dict(id=i, name=f"c{i}") for i in range(11, 16)], annotations=[]))
  assert len(results_lib.load_results(str(path), ground_truth)) == 4
  for loaded in (results_lib.read_results_file(path),
                 results_lib.read_results_file(tmp_path / "results.zip")):
    assert len(loaded) == 4
    for entry, inst in zip(loaded, instances):
      assert set(entry) == {"video_id", "category_id", "score", "segmentations"}
      assert entry["video_id"] == 3 and entry["category_id"] == 11 + inst["label"]
      assert entry["score"] == pytest.approx(inst["score"])
      assert len(entry["segmentations"]) == _FRAMES
      assert entry["segmentations"][0]["size"] == [_HEIGHT, _WIDTH]


def test_infer_script_names_an_unreadable_frame(tmp_path):
  import os
  import subprocess
  import sys
  frames = tmp_path / "frames"
  frames.mkdir()
  (frames / "00000.jpg").write_bytes(b"not a jpeg")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = subprocess.run([sys.executable, os.path.join(root, "scripts", "infer.py"), "--config",
                        os.path.join(root, "configs", "tiny.py"), "--input", str(frames),
                        "--output", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert run.returncode == 2, run.stderr[-2000:]
  assert "00000.jpg" in run.stderr and "cannot read frame" in run.stderr
  assert not (tmp_path / "r.json").exists()
