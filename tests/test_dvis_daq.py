"""DVIS-DAQ (`association/dvis_daq`, models/dvis_daq.py) against the AUTHORS' code: tests/fixtures/
dvis_daq_reference.npz, written by scripts/make_dvis_daq_fixtures.py from DVIS_Plus/DVIS_DAQ
(`VideoInstanceCutter.inference` driven by `run_window_inference` and `inference_video_vis`; float64,
C=16, 4 heads, FFN 24, K=3, 2 layers, N=6, masks 5x4) on three videos with births, kick-outs and
re-emergence: YTVIS validity (T=23), OVIS validity (T=17), kick-out after 3 invalid frames (T=16)."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from o2vis_jax import association, checkpoint_conversion as cc, config_validation
from o2vis_jax.association.dvis_daq import scoring, step as step_lib

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "dvis_daq_reference.npz")
HEADS = 4
CASES = ("ytvis", "ovis", "kick3")
INPUTS = ("embeds", "logits", "masks", "mask_features")


@pytest.fixture(scope="module")
def reference():
  with np.load(FIXTURE) as archive:
    return {k: archive[k] for k in archive.files}


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def converted(reference, num_slots=40, **options):
  state_dict = {"tracker." + k[len("state/"):]: v for k, v in reference.items() if k.startswith("state/")}
  state_dict["sem_seg_head.predictor.query_feat.weight"] = reference["query_feat"]
  config, params = cc.association_from_reference("dvis_daq", state_dict, HEADS)
  config.association.dvis_daq.update(num_slots=num_slots, **options)
  return config, params


def case_config(reference, case, num_slots=40):
  options = {k.split("/")[-1]: v.item() for k, v in reference.items() if k.startswith(f"{case}/options/")}
  return converted(reference, num_slots, **options)


def frames_of(reference, case):
  return {k: jnp.asarray(reference[f"{case}/{k}"]) for k in INPUTS}


_TRACKED = {}


def tracked(reference, case, num_slots=40):
  """(config, params, outputs) of one `track` call on a fixture video (cached: compiling is the cost)."""
  key = (case, num_slots)
  if key not in _TRACKED:
    config, params = case_config(reference, case, num_slots)
    _TRACKED[key] = (config, params, association.track(config, params, frames_of(reference, case)))
  return _TRACKED[key]


@pytest.mark.parametrize("case", CASES)
def test_matches_the_authors_code(reference, x64, case):
  config, params, out = tracked(reference, case)
  stored = reference[f"{case}/seq_stored"]            # [M, T]
  m, num_frames = stored.shape
  valid = np.asarray(out["slot_valid"])
  # The same live sequences at every frame, in creation order (slot i = the i-th sequence created).
  np.testing.assert_array_equal(valid[:, :m], stored.T, err_msg=f"{case}: stored frames per sequence")
  assert not valid[:, m:].any(), f"{case}: more sequences than the reference's {m}"
  np.testing.assert_array_equal(np.asarray(out["slot_appearance"])[:, :m], reference[f"{case}/seq_appearance"].T)
  live = np.asarray(out["live"])[:, :m]
  dead = reference[f"{case}/seq_dead"].astype(bool)
  np.testing.assert_array_equal(live[-1], stored[:, -1], err_msg=f"{case}: live after the last frame")
  assert (dead == ~live[-1]).all()
  np.testing.assert_array_equal(np.asarray(out["slot_ids"])[-1, :m], np.arange(m))
  mask = stored.T[..., None]
  np.testing.assert_allclose(np.where(mask, np.asarray(out["pred_logits"])[:, :m], 0),
                             reference[f"{case}/seq_logits"].transpose(1, 0, 2), rtol=0, atol=1e-6)
  # The authors store masks as float32 (to_store='cpu'): relative 1e-6 covers their rounding.
  np.testing.assert_allclose(np.where(mask[..., None], np.asarray(out["pred_masks"])[:, :m], 0),
                             reference[f"{case}/seq_masks"].transpose(1, 0, 2, 3), rtol=1e-6, atol=1e-6)
  assert (np.asarray(out["pred_masks"])[~valid] == step_lib.EMPTY_MASK_LOGIT).all()
  assert int(out["num_dropped"][-1]) == 0


@pytest.mark.parametrize("case", CASES)
def test_video_scoring_matches_the_authors_top_k(reference, x64, case):
  config, params, out = tracked(reference, case)
  method = association.get("dvis_daq")
  accumulator = method.score_update(config, method.score_init(config, 40, 3),
                                    {k: np.asarray(out[k]) for k in method.score_inputs})
  kept = reference[f"{case}/kept"]
  means = scoring.mean_logits(accumulator)
  np.testing.assert_allclose(means[kept], reference[f"{case}/kept_logits"], rtol=0, atol=1e-6)
  instances = association.video_instances(config, out)
  assert len(instances) == 20
  ours = sorted((i["slot"], i["label"]) for i in instances)
  theirs = sorted(zip(reference[f"{case}/top_ids"].tolist(), reference[f"{case}/top_labels"].tolist()))
  assert ours == theirs, f"{case}: top-20 (sequence, class) differ"
  by_pair = {(i["slot"], i["label"]): i["score"] for i in instances}
  for sid, label, score in zip(reference[f"{case}/top_ids"], reference[f"{case}/top_labels"],
                               reference[f"{case}/top_scores"]):
    assert abs(by_pair[(int(sid), int(label))] - score) < 1e-6
  scores = [i["score"] for i in instances]
  assert scores == sorted(scores, reverse=True)
  # Masks: the authors' (bilinear to the same size = identity) binarised full masks.
  masks = np.asarray(out["pred_masks"])
  for inst, sid, label, top_mask in zip(instances, reference[f"{case}/top_ids"], reference[f"{case}/top_labels"],
                                        reference[f"{case}/top_masks"]):
    np.testing.assert_array_equal(masks[:, int(sid)] > 0, top_mask)


def test_chunked_equals_one_call_and_padded_frames_change_nothing(reference, x64):
  case = "ytvis"
  config, params, whole = tracked(reference, case)
  frames = frames_of(reference, case)
  num_frames = frames["embeds"].shape[0]
  state = association.init_state(config, params, frames)
  outputs = []
  for start in range(0, num_frames, 5):
    chunk = {k: v[start:start + 5] for k, v in frames.items()}
    pad = 5 - chunk["embeds"].shape[0]
    chunk = {k: jnp.concatenate([v, jnp.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in chunk.items()}
    chunk["valid"] = jnp.arange(5) < 5 - pad
    # a padded frame in the middle of a chunk, too
    if start == 5:
      chunk = {k: jnp.concatenate([v[:2], jnp.zeros_like(v[:1]), v[2:4]]) for k, v in chunk.items()}
      chunk["valid"] = jnp.asarray([True, True, False, True, True])
      state, out = association.run_chunk(config, params, state, chunk)
      out = {k: np.concatenate([np.asarray(v)[:2], np.asarray(v)[3:]]) for k, v in out.items()}
      state, rest = association.run_chunk(config, params, state, {
          **{k: jnp.concatenate([v[9:10], jnp.zeros((4,) + v.shape[1:], v.dtype)]) for k, v in frames.items()},
          "valid": jnp.asarray([True, False, False, False, False])})
      out = {k: np.concatenate([out[k], np.asarray(v)[:1]]) for k, v in rest.items()}
      outputs.append(out)
      continue
    state, out = association.run_chunk(config, params, state, chunk)
    outputs.append({k: np.asarray(v)[:5 - pad] for k, v in out.items()})
  chunked = {k: np.concatenate([o[k] for o in outputs]) for k in whole}
  for key in whole:
    np.testing.assert_allclose(chunked[key], np.asarray(whole[key]), rtol=0, atol=1e-12, err_msg=key)


def test_full_slot_table(reference, x64):
  """34 sequences in 'ytvis': with 20 slots the 21st on is dropped, counted, and scoring says so."""
  config, params = case_config(reference, "ytvis", num_slots=20)
  frames = frames_of(reference, "ytvis")
  out = association.track(config, params, frames)
  stored = reference["ytvis/seq_stored"]
  dropped = np.asarray(out["num_dropped"])
  # Until the table fills the slots hold exactly the reference's first 20 sequences.
  full_at = int(np.argmax(dropped > 0))
  np.testing.assert_array_equal(np.asarray(out["slot_valid"])[:full_at], stored[:20, :full_at].T)
  assert dropped[-1] > 0 and (np.diff(dropped) >= 0).all()
  with pytest.raises(scoring.SlotTableFull, match=r"config\.association\.dvis_daq\.num_slots=20"):
    association.video_instances(config, out)
  config.association.dvis_daq.on_overflow = "drop"
  assert len(association.video_instances(config, out)) == 20


def test_release_frees_dead_slots_and_scores_like_one_call(reference, x64):
  """Streaming: dead sequences leave the table between chunks; the video's scores are unchanged."""
  case = "ytvis"
  config, params = case_config(reference, case, num_slots=30)
  frames = frames_of(reference, case)
  method = association.get("dvis_daq")
  whole = association.video_instances(*tracked(reference, case)[::2])
  state = association.init_state(config, params, frames)
  accumulator, freed_total = method.score_init(config, 30, 3), 0
  for start in range(0, 23, 5):
    chunk = {k: v[start:start + 5] for k, v in frames.items()}
    chunk["valid"] = jnp.ones(chunk["embeds"].shape[0], bool)
    state, out = association.run_chunk(config, params, state, chunk)
    accumulator = method.score_update(config, accumulator, {k: np.asarray(out[k]) for k in method.score_inputs})
    state, accumulator, freed = method.release(config, state, accumulator)
    freed_total += len(freed)
    assert not np.asarray(state.occupied)[freed].any()
  assert freed_total == int(reference[f"{case}/seq_dead"].sum())
  streamed = method.score_instances(config, accumulator, 20)
  ids = lambda insts, acc: sorted((int(scoring._entries(acc)[3][i["slot"]]), i["label"]) for i in insts)
  assert [round(i["score"], 9) for i in streamed] == [round(i["score"], 9) for i in whole]
  assert ids(streamed, accumulator) == sorted((i["slot"], i["label"]) for i in whole)


def test_position_fusion_by_hand():
  """update_pos: the first position is the fused one; beta = max(0, mean cos over <= 9 previous)."""
  c = 2
  fused, history, count = jnp.zeros((1, c)), jnp.zeros((1, 9, c)), jnp.zeros((1,), jnp.int32)
  update = jnp.ones((1,), bool)
  p1, p2, p3 = jnp.asarray([[1.0, 0.0]]), jnp.asarray([[1.0, 1.0]]), jnp.asarray([[-1.0, 0.0]])
  fused, history, count = step_lib.update_positions(fused, history, count, p1, update)
  np.testing.assert_allclose(fused, p1)
  fused, history, count = step_lib.update_positions(fused, history, count, p2, update)
  beta = np.cos(np.pi / 4)
  np.testing.assert_allclose(fused, (1 - beta) * np.asarray(p1) + beta * np.asarray(p2), rtol=1e-6)
  before = fused
  fused, history, count = step_lib.update_positions(fused, history, count, p3, update)
  # cos(p1, p3) = -1, cos(p2, p3) = -1/sqrt 2: the mean is negative, beta = 0.
  np.testing.assert_allclose(fused, before)
  assert int(count[0]) == 3
  # Only the last 9 count: 9 copies of p1 then p3 ten times; the 10th p3 sees 9 p3's (beta 1).
  fused, history, count = jnp.zeros((1, c)), jnp.zeros((1, 9, c)), jnp.zeros((1,), jnp.int32)
  for _ in range(9):
    fused, history, count = step_lib.update_positions(fused, history, count, p1, update)
  for _ in range(9):
    fused, history, count = step_lib.update_positions(fused, history, count, p3, update)
  fused, history, count = step_lib.update_positions(fused, history, count, p3 * 2, update)
  np.testing.assert_allclose(fused, p3 * 2, atol=1e-6)


def test_config_fields_and_validation(reference):
  config, _ = converted(reference)
  section = config.association.dvis_daq
  for name in ("num_slots", "inference_select_threshold", "aux_inference_select_threshold", "keep_threshold",
               "ovis_infer", "kick_out_frame_num", "noise_frame_num"):
    assert name in section
  assert (section.num_layers, section.num_heads, section.ffn_dim, section.num_bg_slots) == (2, HEADS, 24, 5)
  assert config.model.num_queries == 6
  method = association.get("dvis_daq")
  bad = ml_collections.ConfigDict(dict(section))
  bad.on_overflow = "ignore"
  with pytest.raises(config_validation.ConfigError, match="on_overflow"):
    method.validate_section(bad, config)


def test_conversion_names_missing_keys(reference):
  state_dict = {"tracker." + k[len("state/"):]: v for k, v in reference.items() if k.startswith("state/")}
  with pytest.raises(cc.ConversionError, match="query_feat"):
    cc.association_from_reference("dvis_daq", state_dict, HEADS)
  state_dict["sem_seg_head.predictor.query_feat.weight"] = reference["query_feat"]
  del state_dict["tracker.slot_cross_attention_layers.1.slot_attn.project_k.weight"]
  with pytest.raises(cc.ConversionError, match="project_k"):
    cc.association_from_reference("dvis_daq", state_dict, HEADS)


def test_convert_file_recognises_a_daq_checkpoint(tmp_path):
  """A whole DAQ file: the segmenter (detectron2 layout), `tracker.*` -> dvis_daq (not O2VIS, whose
  prefix it shares), the segmenter's query_feat copied into the tracker's params and kept by the segmenter."""
  import pickle
  import segmenter_fixture
  from o2vis_jax.association.dvis_daq import convert
  hf_state_dict, _, _ = segmenter_fixture.load()
  checkpoint = segmenter_fixture.hf_to_detectron2(hf_state_dict)     # C=32, K=5, N=8
  rng = np.random.default_rng(3)
  table = convert.expected_table(32, 5, 24, 2, 5)
  checkpoint.update({"tracker." + k: rng.normal(size=shape).astype(np.float32) for k, (shape, _) in table.items()})
  path = tmp_path / "daq.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": checkpoint}, f)
  config, params = cc.convert_file(str(path), num_heads=4)
  assert config.association.method == "dvis_daq" and sorted(params) == ["segmenter", "tracker"]
  section = config.association.dvis_daq
  assert (section.num_layers, section.ffn_dim, section.num_heads) == (2, 24, 4)
  np.testing.assert_array_equal(params["tracker"]["query_feat"],
                                checkpoint["sem_seg_head.predictor.query_feat.weight"])
  np.testing.assert_array_equal(params["tracker"]["slot_cross_attention_layers_1"]["slot_attn"]["project_q_1"]["kernel"],
                                checkpoint["tracker.slot_cross_attention_layers.1.slot_attn.project_q.1.weight"].T)
  np.testing.assert_array_equal(params["tracker"]["mask_feature_proj"]["kernel"],
                                checkpoint["tracker.mask_feature_proj.weight"][:, :, 0, 0].T)


def test_streaming_inference_releases_dead_sequences():
  """Video inference in chunks of 2 frames, dead sequences leaving the table between chunks, gives the
  instances of the same run that keeps every sequence in its slot; tracks die fast here (threshold 0.26,
  kick-out after 2 invalid frames)."""
  from configs import tiny
  from o2vis_jax import inference
  from shared_inputs import moving_square_video
  height, width, num_frames = 48, 80, 7
  video = moving_square_video(height, width, num_frames)
  config = association.with_method(tiny.get_config(), "dvis_daq")
  config.association.dvis_daq.update(num_slots=64, inference_select_threshold=0.26, kick_out_frame_num=2,
                                     noise_frame_num=2, max_num=10)
  params = inference.init_params(config, seed=0)
  predictor = inference.VideoPredictor.from_config(config, params, chunk_size=2)
  method = association.get("dvis_daq")
  freed_per_chunk = []

  def counting(config_, state, accumulator):
    state, accumulator, freed = type(method).release(method, config_, state, accumulator)
    freed_per_chunk.append(len(freed))
    return state, accumulator, freed

  predictions = {}
  for name, release in (("released", counting), ("kept", lambda c, state, acc: (state, acc, []))):
    method.release = release
    try:
      predictions[name] = predictor.predict(iter(video), height, width)
    finally:
      del method.release
  assert predictor.num_compilations == 1
  assert sum(freed_per_chunk[:-1]) > 0, "no sequence died between chunks: the test shows nothing"
  got, want = (predictions[name].instances(10) for name in ("released", "kept"))
  assert len(want) > 0
  # A freed slot taken again puts a sequence in another row: float32 sums in another order (~1e-7).
  assert [i["label"] for i in got] == [i["label"] for i in want]
  np.testing.assert_allclose([i["score"] for i in got], [i["score"] for i in want], rtol=1e-5)
  assert [i["segmentations"] for i in got] == [i["segmentations"] for i in want]
  assert len(predictions["released"].slot_rles) == sum(freed_per_chunk) + 64
  assert all(len(r) == num_frames for r in predictions["released"].slot_rles)


def test_demo_row_and_infer_cli_run_dvis_daq(tmp_path):
  """The demo has a DVIS-DAQ row (its section is config.association.dvis_daq); scripts/infer.py
  --method dvis_daq runs the tiny model end to end (random weights from --config)."""
  import json
  import subprocess
  import sys
  from PIL import Image
  from configs import dvis_daq_tiny
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, os.path.join(root, "scripts"))
  import demo
  assert demo.row_label("dvis_daq").startswith("DVIS-DAQ")
  config = demo.method_config(dvis_daq_tiny.get_config(), "dvis_daq")
  assert config.association.method == "dvis_daq" and "num_slots" in config.association.dvis_daq
  frames = tmp_path / "clip"
  frames.mkdir()
  for t in range(4):
    Image.fromarray(np.full((24, 32, 3), 40 * t, np.uint8)).save(frames / f"{t:05d}.jpg")
  output = tmp_path / "r.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, os.path.join(root, "scripts", "infer.py"), "--config",
                        os.path.join(root, "configs", "dvis_daq_tiny.py"), "--method", "dvis_daq",
                        "--input", str(frames), "--output", str(output), "--chunk_size", "2"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=root)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(output) as f:
    results = json.load(f)
  assert all(len(r["segmentations"]) == 4 for r in results)
  assert len(results) <= 20
