"""The grain input pipeline of SFT: shuffle (a new order every epoch), per-process sharding,
multi-worker prefetch of encoded samples, bad rows counted and skipped, length grouping, resumable
state.

Every optimizer step gets a `Group`: this process's `batch_size · grad_accum / processes` samples
and the length they are padded to, the same on every process. With `data.group_by_length` the
samples of a group come from one length bucket (`grouping.py`), so one long sample no longer makes
a whole group of short ones pay its bucket; without it a group is the next samples of the shuffled
stream, padded to the bucket of the longest sample on any process. The iterator state (grain's
position, our counters and the pending samples' indices) is saved in every checkpoint, so a resumed
run sees exactly the samples an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np

from omniagent_jax.train.config import DataConfig
from omniagent_jax.train.grouping import LengthQueues, Pending, bucket_length, decide
from omniagent_jax.train.sft_data import SampleEncoder, SampleError, parse_line, read_lines, trajectory_rows

log = logging.getLogger(__name__)

Gather = Callable[[np.ndarray], np.ndarray]  # this process's row → every process's row, stacked


class _Encode:
    """Worker-side map: `(index, raw)` → `{"index", "sample"}`, or `{"index", "error"}` for a bad row."""

    def __init__(self, encoder: SampleEncoder, mode: str):
        self.encoder = encoder
        self.mode = mode

    def __call__(self, item: tuple[int, Any]) -> dict[str, Any]:
        index, raw = item
        where = f"sample {index}"
        try:
            row = raw if self.mode == "trajectory" else parse_line(raw, where)
            return {"index": index, "sample": self.encoder.encode(row, where)}
        except SampleError as e:
            return {"index": index, "error": str(e)}


def process_allgather(row: np.ndarray) -> np.ndarray:
    """Every process's `row`, stacked (a host-level collective; all processes must call it)."""
    from jax.experimental import multihost_utils  # lazily: worker processes never import JAX

    return np.asarray(multihost_utils.process_allgather(row))


def _parse_absl_flags() -> None:
    """grain 0.2.x's multi-worker prefetch reads an absl flag and raises `UnparsedFlagAccessError`
    outside an `absl.app` program (google/grain#1355, fixed upstream later): mark the flags parsed,
    at their defaults, unless the program already parsed them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@dataclasses.dataclass
class Group:
    """One optimizer step's samples on this process."""

    samples: list[dict[str, Any]]
    indices: list[int]  # source item index of each sample
    length: int  # the padded length, agreed by every process


class SFTBatches:
    """Iterator of `Group`s, one per optimizer step.

    `gather` exchanges a small int row between processes (default: `process_allgather` when there
    is more than one); tests pass their own to run several "processes" in one."""

    def __init__(self, cfg: DataConfig, encoder: SampleEncoder, *, seed: int, process_index: int = 0, process_count: int = 1,
                 gather: Gather | None = None):
        self.cfg = cfg
        self.group = cfg.batch_size * cfg.grad_accum
        if self.group % process_count:
            raise ValueError(f"batch_size·grad_accum = {self.group} must be divisible by {process_count} processes")
        self.local_group = self.group // process_count
        self._gather = gather or (process_allgather if process_count > 1 else lambda row: row[None])
        self.bad_rows = 0
        self._items = self._read_items(cfg)
        self.num_samples = len(self._items)
        # Rule 2 of `grouping.py`: no sample waits longer than one epoch of this process's shard.
        self.max_wait = math.ceil(self.num_samples / process_count)
        self._encode = _Encode(encoder, cfg.mode)
        ds = grain.MapDataset.source(self._items)
        if cfg.shuffle:
            ds = ds.shuffle(seed=seed)  # grain draws a fresh permutation for every repeat
        ds = ds.repeat(None)[process_index::process_count]
        ids = ds.to_iter_dataset().map(self._encode)
        if cfg.workers > 0:
            _parse_absl_flags()
            ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers))
        self._it = iter(ids)
        self._queues = LengthQueues(cfg.buckets, self.local_group)
        self.samples_seen = 0  # rows pulled from the stream by this process, bad ones included
        self._misses = 0

    def _read_items(self, cfg: DataConfig) -> list[tuple[int, Any]]:
        lines = read_lines(cfg.train_file)
        if cfg.mode == "trajectory":
            rows = []
            for i, line in enumerate(lines):
                try:
                    rows.append(parse_line(line, f"{cfg.train_file}:{i + 1}"))
                except SampleError as e:
                    self._warn(str(e))
            items: list[tuple[int, Any]] = list(enumerate(trajectory_rows(rows)))
        else:
            items = list(enumerate(lines))
        if not items:
            raise ValueError(f"{cfg.train_file}: no samples")
        return items

    def _warn(self, message: str) -> None:
        self.bad_rows += 1
        log.warning("skipping bad row (%d so far): %s", self.bad_rows, message)

    def _pull(self) -> Pending | None:
        """One row from the stream: the encoded sample, or None for a bad row (counted)."""
        out = next(self._it)
        self.samples_seen += 1
        if "error" in out:
            self._warn(out["error"])
            self._misses += 1
            if self._misses > max(100, 10 * self.num_samples):
                raise RuntimeError(f"{self.cfg.train_file}: no usable sample in {self._misses} rows (see warnings)")
            return None
        self._misses = 0
        return Pending(self.samples_seen, out["index"], out["sample"])

    def __iter__(self) -> Iterator[Group]:
        return self

    def __next__(self) -> Group:
        if not self.cfg.group_by_length:
            taken: list[Pending] = []
            while len(taken) < self.local_group:
                if (p := self._pull()) is not None:
                    taken.append(p)
            return self._group(taken)
        while True:
            table = self._gather(self._queues.summary(self.samples_seen))
            decision = decide(table, self.local_group, self.max_wait)
            if decision is not None:
                return self._group(self._queues.take(decision))
            if (p := self._pull()) is not None:
                self._queues.add(p)

    def _group(self, taken: list[Pending]) -> Group:
        local = max(bucket_length(p.length, self.cfg.buckets) for p in taken)
        length = int(self._gather(np.asarray([local], np.int64)).max())  # every process pads alike
        return Group([p.sample for p in taken], [p.index for p in taken], length)

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._it.get_state(), "bad_rows": self.bad_rows, "samples_seen": self.samples_seen,
                "misses": self._misses, "pending": self._queues.entries()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores a `get_state`; pending samples are re-encoded from their source items."""
        self._it.set_state(state["grain"])
        self.bad_rows = int(state["bad_rows"])
        self.samples_seen = int(state["samples_seen"])
        self._misses = int(state.get("misses", 0))
        self._queues = LengthQueues(self.cfg.buckets, self.local_group)
        for pull, index in state.get("pending", []):
            out = self._encode(self._items[index])
            if "error" in out:
                raise RuntimeError(f"resuming: pending sample {index} no longer encodes: {out['error']}")
            self._queues.add(Pending(int(pull), int(index), out["sample"]))
