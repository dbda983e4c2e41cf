"""Eq. 3, 4, 7 and the baseline memories on hand-computed numbers."""

import numpy as np
import pytest

from o2vis_jax.association.ops import memory

MEMORY = np.array([[1.0, 0.0], [0.0, 2.0]])
QUERIES = np.array([[3.0, 4.0], [0.0, -2.0]])
# softmax([0, ln 3]) = [0.25, 0.75]: row 0 background prob 0.75; row 1: [ln 3, 0] -> 0.25.
LOGITS = np.log(np.array([[1.0, 3.0], [3.0, 1.0]]))


def test_memory_update_eq3():
  got = np.asarray(memory.memory_update(MEMORY, QUERIES, LOGITS))
  want = np.array([[0.75 * 1 + 0.25 * 3, 0.25 * 4], [0.0, 0.25 * 2 + 0.75 * -2]])
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_occupancy_update_eq4_class_only_and_with_masks():
  occupied = np.array([False, False, True])
  logits = np.array([[2.0, 1.0], [0.0, 1.0], [0.0, 5.0]])  # foreground, background, background
  np.testing.assert_array_equal(np.asarray(memory.occupancy_update(occupied, logits)),
                                [True, False, True])
  masks = np.stack([np.full((2, 2), -1.0), np.full((2, 2), 1.0), np.full((2, 2), 1.0)])
  # The baselines also require a mask logit > 0: row 0 has an empty mask.
  np.testing.assert_array_equal(np.asarray(memory.occupancy_update(occupied, logits, masks)),
                                [False, False, True])


@pytest.mark.parametrize("mode,want", [
    ("adaptive", [[0.5 * 1 + 0.5 * 3, 0.5 * 0 + 0.5 * 4], [-0.0 + 1.0 * 0, -0.5 * 2 + 1.5 * -2]]),
    ("adaptive_paper", [[0.5 * 3 + 0.5 * 1, 0.5 * 4], [0.0, -0.5 * -2 + 1.5 * 2]]),
    ("current", QUERIES.tolist()),
    ("memory", MEMORY.tolist()),
])
def test_adaptive_anchor_eq7(mode, want):
  similarity = np.array([0.5, -0.5])  # not clamped: a negative s extrapolates.
  got = np.asarray(memory.adaptive_anchor(MEMORY, QUERIES, similarity, mode))
  np.testing.assert_allclose(got, np.array(want), rtol=1e-6)


def test_cosine_similarity_like_torch():
  a = np.array([[3.0, 4.0], [0.0, 0.0], [1e-9, 0.0]])
  b = np.array([[4.0, 3.0], [1.0, 0.0], [1.0, 0.0]])
  # Each norm clamped at >= 1e-8: a zero row gives 0, a tiny row 1e-9 / 1e-8 = 0.1.
  np.testing.assert_allclose(np.asarray(memory.cosine_similarity(a, b)), [24 / 25, 0.0, 0.1], rtol=1e-6)


@pytest.mark.parametrize("mode,want", [
    ("none", QUERIES.tolist()),
    ("momentum", (0.99 * MEMORY + 0.01 * QUERIES).tolist()),
    # cos(row 0) = 3/5, cos(row 1) = -1.
    ("similarity", [[0.4 * 1 + 0.6 * 3, 0.6 * 4], [0.0, 2.0 * 2 + -1.0 * -2]]),
    ("iom", [[0.75 * 1 + 0.25 * 3, 0.25 * 4], [0.0, 0.25 * 2 + 0.75 * -2]]),
])
def test_baseline_memories(mode, want):
  got = np.asarray(memory.baseline_memory_update(MEMORY, QUERIES, LOGITS, mode))
  np.testing.assert_allclose(got, np.array(want), rtol=1e-6)


def test_unknown_modes_are_named():
  with pytest.raises(ValueError, match="anchor must be one of"):
    memory.adaptive_anchor(MEMORY, QUERIES, np.zeros(2), "mean")
  with pytest.raises(ValueError, match="memory must be one of"):
    memory.baseline_memory_update(MEMORY, QUERIES, LOGITS, "ema")
