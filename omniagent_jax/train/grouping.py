"""Length grouping of SFT samples: per-bucket queues, and the rule every process applies to decide
which group the next optimizer step gets.

Each encoded sample joins the FIFO queue of its *slot*: the smallest of `data.buckets` that holds it,
or one overflow slot past the last bucket. Before each pull, every process publishes a summary row
(samples per slot, age of its oldest sample, total pending); `decide` maps the table of all rows to
the same decision on every process, so all processes emit a group from the same slot at the same
step (each from its own shard of the data) and pad it to the same length:

1. the smallest slot holding at least `group` samples on *every* process → its `group` oldest;
2. else, when some process's oldest sample has waited `max_wait` pulls (one epoch of this
   process's shard) and every process holds `group` samples → each process's `group` oldest samples
   whatever their slots, padded to the longest (so a rare length never waits forever);
3. else nothing: every process pulls one more sample.

Leftovers at an epoch's end are carried over: the stream repeats, so a partly filled queue keeps
filling from the next epoch, and rule 2 bounds the wait. Numpy only (no JAX).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

FULL, OLDEST = "full", "oldest"


def bucket_length(n: int, buckets: Sequence[int], multiple: int = 128) -> int:
    """The smallest bucket that holds n tokens (one compile per bucket); beyond the last, n rounded up."""
    for b in sorted(buckets):
        if n <= b:
            return int(b)
    return int(-(-n // multiple) * multiple)


def slot_of(n: int, buckets: Sequence[int]) -> int:
    """Index of the smallest bucket holding n tokens in sorted `buckets`; `len(buckets)` past the last."""
    return int(np.searchsorted(np.sort(np.asarray(buckets)), n, side="left"))


@dataclasses.dataclass
class Pending:
    pull: int  # this process's pull number when the sample arrived (its age is measured from it)
    index: int  # the sample's index in the source items (what a checkpoint stores)
    sample: dict[str, Any]

    @property
    def length(self) -> int:
        return len(self.sample["input_ids"])


def decide(table: np.ndarray, group: int, max_wait: int) -> tuple[str, int] | None:
    """The next group from the `[processes, slots + 2]` table of `LengthQueues.summary` rows:
    `(FULL, slot)`, `(OLDEST, -1)` or None (pull more). A pure function of the table, so every
    process that sees the same table decides the same."""
    counts, age, total = table[:, :-2], table[:, -2], table[:, -1]
    full = np.flatnonzero(counts.min(axis=0) >= group)
    if full.size:
        return FULL, int(full[0])
    if age.max() >= max_wait and total.min() >= group:
        return OLDEST, -1
    return None


class LengthQueues:
    """One process's pending samples, a FIFO queue per slot."""

    def __init__(self, buckets: Sequence[int], group: int):
        self.buckets = sorted(int(b) for b in buckets)
        self.group = group
        self.queues: list[collections.deque[Pending]] = [collections.deque() for _ in range(len(self.buckets) + 1)]

    def add(self, item: Pending) -> None:
        self.queues[slot_of(item.length, self.buckets)].append(item)

    def summary(self, pulls: int) -> np.ndarray:
        """[samples per slot…, age in pulls of the oldest sample (-1: none), total pending]."""
        counts = [len(q) for q in self.queues]
        oldest = min((q[0].pull for q in self.queues if q), default=None)
        age = -1 if oldest is None else pulls - oldest
        return np.asarray([*counts, age, sum(counts)], np.int64)

    def take(self, decision: tuple[str, int]) -> list[Pending]:
        kind, slot = decision
        if kind == FULL:
            return [self.queues[slot].popleft() for _ in range(self.group)]
        out = []
        for _ in range(self.group):  # the oldest heads first: each queue is in pull order
            q = min((q for q in self.queues if q), key=lambda q: q[0].pull)
            out.append(q.popleft())
        return out

    def entries(self) -> list[list[int]]:
        """`[pull, index]` of every pending sample, in pull order (a checkpoint's record of them)."""
        return sorted([p.pull, p.index] for q in self.queues for p in q)

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues)
