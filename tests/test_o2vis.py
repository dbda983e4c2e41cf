"""O2VIS through the association seam: the JAX frame step (float64) against the NumPy re-implementation of REFERENCE.md sections 4-5, and the
scan properties: chunked == one-shot, padded frames change nothing, a batch equals single runs, gradients
flow as in REFERENCE.md section 6b."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference_numpy as ref
from o2vis_jax import association
from o2vis_jax.association.o2vis import config as o2vis_config
from o2vis_jax.checkpoint_conversion import tracker_from_reference

C, K, FFN, N, T, HEADS, LAYERS = 16, 3, 32, 6, 5, 4, 2  # 2 layers: aux outputs exist, compiles faster


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _weights(seed, no_object_bias=0.0, layers=LAYERS):
  sd = ref.random_state_dict(np.random.default_rng(seed), C, K, FFN, layers, ref_proj_gain=3.0)
  # Shifting the no-object logit steers occupancy: large -> nothing occupied, very negative -> all.
  sd["class_embed.bias"][K] += no_object_bias
  config, params = tracker_from_reference(sd, HEADS)
  return sd, config, params


def _inputs(seed, batch=()):
  rng = np.random.default_rng(seed)
  return dict(embeds=rng.normal(size=batch + (T, N, C)),
              embeds_without_norm=rng.normal(size=batch + (T, N, C)),
              mask_features=rng.normal(size=batch + (T, 3, 4, C)),
              logits=rng.normal(size=batch + (T, N, K + 1)))


@functools.lru_cache(maxsize=None)
def _track_fn(matcher="host", anchor=None, current_features=None, train=True, semantics="reference"):
  _, config, _ = _weights(0)
  config.tracker.matcher = matcher
  config.tracker.anchor = anchor
  config.tracker.current_features = current_features
  config.tracker.semantics = semantics
  return jax.jit(lambda params, inputs, valid=None: association.track(
      config, params, dict(inputs, **({} if valid is None else {"valid": valid})), train=train))


def _reference(sd, inputs, **options):
  fg = 1 - ref.softmax(inputs["logits"])[..., K]
  return ref.run_tracker(sd, inputs["embeds"], inputs["embeds_without_norm"], inputs["mask_features"], fg,
                         LAYERS, HEADS, **options)


def _assert_matches_reference(got, want, atol=1e-12):
  for key in ("pred_logits", "pred_masks", "pred_logits_E", "pred_masks_E", "memory", "similarity",
              "pred_embeds", "aux_logits", "aux_masks", "aux_logits_E", "aux_masks_E"):
    assert got[key].dtype == jnp.float64, f"{key}: float64 in must give float64 out, got {got[key].dtype}"
    np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key], np.float64), rtol=0, atol=atol,
                               err_msg=f"output {key!r} differs from the NumPy reference")
  for key in ("occupied", "assignment", "indices"):
    np.testing.assert_array_equal(np.asarray(got[key]), np.stack(want[key]), err_msg=f"output {key!r}")


@pytest.mark.parametrize("case,no_object_bias", [("mixed", 1.5), ("nothing_occupied", 30.0),
                                                 ("all_occupied", -30.0)])
def test_step_matches_numpy_reference(x64, case, no_object_bias):
  sd, _, params = _weights(0, no_object_bias)
  inputs = _inputs(1)
  got = _track_fn()(params, inputs)
  want = _reference(sd, inputs)
  _assert_matches_reference(got, want)
  occupied_counts = [int(o.sum()) for o in want["occupied_before"][1:]]
  if case == "mixed":  # both OHM stages non-empty at frame 1, all occupied later
    assert occupied_counts == [2, N, N, N], occupied_counts
  elif case == "nothing_occupied":
    assert occupied_counts == [0] * (T - 1)
  else:
    assert occupied_counts == [N] * (T - 1)
  np.testing.assert_array_equal(np.asarray(got["assignment"][0]), np.arange(N))


def test_device_matcher_and_options_match_numpy_reference(x64):
  sd, _, params = _weights(0)
  inputs = _inputs(2)
  # The device solver, with the OHM on the segmenter queries and the 'current' anchor (Table 3(b)).
  got = _track_fn("device", "current", "segmenter")(params, inputs)
  _assert_matches_reference(got, _reference(sd, inputs, anchor_mode="current", current_features="segmenter"))
  # semantics='paper': Eq. 7's literal order, segmenter anchor source, early matching (REFERENCE.md 7.4:
  # in training the OHM is replaced by sigma_t).
  got = _track_fn(semantics="paper")(params, inputs)
  _assert_matches_reference(got, _reference(sd, inputs, anchor_mode="adaptive_paper",
                                            current_features="segmenter", early_matching=True))
  np.testing.assert_array_equal(np.asarray(got["assignment"])[1:], np.asarray(got["indices"])[1:])


def test_eval_outputs_equal_train_outputs(x64):
  _, _, params = _weights(0)
  inputs = _inputs(3)
  train, evaluation = _track_fn()(params, inputs), _track_fn(train=False)(params, inputs)
  assert "pred_logits_E" not in evaluation and "aux_logits" in train
  for key, value in evaluation.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(train[key]), err_msg=key)


def test_padded_frames_change_nothing(x64):
  _, _, params = _weights(0)
  inputs = _inputs(4)
  # Frame 2 becomes padding: replace it with garbage, mark it invalid, and compare with a 4-frame run.
  keep = [0, 1, 3, 4]
  padded = {k: v.copy() for k, v in inputs.items()}
  for v in padded.values():
    v[2] = 1e3 * np.random.default_rng(5).normal(size=v[2].shape)
  valid = np.array([True, True, False, True, True])
  track = _track_fn(train=False)
  got = track(params, padded, valid)
  short = {k: np.concatenate([v[keep], v[-1:]]) for k, v in inputs.items()}  # 5 frames, last padded
  want = track(params, short, np.array([True, True, True, True, False]))
  for key in ("pred_logits", "memory", "occupied", "assignment", "similarity", "indices"):
    np.testing.assert_array_equal(np.asarray(got[key])[keep], np.asarray(want[key])[:4], err_msg=key)
  np.testing.assert_array_equal(np.asarray(got["memory"][2]), np.asarray(got["memory"][1]))
  np.testing.assert_array_equal(np.asarray(got["occupied"][2]), np.asarray(got["occupied"][1]))
  # A padded first frame does not start the video.
  first_padded = track(params, inputs, np.array([False, True, True, True, True]))
  np.testing.assert_array_equal(np.asarray(first_padded["assignment"][1]), np.arange(N))


def test_chunked_equals_one_shot(x64):
  _, config, params = _weights(0)
  inputs = _inputs(6)
  frames = dict(inputs, valid=np.ones(T, bool))
  one = _track_fn(train=False)(params, inputs)
  chunk = jax.jit(lambda carry, f: association.run_chunk(config, params, carry, f))
  # Chunks of 3 frames (one compilation): frames 0-2, then 3-4 plus one padded frame.
  first = {k: v[:3] for k, v in frames.items()}
  second = {k: np.concatenate([v[3:], v[:1]]) for k, v in frames.items()}
  second["valid"] = np.array([True, True, False])
  empty = association.get("o2vis").init_state(config, num_queries=N, hidden_dim=C, dtype=jnp.float64)
  carry, out_a = chunk(empty, first)
  carry, out_b = chunk(carry, second)
  for key in ("pred_logits", "pred_masks", "memory", "occupied", "assignment", "similarity", "indices"):
    joined = np.concatenate([np.asarray(out_a[key]), np.asarray(out_b[key])[:2]])
    np.testing.assert_allclose(joined, np.asarray(one[key]), rtol=0, atol=1e-13, err_msg=key)
  np.testing.assert_allclose(np.asarray(carry.memory), np.asarray(one["memory"][-1]), rtol=0, atol=1e-13)
  np.testing.assert_array_equal(np.asarray(carry.occupied), np.asarray(one["occupied"][-1]))
  assert bool(carry.started)


def test_batch_equals_single_runs(x64):
  _, _, params = _weights(0)
  inputs = _inputs(7, batch=(2,))
  valid = np.array([[True] * T, [True, True, True, False, False]])
  track = _track_fn(train=False)
  got = track(params, inputs, valid)
  for b in range(2):
    single = track(params, {k: v[b] for k, v in inputs.items()}, valid[b])
    for key, value in single.items():
      np.testing.assert_allclose(np.asarray(got[key][b]), np.asarray(value), rtol=0, atol=1e-13,
                                 err_msg=f"video {b}: {key}")


def test_gradients_follow_reference_section_6b():
  layers = 1  # the gradient paths do not depend on the depth; one layer compiles fastest.
  _, config, params = _weights(0, layers=layers)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  inputs = {k: jnp.asarray(v, jnp.float32) for k, v in _inputs(8).items()}
  frames = {k: inputs[k] for k in ("embeds", "embeds_without_norm", "mask_features")}
  track = lambda p: association.track(config, p, frames, train=True)
  losses = lambda p: (lambda out: jnp.stack([jnp.sum(out["pred_logits"]),
                                             jnp.sum(out["pred_logits_E"] ** 2)]))(track(p))

  @jax.jit
  def both_gradients(p):
    _, vjp = jax.vjp(losses, p)
    return vjp(jnp.array([1.0, 0.0]))[0], vjp(jnp.array([0.0, 1.0]))[0]

  # Fresh parameters (zero biases: LN_d of the empty memory is a zero row) give finite gradients.
  fresh = association.get("o2vis").init_params(config, jax.random.PRNGKey(0), num_classes=K, hidden_dim=C)
  for leaf in jax.tree.leaves(both_gradients(fresh)):
    assert np.isfinite(np.asarray(leaf)).all(), "NaN/Inf gradient from fresh parameters"

  grad_a, grad_e = both_gradients(params)
  norm = lambda tree: float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree)))
  e_layers = [k for k in params if k.endswith("_E_0")]
  a_layers = [k for k in params if k.endswith("_A_0")]
  assert len(e_layers) == len(a_layers) == 3 * layers
  # T_A's losses give T_E exactly zero gradient (its output enters only the stop-gradient matching).
  assert norm({k: grad_a[k] for k in e_layers}) == 0.0
  assert norm({k: grad_a[k] for k in a_layers}) > 0.0
  # T_E's losses reach T_A through the (not detached) memory.
  assert norm({k: grad_e[k] for k in a_layers}) > 0.0
  assert norm({k: grad_e[k] for k in e_layers}) > 0.0


def test_resolve_options_table_and_errors():
  _, config, _ = _weights(0)
  assert o2vis_config.resolve_options(config.tracker) == o2vis_config.Options()
  config.tracker.semantics = "paper"
  paper = o2vis_config.resolve_options(config.tracker)
  assert (paper.anchor, paper.current_features, paper.early_matching) == ("adaptive_paper", "segmenter", True)
  config.tracker.anchor = "memory"
  assert o2vis_config.resolve_options(config.tracker).anchor == "memory"
  config.tracker.anchor = "average"
  with pytest.raises(ValueError, match="config.tracker.anchor must be one of"):
    o2vis_config.resolve_options(config.tracker)


def test_config_with_only_the_method_runs():
  """`association.track` needs only `association.method`: an absent section is the method's
  `default_config()` (O2VIS: 3 + 3 layers, FFN 2048, 8 heads)."""
  import ml_collections
  inputs = {k: np.asarray(v, np.float32) for k, v in _inputs(9).items()}
  bare = ml_collections.ConfigDict(dict(association=dict(method="o2vis")))
  method = association.get("o2vis")
  params = method.init_params(bare, jax.random.PRNGKey(1), num_classes=K, hidden_dim=C)
  assert params["transformer_ffn_layers_A_2"]["linear1"]["kernel"].shape == (C, 2048)
  got = association.track(bare, params, inputs)
  explicit = ml_collections.ConfigDict(dict(association=dict(method="o2vis"),
                                            tracker=o2vis_config.default_config()))
  want = association.track(explicit, params, inputs)
  for key in ("pred_logits", "memory", "assignment"):
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]), err_msg=key)
  with pytest.raises(KeyError, match="embeds_without_norm"):
    association.track(bare, params, {"embeds": inputs["embeds"]})
  with pytest.raises(ValueError, match="not a registered association method.*o2vis"):
    association.track(ml_collections.ConfigDict(dict(association=dict(method="nope"))), params, inputs)
