"""GRPO advantages and TAURA weights against hand-computed vectors (docs/training.md §10)."""

from __future__ import annotations

import numpy as np
import pytest

from omniagent_jax.train.rl.advantages import grpo_advantages, taura_weights

S = np.sqrt(0.5)  # torch.std([1, 0]) with Bessel's correction


def test_grpo_counts_each_trajectory_once_and_handles_edge_groups():
    # Group a: t1 (5 turns, reward 1) and t2 (1 turn, reward 0): mean 0.5, std sqrt(0.5), whatever t1's turns.
    # Group b: one trajectory: mean 0, std 1. Group c: all rewards equal: advantage 0, no NaN.
    rows = [("a", "t1", 1.0)] * 5 + [("a", "t2", 0.0), ("b", "u1", 0.5), ("b", "u1", 0.5), ("c", "v1", 1.0), ("c", "v2", 1.0)]
    g, t, r = zip(*rows)
    a = grpo_advantages(r, g, t)
    want = [0.5 / (S + 1e-6)] * 5 + [-0.5 / (S + 1e-6), 0.5 / (1 + 1e-6), 0.5 / (1 + 1e-6), 0.0, 0.0]
    np.testing.assert_allclose(a, want, rtol=1e-12, atol=0)
    counted_per_row = (1.0 - np.mean([1.0] * 5 + [0.0])) / (np.std([1.0] * 5 + [0.0], ddof=1) + 1e-6)
    assert abs(a[0] - counted_per_row) > 0.25  # what counting t1 five times would have given

    perm = np.random.default_rng(0).permutation(len(rows))
    shuffled = grpo_advantages(np.asarray(r)[perm], np.asarray(g)[perm], np.asarray(t)[perm])
    np.testing.assert_array_equal(shuffled, a[perm])


def test_grpo_three_trajectories_by_hand():
    a = grpo_advantages([3.0, 0.0, 0.0, 0.0], ["g"] * 4, [0, 1, 2, 2])  # rewards 3, 0, 0: mean 1, std sqrt(3)
    np.testing.assert_allclose(a, np.array([2.0, -1.0, -1.0, -1.0]) / (np.sqrt(3.0) + 1e-6), rtol=1e-12)


def test_grpo_rejects_bad_rows():
    with pytest.raises(ValueError, match="trajectory 't' of group 'g' has rows with different rewards"):
        grpo_advantages([1.0, 0.0], ["g", "g"], ["t", "t"])
    with pytest.raises(ValueError, match="group_ids must have one entry per row"):
        grpo_advantages([1.0, 0.0], ["g"], ["t", "u"])
    with pytest.raises(ValueError, match="rewards must be finite"):
        grpo_advantages([np.nan], ["g"], ["t"])
    with pytest.raises(ValueError, match="one value per row"):
        grpo_advantages([[1.0]], ["g"], ["t"])


def test_taura_weights_by_hand_in_any_order():
    ent = np.array([[1.0, 3.0, 9.0], [4.0, 0.0, 0.0], [2.0, 2.0, 0.0], [5.0, 5.0, 5.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]])
    groups = ["x", "x", "y", "y"]
    # h = 2, 4, 4/3, 0 (an empty response counts 0); group means 3 and 2/3.
    w = taura_weights(ent, mask, groups)
    want = np.array([2 / (3 + 1e-8), 4 / (3 + 1e-8), (4 / 3) / (2 / 3 + 1e-8), 0.0])
    np.testing.assert_allclose(w, want, rtol=1e-12)
    perm = [2, 0, 3, 1]
    np.testing.assert_allclose(taura_weights(ent[perm], mask[perm], np.asarray(groups)[perm]), want[perm], rtol=1e-12)
    assert np.all(taura_weights(np.full((3, 2), 0.7), np.ones((3, 2)), ["g"] * 3).astype(np.float32) == 1.0)
    with pytest.raises(ValueError, match=r"must both be \[rows, tokens\]"):
        taura_weights(ent, mask[:, :2], groups)
