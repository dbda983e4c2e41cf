"""The T_E-only model (Table 3(a) row 6, REFERENCE.md section 12) in float64 against the NumPy
re-implementation `reference_numpy_te`, its weight import, and the scan properties (padded frames)."""

import functools

import jax
import numpy as np
import pytest

import reference_numpy_te as ref_te
from o2vis_jax import association
from o2vis_jax.checkpoint_conversion import ConversionError, te_only_from_reference

METHOD = association.get("o2vis_te_only")

C, K, FFN, N, T, HEADS, LAYERS, H, W = 16, 3, 32, 6, 5, 4, 2, 3, 4


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@functools.lru_cache(maxsize=None)
def _weights(seed=0):
  sd = ref_te.random_state_dict(np.random.default_rng(seed), C, K, FFN, LAYERS, ref_proj_gain=3.0)
  config, params = te_only_from_reference({"tracker_E." + k: v for k, v in sd.items()}, HEADS)
  return sd, config, params


def _inputs(seed, occupied_at_0="mixed"):
  """A clip whose segmenter queries are a shuffled, noisy copy of the same N objects at every frame.

  Returns (inputs, perms): e_t[n] = base[perms[t][n]] + noise, so Hung(S, e_t) recovers
  argsort(perms[t]) relative to frame 0's order (the early-matching assignment).
  """
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(N, C))
  perms = [np.arange(N)] + [rng.permutation(N) for _ in range(T - 1)]
  embeds = np.stack([base[p] + 0.05 * rng.normal(size=(N, C)) for p in perms])
  logits = rng.normal(size=(T, N, K + 1))
  masks = rng.normal(size=(T, N, H, W))
  masks[:, 1] = -np.abs(masks[:, 1])   # query 1's mask is empty at every frame: never occupied by it.
  if occupied_at_0 == "none":
    logits[0, :, K] += 10.0            # frame 0 all no-object: t=1 uses the plain Hungarian.
  inputs = dict(embeds=embeds, embeds_without_norm=rng.normal(size=(T, N, C)),
                mask_features=rng.normal(size=(T, H, W, C)), logits=logits, masks=masks)
  return inputs, perms


@functools.lru_cache(maxsize=None)
def _track_fn(train):
  _, config, _ = _weights()
  return jax.jit(lambda params, inputs, valid: association.track(
      config, params, dict(inputs, valid=valid), train=train))


def _run(inputs, train=False, valid=None):
  _, _, params = _weights()
  if valid is None:
    valid = np.ones(len(inputs["embeds"]), bool)
  return jax.device_get(_track_fn(train)(params, inputs, valid))


def _reference(inputs, early_matching=False):
  sd, _, _ = _weights()
  return ref_te.run_te_only(sd, inputs["embeds"], inputs["embeds_without_norm"], inputs["mask_features"],
                            inputs["logits"], inputs["masks"], LAYERS, HEADS,
                            early_matching=early_matching)


def _assert_outputs(got, want):
  np.testing.assert_array_equal(got["assignment"], np.stack(want["pi"]))
  np.testing.assert_array_equal(got["indices"], np.stack(want["pi"]))
  np.testing.assert_array_equal(got["occupied"], np.stack(want["occupied"]))
  for name in ("pred_logits", "pred_masks", "pred_embeds", "memory"):
    assert got[name].dtype == np.float64, name
    np.testing.assert_allclose(got[name], np.stack(want[name]), rtol=0, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("occupied_at_0", ["mixed", "none"])
def test_inference_matches_numpy_reference(x64, occupied_at_0):
  inputs, _ = _inputs(1, occupied_at_0)
  got, want = _run(inputs), _reference(inputs)
  _assert_outputs(got, want)
  occupied = np.stack(want["occupied"])
  if occupied_at_0 == "none":
    assert not occupied[0].any()                      # the plain-Hungarian branch at t = 1
  else:
    assert 0 < occupied[0].sum() < N                  # both OHM stages at t = 1
  # OHM really re-orders (not the identity at every frame).
  assert any((p != np.arange(N)).any() for p in want["pi"][1:])
  # Eq. 4 with the mask test on the re-ordered outputs: O_t = OR_{tau <= t} fg(z_tau[pi], masks_tau[pi]).
  fg = (got["pred_logits"].argmax(-1) != K) & (got["pred_masks"] > 0).any(axis=(-2, -1))
  np.testing.assert_array_equal(got["occupied"], np.logical_or.accumulate(fg, axis=0))
  # The mask test matters: query 1 (empty masks) is classified as an object at some frame.
  assert (inputs["logits"][:, 1].argmax(-1) != K).any()


def test_training_uses_early_matching_and_matches_reference(x64):
  inputs, perms = _inputs(2)
  got, want = _run(inputs, train=True), _reference(inputs, early_matching=True)
  _assert_outputs(got, want)
  # Hung(S, e_t) follows the objects: slot n keeps frame 0's object n.
  for t in range(1, T):
    np.testing.assert_array_equal(got["assignment"][t], np.argsort(perms[t]))
  # T_E predictions of every layer (main = last, aux = the others) for the _E losses.
  logits_e, masks_e = np.stack(want["logits_E"]), np.stack(want["masks_E"])
  np.testing.assert_allclose(got["pred_logits_E"], logits_e[:, -1], rtol=0, atol=1e-12)
  np.testing.assert_allclose(got["pred_masks_E"], masks_e[:, -1], rtol=0, atol=1e-12)
  np.testing.assert_allclose(got["aux_logits_E"], logits_e[:, :-1], rtol=0, atol=1e-12)
  np.testing.assert_allclose(got["aux_masks_E"], masks_e[:, :-1], rtol=0, atol=1e-12)
  assert "similarity" not in got and "aux_logits" not in got


def test_padded_frame_changes_nothing(x64):
  inputs, _ = _inputs(3)
  padded = {k: np.concatenate([v[:2], np.full_like(v[:1], 7.0), v[2:]]) for k, v in inputs.items()}
  padded = {k: v[:T] for k, v in padded.items()}        # same length (one compilation): drop the last.
  valid = np.array([True, True, False, True, True])
  got = _run(padded, valid=valid)
  want = _reference({k: v[:T - 1] for k, v in inputs.items()})
  keep = np.flatnonzero(valid)
  np.testing.assert_array_equal(got["assignment"][keep], np.stack(want["pi"]))
  np.testing.assert_allclose(got["memory"][keep], np.stack(want["memory"]), rtol=0, atol=1e-12)
  np.testing.assert_allclose(got["pred_logits"][keep], np.stack(want["pred_logits"]), rtol=0, atol=1e-12)
  np.testing.assert_allclose(got["memory"][2], got["memory"][1], rtol=0, atol=0)


def test_batch_of_videos_equals_single_runs(x64):
  _, config, params = _weights()
  clips = [_inputs(5)[0], _inputs(6, "none")[0]]
  batch = {k: np.stack([c[k] for c in clips]) for k in clips[0]}
  got = jax.device_get(jax.jit(lambda p, x: association.track(config, p, x))(params, batch))
  for i, clip in enumerate(clips):
    want = _reference(clip)
    np.testing.assert_array_equal(got["assignment"][i], np.stack(want["pi"]))
    np.testing.assert_allclose(got["pred_masks"][i], np.stack(want["pred_masks"]), rtol=0, atol=1e-12)


def test_resolve_options_and_track_inputs():
  _, config, params = _weights()
  assert config.association.method == "o2vis_te_only"
  assert METHOD.options(config).early_matching       # REFERENCE.md 12: always early in training
  # One phase for the whole run: early matching is never switched off half-way (LOMM_online_E).
  assert METHOD.phases == ("main",) and METHOD.phase(config, 10 ** 6) == "main"
  config.tracker.early_matching = False
  assert not METHOD.options(config).early_matching
  inputs, _ = _inputs(4)
  with pytest.raises(KeyError, match="o2vis_te_only.*masks"):
    association.track(config, params, {k: v for k, v in inputs.items() if k != "masks"})


def test_conversion_tree_equals_init_params_and_rejects_full_tracker():
  sd, config, params = _weights()
  fresh = METHOD.init_params(config, jax.random.PRNGKey(0), num_classes=K, hidden_dim=C)
  shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
  assert shapes(fresh) == shapes(params)
  assert "ref_proj_E" in params and "ref_proj" not in params and len(params) == 3 * LAYERS + 4
  assert config.tracker.num_layers == LAYERS and config.association.method == "o2vis_te_only"
  np.testing.assert_array_equal(params["ref_proj_E"]["layers_0"]["kernel"],
                                sd["ref_proj_E.layers.0.weight"].T)
  broken = dict(sd)
  del broken["ref_proj_E.layers.2.bias"]
  with pytest.raises(ConversionError, match="ref_proj.layers.2.bias"):
    te_only_from_reference(broken, HEADS)
  with pytest.raises(ConversionError, match="no T_A keys"):
    te_only_from_reference(dict(sd, **{"transformer_ffn_layers_A.0.norm.weight": np.ones(C)}), HEADS)
