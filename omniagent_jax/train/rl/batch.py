"""Turn rows → fixed-shape micro-batches (docs/training.md §10).

Rows are packed by length bucket (`grouping.bucket_length`); each micro-batch has exactly
`rows_per_micro` rows (padded with zero-mask rows), so the jitted update compiles once per bucket length
and never again between steps. Arrays carry a leading axis of 1 (the `[K, …]` layout of `train/step.py`,
whose `put_batch` shards them over the mesh).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import numpy as np

from omniagent_jax.train.grouping import bucket_length


@dataclasses.dataclass
class Micro:
    arrays: dict[str, np.ndarray]  # [1, B, ...] (positions [1, 3, B, L])
    rows: list[int]  # the batch indices of its real rows, in order (at most B)
    segment: Hashable = None  # the accumulation segment (a group when TAURA takes entropies from the forward)

    @property
    def tokens(self) -> int:
        return int(self.arrays["loss_mask"].sum())


def pack(prepared: Sequence[dict[str, np.ndarray]], rows: Sequence[int], *, adv: np.ndarray, row_w: np.ndarray,
         rows_per_micro: int, buckets: Sequence[int], hidden: int, media: bool, dtype=np.float32,
         logp_old: Sequence[np.ndarray] | None = None, logp_ref: Sequence[np.ndarray] | None = None,
         segment: Hashable = None) -> list[Micro]:
    """Micro-batches of the rows `rows` (indices into `prepared`, `adv`, `row_w`, `logp_old`, `logp_ref`),
    bucket by bucket in ascending length, rows in their given order within a bucket. `media` puts media
    arrays in every micro-batch (zeros without media) so every call has the same inputs."""
    by_bucket: dict[int, list[int]] = {}
    for i in rows:
        by_bucket.setdefault(bucket_length(len(prepared[i]["input_ids"]), buckets), []).append(i)
    out = []
    for length in sorted(by_bucket):
        idx = by_bucket[length]
        for start in range(0, len(idx), rows_per_micro):
            chunk = idx[start : start + rows_per_micro]
            out.append(Micro(_collate(prepared, chunk, adv, row_w, rows_per_micro, length, hidden, media, dtype,
                                      logp_old, logp_ref), list(chunk), segment))
    return out


def _collate(prepared, chunk, adv, row_w, b, length, hidden, media, dtype, logp_old, logp_ref) -> dict[str, np.ndarray]:
    a = {
        "input_ids": np.zeros((b, length), np.int32),
        "attention_mask": np.zeros((b, length), np.int32),
        "positions": np.zeros((3, b, length), np.int32),
        "targets": np.zeros((b, length), np.int32),
        "loss_mask": np.zeros((b, length), np.float32),
        "logp_rollout": np.zeros((b, length), np.float32),
        "adv": np.zeros(b, np.float32),
        "row_w": np.ones(b, np.float32),
    }
    a["attention_mask"][:, 0] = 1  # a padding row attends to one token: no fully masked softmax (NaN)
    if media:
        a["media_embeds"] = np.zeros((b, length, hidden), dtype)
        a["media_mask"] = np.zeros((b, length), bool)
    for name, src in (("logp_old", logp_old), ("logp_ref", logp_ref)):
        if src is not None:
            a[name] = np.zeros((b, length), np.float32)
    for j, i in enumerate(chunk):
        p = prepared[i]
        t = len(p["input_ids"])
        a["input_ids"][j, :t], a["attention_mask"][j, :t] = p["input_ids"], 1
        a["positions"][:, j, :t] = p["positions"]
        a["targets"][j, :t], a["loss_mask"][j, :t] = p["targets"], p["loss_mask"]
        a["logp_rollout"][j, :t] = p["logp_rollout"]
        a["adv"][j], a["row_w"][j] = adv[i], row_w[i]
        if "media_embeds" in p:
            if not media:
                raise ValueError("a row has media but the micro-batches were packed without media arrays")
            a["media_embeds"][j, :t], a["media_mask"][j, :t] = p["media_embeds"], p["media_mask"]
        for name, src in (("logp_old", logp_old), ("logp_ref", logp_ref)):
            if src is not None:
                a[name][j, :t] = src[i]
    return {k: v[None] for k, v in a.items()}
