"""CAVIS (o2vis_jax/association/cavis, models/cavis.py) against the AUTHORS' modules:
tests/fixtures/cavis_reference.npz, written by scripts/make_cavis_fixtures.py from github Seung-Hun-Lee/CAVIS
(float64; C=16, 4 heads, N=6, K=4, 6 tracker layers, masks 12x10). Plus the converter's checks, the losses on
hand-computed cases, and a short training run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2vis_jax import association, checkpoint_conversion as cc, config_validation, defaults
from o2vis_jax.association.cavis import step as cavis_step
from o2vis_jax.checkpoint_conversion.errors import ConversionError
from o2vis_jax.models import cavis as cavis_model

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "cavis_reference.npz")
HEADS, C, N, K = 4, 16, 6, 4
TOL = 1e-6


@pytest.fixture(scope="module")
def reference():
  with np.load(FIXTURE) as archive:
    return {k: archive[k] for k in archive.files}


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def state_dict(reference):
  return {k[len("state/"):]: v for k, v in reference.items() if k.startswith("state/")}


def converted(reference):
  config, params = cc.association_from_reference("cavis", state_dict(reference), HEADS)
  return config, jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)


def frames_of(reference, case):
  return {k: jnp.asarray(reference[f"{case}/{k}"], jnp.float64)
          for k in ("embeds", "embeds_without_norm", "masks", "mask_features")}


def assert_close(actual, want, what, tol=TOL):
  """max |actual - want| <= tol * max(1, max |want|)."""
  actual, want = np.asarray(actual, np.float64), np.asarray(want, np.float64)
  assert actual.shape == want.shape, f"{what}: shape {actual.shape}, expected {want.shape}"
  error = np.max(np.abs(actual - want)) / max(1.0, np.max(np.abs(want)))
  assert error <= tol, f"{what}: error {error:.3g}, expected <= {tol:g}"


# --------------------------------------------------------------------------------------------------
# Conversion.

def test_conversion_reads_sizes_and_sets_the_section(reference):
  config, params = cc.association_from_reference("cavis", state_dict(reference), HEADS)
  assert config.association.method == "cavis"
  section = config.association.cavis
  assert (section.num_layers, section.ffn_dim, section.num_heads, section.reid_hidden_dim,
          section.num_reid_head_layers, section.context_filter_size) == (6, 24, HEADS, 12, 3, 9)
  assert (config.model.hidden_dim, config.model.num_classes) == (C, K)
  assert params["ctx_query_embed"]["kernel"].shape == (2 * C, C)
  assert params["reid_embed"]["layers_0"]["kernel"].shape == (2 * C, 12)
  # A check may set the filter size after conversion.
  config.association.cavis.context_filter_size = 5
  assert association.method_of(config).section(config).context_filter_size == 5


def test_conversion_errors_name_the_key(reference):
  sd = state_dict(reference)
  broken = dict(sd)
  del broken["tracker.ctx_query_embed.bias"]
  with pytest.raises(ConversionError, match=r"missing \(1\): \[.ctx_query_embed.bias.\]"):
    cc.association_from_reference("cavis", broken, HEADS)
  wrong = dict(sd, **{"sem_seg_head.predictor.laplacian": np.ones((1, 1, 3, 3))})
  with pytest.raises(ConversionError, match="laplacian"):
    cc.association_from_reference("cavis", wrong, HEADS)
  with pytest.raises(ConversionError, match="not divisible"):
    cc.association_from_reference("cavis", sd, 3)
  segmenter_only = {k: v for k, v in sd.items() if not k.startswith("tracker.")}
  with pytest.raises(ConversionError, match="segmenter-stage"):
    cc.association_from_reference("cavis", segmenter_only, HEADS)


def test_o2vis_entry_is_the_same_dispatch():
  with pytest.raises(ConversionError, match="LOMM tracker"):
    cc.association_from_reference("o2vis", {"tracker.x": np.zeros(1)}, 8)


def test_checkpoint_files_are_told_apart(reference):
  """A CAVIS file (tracker.* like LOMM's, plus the ReID head) is CAVIS's; a LOMM-like one is not."""
  from o2vis_jax.checkpoint_conversion import _method_keys
  sd = state_dict(reference)
  name, keys = _method_keys("cavis.pth", dict(sd, **{"backbone.x": np.zeros(1)}))
  assert name == "cavis" and "backbone.x" not in keys and "sem_seg_head.predictor.laplacian" in keys
  assert "sem_seg_head.predictor.decoder_norm.weight" not in keys   # the segmenter's
  lomm_like = {k: v for k, v in sd.items() if k.startswith("tracker.")}
  assert _method_keys("lomm.pth", lomm_like)[0] == "o2vis"


# --------------------------------------------------------------------------------------------------
# The head.

@pytest.mark.parametrize("filter_size", [9, 5])
def test_context_matches_the_authors(reference, x64, filter_size):
  prefix = f"head/k{filter_size}"
  ctx = cavis_model.context_features(jnp.asarray(reference[f"{prefix}/masks"]),
                                     jnp.asarray(reference[f"{prefix}/mask_features"]), filter_size)
  assert_close(ctx, reference[f"{prefix}/ctx"], f"context k={filter_size}")


def test_inner_boundary_hand_cases():
  masks = -np.ones((4, 5, 6))
  masks[1] = 1                        # full: the image frame
  masks[2, 2, 3] = 1                  # one pixel: itself
  masks[3, 1:4, 1:5] = 1              # a 3x4 block inside: its outline
  b = np.asarray(cavis_model.inner_boundary(jnp.asarray(masks)))
  assert not b[0].any()
  frame = np.ones((5, 6), bool)
  frame[1:-1, 1:-1] = False
  np.testing.assert_array_equal(b[1], frame)
  assert b[2].sum() == 1 and b[2, 2, 3]
  block = np.zeros((5, 6), bool)
  block[1:4, 1:5] = True
  block[2, 2:4] = False
  np.testing.assert_array_equal(b[3], block)


def test_context_map_is_a_channel_summed_box_sum():
  features = np.arange(2 * 3 * 2, dtype=np.float64).reshape(2, 3, 2)   # h 2, w 3, C 2
  s = np.asarray(cavis_model.context_map(jnp.asarray(features, jnp.float32), 3))
  channel_sum = features.sum(-1)
  # the 3x3 window around (0, 0) holds (0,0), (0,1), (1,0), (1,1); the divisor is always 9.
  expected = (channel_sum[0, 0] + channel_sum[0, 1] + channel_sum[1, 0] + channel_sum[1, 1]) * np.float32(1 / 9)
  assert s[0, 0] == pytest.approx(expected, rel=1e-6)
  with pytest.raises(ValueError, match="context_filter_size"):
    cavis_model.context_map(jnp.asarray(features), 4)


@pytest.mark.parametrize("case", ["A", "B"])
def test_reid_matches_the_authors(reference, x64, case):
  config, params = converted(reference)
  method = association.get("cavis")
  model = method.module(config, hidden_dim=C, num_classes=K).bind({"params": params})
  frames = frames_of(reference, case)
  for t in range(frames["embeds"].shape[0]):
    frame = {k: v[t] for k, v in frames.items()}
    reid = cavis_step.reid_features(model, 9, frame)
    assert_close(reid, reference[f"{case}/reid"][t], f"{case} reid frame {t}")


# --------------------------------------------------------------------------------------------------
# The tracker.

@pytest.fixture(scope="module")
def tracked(reference):
  """association.track(train=True) on both fixture videos (same shapes: one compilation)."""
  with jax.enable_x64(True):
    config, params = converted(reference)
    outputs = {}
    for case in ("A", "B"):
      frames = frames_of(reference, case)
      frames["logits"] = jnp.zeros(frames["embeds"].shape[:2] + (K + 1,), jnp.float64)
      outputs[case] = jax.tree.map(np.asarray, association.track(config, params, frames, train=True,
                                                                 phase="main"))
    return config, outputs


@pytest.mark.parametrize("case", ["A", "B"])
def test_tracker_matches_the_authors(reference, tracked, case):
  out = tracked[1][case]
  np.testing.assert_array_equal(np.asarray(out["assignment"]), reference[f"{case}/indices"])
  assert_close(out["reid"], reference[f"{case}/reid"], f"{case} reid")
  assert_close(out["pred_logits"], reference[f"{case}/pred_logits"], f"{case} logits")
  assert_close(out["pred_masks"], reference[f"{case}/pred_masks"], f"{case} masks")
  assert_close(out["pred_embeds"], reference[f"{case}/pred_embds"], f"{case} embeds")
  assert_close(out["references"][1:], reference[f"{case}/pred_references"], f"{case} references")
  np.testing.assert_array_equal(np.asarray(out["references"][0]), 0.0)
  for layer in range(5):
    assert_close(out["aux_logits"][:, layer], reference[f"{case}/aux{layer}/pred_logits"], f"aux {layer}")
    assert_close(out["aux_masks"][:, layer], reference[f"{case}/aux{layer}/pred_masks"], f"aux {layer}")


def test_chunks_and_padding_equal_one_run(reference, x64):
  """Chunks of 2, 2, 1 with the state passed on (the authors' windows, resume=True) and a padded frame."""
  config, params = converted(reference)
  frames = frames_of(reference, "A")
  frames["valid"] = jnp.ones((5,), bool)
  state = association.init_state(config, params, frames)
  logits = []
  for start, end in ((0, 2), (2, 4), (4, 5)):
    chunk = {k: v[start:end] for k, v in frames.items()}
    if end - start == 1:   # pad the last chunk to 2 frames
      chunk = {k: jnp.concatenate([v, v]) for k, v in chunk.items()}
      chunk["valid"] = jnp.array([True, False])
    state, out = association.run_chunk(config, params, state, chunk)
    logits.append(out["pred_logits"][:end - start])
  assert_close(jnp.concatenate(logits), reference["A/windowed/pred_logits"], "windowed logits")


@pytest.mark.parametrize("case", ["A", "B"])
def test_video_topk_matches_the_authors(reference, tracked, case):
  config, outputs = tracked
  instances = association.video_instances(config, outputs[case], max_num=7)
  order = np.argsort(-reference[f"{case}/topk/scores"], kind="stable")
  assert_close([i["score"] for i in instances], reference[f"{case}/topk/scores"][order], "scores")
  assert [i["label"] for i in instances] == reference[f"{case}/topk/labels"][order].tolist()
  assert [i["slot"] for i in instances] == reference[f"{case}/topk/queries"][order].tolist()


def test_float32_runs_close_to_float64(reference):
  config, params = cc.association_from_reference("cavis", state_dict(reference), HEADS)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  frames = {k: jnp.asarray(v, jnp.float32) for k, v in frames_of(reference, "B").items()}
  out = association.track(config, params, frames)
  np.testing.assert_array_equal(np.asarray(out["assignment"]), reference["B/indices"])
  assert_close(out["pred_logits"], reference["B/pred_logits"], "float32 logits", tol=1e-4)


# --------------------------------------------------------------------------------------------------
# Config.

def test_config_section_lives_under_association():
  config = defaults.base_config()
  assert config.association.cavis.context_filter_size == 9
  config = association.with_method(config, "cavis")
  config_validation.validate(config)
  config.association.cavis.context_filter_size = 4
  with pytest.raises(config_validation.ConfigError, match="context_filter_size=4: must be odd"):
    config_validation.validate(config)
  config.association.cavis.context_filter_size = 9
  config.association.cavis.matcher = "gpu"
  with pytest.raises(config_validation.ConfigError, match="association.cavis.matcher"):
    config_validation.validate(config)
