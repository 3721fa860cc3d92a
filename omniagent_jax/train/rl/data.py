"""RL prompts: the reference's RL JSONL (docs/protocol.md §7.1) read into samples, bad rows counted and
skipped, and a resumable sampler of each step's prompts (optionally mixed by question type)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np

from omniagent_jax.agent import rewards
from omniagent_jax.agent.data import DataError, Sample, sample_from_row
from omniagent_jax.train.rl.config import RL_TYPES, RLDataConfig, parse_mix

log = logging.getLogger(__name__)


def read_rl_rows(cfg: RLDataConfig) -> tuple[list[Sample], list[str]]:
    """(the usable samples, one message per skipped row). Videos are resolved under `data_root`."""
    samples, bad = [], []
    try:
        with open(cfg.train_file, encoding="utf-8") as f:
            lines = f.readlines()
    except OSError as e:
        raise DataError(f"cannot read {cfg.train_file}: {e.strerror or e}") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{cfg.train_file}:{lineno}"
        try:
            sample = sample_from_row(json.loads(line), index=len(samples))
            if sample.major_type not in RL_TYPES:
                raise DataError(f"question type {sample.question_type!r} is not one RL trains on ({', '.join(RL_TYPES)})")
            if sample.answer is None:
                raise DataError("no answer to score against")
        except (ValueError, DataError) as e:
            bad.append(f"{where}: {e}")
            log.warning("skipping bad RL row %s: %s", where, e)
            continue
        video = sample.video if os.path.isabs(sample.video) else os.path.join(cfg.data_root, sample.video)
        samples.append(dataclasses.replace(sample, video=video, index=len(samples)))
    if not samples:
        raise DataError(f"{cfg.train_file}: no usable row ({len(bad)} bad)")
    return samples, bad


class PromptSampler:
    """Each step's prompts: per pool (a question type with `data.mix`, else all rows) the next rows of a
    permutation drawn per (seed, pool, epoch). Its state (epoch and cursor per pool) goes in checkpoints."""

    def __init__(self, samples: list[Sample], cfg: RLDataConfig, prompts: int, seed: int):
        self.samples, self.seed, self.shuffle = samples, seed, cfg.shuffle
        if cfg.mix:
            self.quota = parse_mix(cfg.mix)
            types = [rewards.major_type(s.question_type) for s in samples]
            self.pools = {k: [i for i, t in enumerate(types) if t == k] for k, _ in self.quota}
            empty = [k for k, idx in self.pools.items() if not idx]
            if empty:
                raise DataError(f"data.mix asks for {empty} questions but the train file has none")
        else:
            self.quota, self.pools = [("ALL", prompts)], {"ALL": list(range(len(samples)))}
        self.position = {k: [0, 0] for k in self.pools}  # pool -> [epoch, cursor]

    def _order(self, pool: str, epoch: int) -> list[int]:
        idx = self.pools[pool]
        if not self.shuffle:
            return idx
        key = sum(ord(c) for c in pool)
        perm = np.random.default_rng([self.seed, key, epoch]).permutation(len(idx))
        return [idx[i] for i in perm]

    def next_batch(self) -> list[Sample]:
        out = []
        for pool, count in self.quota:
            epoch, cursor = self.position[pool]
            for _ in range(count):
                order = self._order(pool, epoch)
                out.append(self.samples[order[cursor]])
                cursor += 1
                if cursor == len(order):
                    epoch, cursor = epoch + 1, 0
            self.position[pool] = [epoch, cursor]
        return out

    def get_state(self) -> dict[str, Any]:
        return {"position": {k: list(v) for k, v in self.position.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        self.position = {k: [int(a), int(b)] for k, (a, b) in state["position"].items()}
