"""The training-free baselines of Table 3(a) rows 1-5 (REFERENCE.md section 11): hand-computed cases and
all 8 settings against the NumPy re-implementation."""

import functools

import jax
import numpy as np
import pytest

import reference_numpy as ref
from configs import tiny
from o2vis_jax import association

# Frame 0: slot 0 is background, slot 1 foreground (class 0 of K = 1); both masks non-empty.
EMBEDS = np.array([[[1.0, 0.0], [1.0, 0.1]],
                   [[1.0, 0.0], [0.0, 1.0]]], np.float32)
LOGITS = np.array([[[0.0, 1.0], [1.0, 0.0]],
                   [[2.0, 0.0], [0.0, 3.0]]], np.float32)
MASKS = np.ones((2, 2, 1, 2), np.float32)


@functools.lru_cache(maxsize=None)
def _baseline(memory, matching):
  config = tiny.get_config()
  config.association.method = "training_free"
  config.training_free.memory = memory
  config.training_free.matching = matching
  return jax.jit(lambda e, z, m, valid=None: association.track(
      config, None, dict(embeds=e, logits=z, masks=m, **({} if valid is None else {"valid": valid}))))


def test_ohm_gives_the_new_frame_object_to_the_occupied_slot():
  # Both slots look like current object 0. Slot 1 is occupied (foreground, non-empty mask), so stage 1
  # gives it current 0 and free slot 0 gets current 1; plain Hungarian keeps [0, 1] (lower total cost).
  out = _baseline("momentum", "ohm")(EMBEDS, LOGITS, MASKS)
  np.testing.assert_array_equal(np.asarray(out["assignment"]), [[0, 1], [1, 0]])
  np.testing.assert_array_equal(np.asarray(out["pred_logits"][1]), LOGITS[1][[1, 0]])
  np.testing.assert_allclose(np.asarray(out["memory"][1]), 0.99 * EMBEDS[0] + 0.01 * EMBEDS[1][[1, 0]],
                             rtol=1e-6)
  # Frame 0: [fg? no, yes]; frame 1 re-ordered logits [[0, 3], [2, 0]] add nothing for slot 0.
  np.testing.assert_array_equal(np.asarray(out["occupied"]), [[False, True], [False, True]])
  plain = _baseline("momentum", "hungarian")(EMBEDS, LOGITS, MASKS)
  np.testing.assert_array_equal(np.asarray(plain["assignment"]), [[0, 1], [0, 1]])
  np.testing.assert_array_equal(np.asarray(plain["occupied"]), np.zeros((2, 2), bool))


def test_empty_mask_is_not_occupied():
  masks = MASKS.copy()
  masks[0, 1] = -1.0  # slot 1 is foreground by class but its mask is empty: not occupied.
  out = _baseline("momentum", "ohm")(EMBEDS, LOGITS, masks)
  np.testing.assert_array_equal(np.asarray(out["occupied"][0]), [False, False])
  np.testing.assert_array_equal(np.asarray(out["assignment"][1]), [0, 1])


def test_none_memory_matches_the_previous_frame():
  # 'none' = MinVIS: memory := the matched current queries, so each frame is matched to the last one.
  embeds = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.1], [0.1, 1.0]]],
                    np.float32)
  logits = np.zeros((3, 2, 2), np.float32)
  out = _baseline("none", "hungarian")(embeds, logits, np.ones((3, 2, 1, 1), np.float32))
  np.testing.assert_array_equal(np.asarray(out["assignment"]), [[0, 1], [1, 0], [0, 1]])
  np.testing.assert_array_equal(np.asarray(out["memory"][1]), [[1.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize("matching", ["hungarian", "ohm"])
@pytest.mark.parametrize("memory", ["none", "similarity", "momentum", "iom"])
def test_all_settings_match_numpy_reference(memory, matching):
  rng = np.random.default_rng(0)
  t, n, c, k = 6, 5, 8, 3
  embeds = rng.normal(size=(t, n, c)).astype(np.float32)
  logits = (2 * rng.normal(size=(t, n, k + 1))).astype(np.float32)
  masks = rng.normal(size=(t, n, 2, 2)).astype(np.float32) - 1.0
  out = _baseline(memory, matching)(embeds, logits, masks)
  want_logits, want_masks = ref.run_baseline(embeds.astype(np.float64), logits.astype(np.float64),
                                             masks.astype(np.float64), memory, matching == "ohm")
  np.testing.assert_allclose(np.asarray(out["pred_logits"]), want_logits, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(out["pred_masks"]), want_masks, rtol=1e-6)
  if matching == "ohm":
    counts = np.asarray(out["occupied"]).sum(-1)
    assert counts[0] < n and counts[-1] > 0, counts  # both OHM stages are exercised


def test_padded_frame_keeps_the_baseline_memory():
  embeds = np.concatenate([EMBEDS, 100 * EMBEDS[:1]])
  logits = np.concatenate([LOGITS, LOGITS[:1]])
  masks = np.concatenate([MASKS, MASKS[:1]])
  out = _baseline("momentum", "ohm")(embeds, logits, masks, np.array([True, True, False]))
  np.testing.assert_array_equal(np.asarray(out["memory"][2]), np.asarray(out["memory"][1]))
  np.testing.assert_array_equal(np.asarray(out["occupied"][2]), np.asarray(out["occupied"][1]))


def test_minvis_is_training_free_none_hungarian():
  """`minvis` is its own method (own section) with the computation of row 1 (memory none + Hungarian)."""
  rng = np.random.default_rng(1)
  embeds = rng.normal(size=(5, 4, 6)).astype(np.float32)
  logits = rng.normal(size=(5, 4, 3)).astype(np.float32)
  masks = rng.normal(size=(5, 4, 2, 2)).astype(np.float32)
  config = tiny.get_config()
  config.association.method = "minvis"
  got = association.track(config, None, dict(embeds=embeds, logits=logits, masks=masks))
  want = _baseline("none", "hungarian")(embeds, logits, masks)
  for name in ("assignment", "pred_logits", "pred_masks", "memory"):
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]))
  assert association.get("minvis").max_num(config, 100) == 10   # MinVIS keeps 10 instances.
