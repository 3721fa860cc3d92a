"""The grain input pipeline of SFT: shuffle (a new order every epoch), per-process sharding,
multi-worker prefetch of encoded samples, bad rows counted and skipped, resumable state.

Samples are grouped `batch_size · grad_accum` at a time into one optimizer step's worth; the
trainer pads each group to a length bucket (`collate.py`). The iterator state (grain's position
plus our counters) is saved in every checkpoint, so a resumed run sees exactly the samples an
uninterrupted one would have.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grain

from omniagent_jax.train.config import DataConfig
from omniagent_jax.train.sft_data import SampleEncoder, SampleError, parse_line, read_lines, trajectory_rows

log = logging.getLogger(__name__)


class _Encode:
    """Worker-side map: raw line → encoded sample, or `{"error": message}` for a bad row."""

    def __init__(self, encoder: SampleEncoder, mode: str):
        self.encoder = encoder
        self.mode = mode

    def __call__(self, item: tuple[int, Any]) -> dict[str, Any]:
        index, raw = item
        where = f"sample {index}"
        try:
            row = raw if self.mode == "trajectory" else parse_line(raw, where)
            return self.encoder.encode(row, where)
        except SampleError as e:
            return {"error": str(e)}


class SFTBatches:
    """Iterator of lists of encoded samples, one list per optimizer step."""

    def __init__(self, cfg: DataConfig, encoder: SampleEncoder, *, seed: int, process_index: int = 0, process_count: int = 1):
        self.cfg = cfg
        self.group = cfg.batch_size * cfg.grad_accum
        if self.group % process_count:
            raise ValueError(f"batch_size·grad_accum = {self.group} must be divisible by {process_count} processes")
        self.local_group = self.group // process_count
        lines = read_lines(cfg.train_file)
        self.bad_rows = 0
        items: list[tuple[int, Any]]
        if cfg.mode == "trajectory":
            rows = []
            for i, line in enumerate(lines):
                try:
                    rows.append(parse_line(line, f"{cfg.train_file}:{i + 1}"))
                except SampleError as e:
                    self._warn(str(e))
            items = list(enumerate(trajectory_rows(rows)))
        else:
            items = list(enumerate(lines))
        if not items:
            raise ValueError(f"{cfg.train_file}: no samples")
        self.num_samples = len(items)
        ds = grain.MapDataset.source(items)
        if cfg.shuffle:
            ds = ds.shuffle(seed=seed)  # grain draws a fresh permutation for every repeat
        ds = ds.repeat(None)[process_index::process_count]
        ids = ds.to_iter_dataset().map(_Encode(encoder, cfg.mode))
        if cfg.workers > 0:
            ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers))
        self._it = iter(ids)
        self.samples_seen = 0

    def _warn(self, message: str) -> None:
        self.bad_rows += 1
        log.warning("skipping bad row (%d so far): %s", self.bad_rows, message)

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        return self

    def __next__(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        misses = 0
        while len(out) < self.local_group:
            sample = next(self._it)
            self.samples_seen += 1
            if "error" in sample:
                self._warn(sample["error"])
                misses += 1
                if misses > max(100, 10 * self.num_samples):
                    raise RuntimeError(f"{self.cfg.train_file}: no usable sample in {misses} rows (see warnings)")
                continue
            out.append(sample)
        return out

    def get_state(self) -> dict[str, Any]:
        return {"grain": self._it.get_state(), "bad_rows": self.bad_rows, "samples_seen": self.samples_seen}

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.set_state(state["grain"])
        self.bad_rows = int(state["bad_rows"])
        self.samples_seen = int(state["samples_seen"])
