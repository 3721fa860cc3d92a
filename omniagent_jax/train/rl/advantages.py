"""GRPO advantages and TAURA turn weights (docs/training.md §10), pure numpy.

Rows are turn-rows: one per OTA turn of a trajectory. GRPO normalises each trajectory's reward within its
prompt group over the group's **unique trajectories** (a 5-turn trajectory counts once, as a 1-turn one does);
TAURA rescales each row by its response's mean entropy relative to the group's mean over its rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _keys(ids: Sequence, name: str, n: int) -> np.ndarray:
    out = np.asarray(ids, dtype=object)
    if out.shape != (n,):
        raise ValueError(f"{name} must have one entry per row ({n}), got shape {out.shape}")
    return out


def grpo_advantages(rewards: Sequence[float], group_ids: Sequence, traj_ids: Sequence, eps: float = 1e-6) -> np.ndarray:
    """One advantage per row: `(R_traj - mean_g) / (std_g + eps)` over the group's unique trajectories.

    `std` has Bessel's correction (`torch.std`); a group with one trajectory uses mean 0, std 1. Every row
    of a trajectory must carry the same reward (ValueError otherwise). Rows may come in any order."""
    r = np.asarray(rewards, np.float64)
    if r.ndim != 1:
        raise ValueError(f"rewards must be one value per row, got shape {r.shape}")
    if not np.isfinite(r).all():
        raise ValueError("rewards must be finite")
    groups, trajs = _keys(group_ids, "group_ids", len(r)), _keys(traj_ids, "traj_ids", len(r))
    traj_reward: dict = {}
    for g, t, x in zip(groups, trajs, r):
        key = (g, t)
        if key in traj_reward and traj_reward[key] != x:
            raise ValueError(f"trajectory {t!r} of group {g!r} has rows with different rewards ({traj_reward[key]} and {x})")
        traj_reward[key] = x
    by_group: dict = {}
    for (g, _), x in traj_reward.items():
        by_group.setdefault(g, []).append(x)
    stats = {}
    for g, xs in by_group.items():
        xs = np.asarray(xs)
        stats[g] = (0.0, 1.0) if len(xs) == 1 else (xs.mean(), xs.std(ddof=1))
    mean = np.array([stats[g][0] for g in groups])
    std = np.array([stats[g][1] for g in groups])
    return (r - mean) / (std + eps)


def row_entropy(token_entropies: np.ndarray, response_mask: np.ndarray) -> np.ndarray:
    """`h_i`: the masked mean entropy of each row's response tokens (0 for a row with none)."""
    e = np.asarray(token_entropies, np.float64)
    m = np.asarray(response_mask, np.float64)
    if e.shape != m.shape or e.ndim != 2:
        raise ValueError(f"token_entropies and response_mask must both be [rows, tokens], got {e.shape} and {m.shape}")
    return (e * m).sum(-1) / np.maximum(m.sum(-1), 1.0)


def taura_from_row_entropy(h: np.ndarray, group_ids: Sequence, eps: float = 1e-8) -> np.ndarray:
    """`w_i = h_i / (mean over the group's rows of h + eps)`."""
    h = np.asarray(h, np.float64)
    groups = _keys(group_ids, "group_ids", len(h))
    sums: dict = {}
    for g, x in zip(groups, h):
        s, n = sums.get(g, (0.0, 0))
        sums[g] = (s + x, n + 1)
    mean = np.array([sums[g][0] / sums[g][1] for g in groups])
    return h / (mean + eps)


def taura_weights(token_entropies: np.ndarray, response_mask: np.ndarray, group_ids: Sequence, eps: float = 1e-8) -> np.ndarray:
    """One TAURA weight per row: `h_i / (mean_g(h) + eps)`, `h_i` the masked mean entropy of row i's response."""
    return taura_from_row_entropy(row_entropy(token_entropies, response_mask), group_ids, eps)
