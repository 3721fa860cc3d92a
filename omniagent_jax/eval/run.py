"""One eval run (one shard of it): play the pending samples through the episode driver, append each
row as it finishes, then write the summaries (docs/protocol.md §11, docs/architecture.md §2.5).

Resume rules: a sample with an `ok` row is done; one with an `error` row is done too unless
`retry_errors`; everything else (never played, or torn off by a kill mid-write) is played. The results
are the same whichever samples a run resumed from, because an episode's seed is
`episode_seed(run seed, sample_index)` and its turns' seeds derive from it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from omniagent_jax.agent.driver import Episode, EpisodeDriver
from omniagent_jax.agent.environment import EnvConfig, TokenCounter, VideoEnvironment
from omniagent_jax.agent.episode import EpisodeResult
from omniagent_jax.agent.policy import ConcurrentPolicy, Policy
from omniagent_jax.agent.rewards import Judge
from omniagent_jax.eval import results_file
from omniagent_jax.eval.dataset import EvalItem
from omniagent_jax.eval.metadata import utc_now
from omniagent_jax.eval.rows import STATUS_OK, result_row
from omniagent_jax.processing.policy_contract import episode_seed


def results_name(shard: tuple[int, int]) -> str:
    """`results.jsonl`, or `results.shard-K.jsonl` for shard K of several."""
    return "results.jsonl" if shard[1] == 1 else f"results.shard-{shard[0]}.jsonl"


def metadata_name(shard: tuple[int, int]) -> str:
    return "run_metadata.json" if shard[1] == 1 else f"run_metadata.shard-{shard[0]}.json"


def pending(items: Sequence[EvalItem], done_rows: Mapping[int, Mapping[str, Any]], *, retry_errors: bool) -> list[EvalItem]:
    """The items still to play: no row yet, or (with `retry_errors`) an error row."""
    def finished(item: EvalItem) -> bool:
        row = done_rows.get(item.index)
        return row is not None and (row.get("status") == STATUS_OK or not retry_errors)

    return [item for item in items if not finished(item)]


@dataclasses.dataclass
class Played:
    """What one invocation played: its rows and wall time (for samples/min)."""

    rows: list[dict[str, Any]]
    wall_seconds: float

    @property
    def samples_per_minute(self) -> float:
        return 60.0 * len(self.rows) / self.wall_seconds if self.wall_seconds > 0 else 0.0


class _Progress:
    """tqdm on stderr with the accuracy so far and samples/min (ETA is tqdm's)."""

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, disable=not enabled, desc=desc, unit="sample", file=sys.stderr, dynamic_ncols=True)
        self.ok = self.correct = self.errors = 0
        self.t0 = time.perf_counter()

    def update(self, row: Mapping[str, Any]) -> None:
        if row["status"] == STATUS_OK:
            self.ok += 1
            self.correct += bool(row["correct"])
        else:
            self.errors += 1
        minutes = (time.perf_counter() - self.t0) / 60
        self.bar.set_postfix(acc=f"{self.correct / self.ok:.3f}" if self.ok else "n/a", err=self.errors,
                             per_min=f"{(self.ok + self.errors) / minutes:.1f}" if minutes > 0 else "n/a", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def play(items: Sequence[EvalItem], policy: Policy | ConcurrentPolicy, *, config: EnvConfig, run_seed: int,
         results_path: pathlib.Path, run: Mapping[str, Any], judge: Judge | None = None,
         token_counter: TokenCounter | None = None, max_live: int = 8, workers: int = 4,
         sample_timeout: float | None = None, progress: bool = True, desc: str = "eval",
         media_opener: Callable[[str], Any] | None = None) -> Played:
    """Plays `items` and appends one row per sample to `results_path` as each finishes."""
    by_key = {str(item.index): item for item in items}
    envs: dict[str, VideoEnvironment] = {}
    started: dict[str, tuple[float, str]] = {}
    timed_out: set[str] = set()
    rows: list[dict[str, Any]] = []

    def factory(key: str) -> Callable[[], VideoEnvironment]:
        def make() -> VideoEnvironment:
            started[key] = (time.monotonic(), utc_now())
            env = VideoEnvironment(by_key[key].sample, config, judge=judge, token_counter=token_counter,
                                   **({"media_opener": media_opener} if media_opener is not None else {}))
            envs[key] = env
            return env

        return make

    bar = _Progress(len(items), progress, desc)
    t0 = time.perf_counter()
    with results_file.ResultsWriter(results_path) as writer:
        def on_episode(key: str, result: EpisodeResult) -> None:
            t_start = started.pop(key, (0.0, utc_now()))[1]
            row = result_row(by_key[key], result, envs.pop(key, None), run=run, started_at=t_start, ended_at=utc_now(),
                             timed_out=key in timed_out)
            writer.write(row)
            rows.append(row)
            bar.update(row)

        driver = EpisodeDriver(policy, max_live=max_live, workers=workers, on_episode=on_episode)
        stop = threading.Event()
        watchdog = None
        if sample_timeout is not None:
            def watch() -> None:
                while not stop.wait(0.1):
                    now = time.monotonic()
                    for key, (t, _) in list(started.items()):
                        if key not in timed_out and now - t > sample_timeout:
                            timed_out.add(key)
                            driver.cancel(key)

            watchdog = threading.Thread(target=watch, name="eval-timeout", daemon=True)
            watchdog.start()
        episodes = [Episode(key, factory(key), seed=episode_seed(run_seed, item.index)) for key, item in by_key.items()]
        try:
            driver.run(episodes)
        finally:
            stop.set()
            if watchdog is not None:
                watchdog.join()
            bar.close()
    return Played(rows, time.perf_counter() - t0)


def print_line(out: TextIO | None, text: str) -> None:
    print(text, file=out or sys.stdout)
    (out or sys.stdout).flush()


def gpu_label() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")
