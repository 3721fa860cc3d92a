"""Shared builders for the training tests and their subprocess scripts (no test functions here)."""

from __future__ import annotations

import numpy as np

from omniagent_jax.train.loss import IGNORE


def synthetic_batch(k: int, b: int, t: int, vocab: int, seed: int = 0, prompt_lens=None) -> dict[str, np.ndarray]:
    """K micro-batches of B left-padded rows: random ids, a prompt then targets, a different number
    of target tokens per micro-batch (prompt length varies with k)."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, vocab, (k, b, t)).astype(np.int32)
    mask = np.ones((k, b, t), np.int32)
    labels = np.full((k, b, t), IGNORE, np.int32)
    for i in range(k):
        for j in range(b):
            pad = (i + j) % 3  # some left padding
            mask[i, j, :pad] = 0
            p = pad + (prompt_lens[i] if prompt_lens is not None else 2 + 2 * i)
            labels[i, j, p - 1 : t - 1] = ids[i, j, p:]
    pos = np.where(mask == 1, np.cumsum(mask, axis=-1) - 1, 1)
    positions = np.broadcast_to(pos[:, None], (k, 3, b, t)).astype(np.int32).copy()
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "positions": positions}
