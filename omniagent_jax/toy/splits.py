"""Writing a toy split to a folder and scoring scripted policies on it (docs/toy.md §1–§2).

A split folder holds ``<split>.jsonl`` (reference eval/RL rows, docs/protocol.md §7; each ``video`` is
relative to the folder, so ``iter_samples(path, resolve_videos=True)`` and the CLIs' data roots read it)
and ``videos/<split>_NNNNN.mp4``. Writing is resumable: a video already there is checked, not rewritten.
"""

from __future__ import annotations

import collections
import functools
import json
import multiprocessing
import os
import pathlib
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tqdm import tqdm

from omniagent_jax.agent.data import iter_samples
from omniagent_jax.agent.environment import VideoEnvironment
from omniagent_jax.agent.episode import EpisodeResult
from omniagent_jax.agent.rewards import is_correct
from omniagent_jax.agent.runner import run_episode
from omniagent_jax.toy import check, render, settings, world
from omniagent_jax.toy.expert import ExpertPolicy, UniformScanPolicy

VIDEO_DIR = "videos"
POLICIES: dict[str, Callable[[], Any]] = {"expert": ExpertPolicy, "uniform": UniformScanPolicy}


def rows_path(folder: str | pathlib.Path, split: str) -> pathlib.Path:
    return pathlib.Path(folder) / f"{split}.jsonl"


def ensure_video(folder: pathlib.Path, split: str, index: int, verify: bool = True) -> dict[str, Any]:
    """Task ``index`` of ``split``: its video written under ``folder`` unless there, checked unless ``verify`` is
    False; returns its row."""
    task = world.generate_task(split, index)
    video = folder / VIDEO_DIR / task.video_name
    if not video.exists():
        partial = video.with_suffix(".part.mp4")
        render.write_video(task, partial)
        os.replace(partial, video)  # a crash never leaves a half-written video under the final name
    if verify:
        check.check_video(task, video)
    return task.row(f"{VIDEO_DIR}/{task.video_name}")


def write_split(folder: str | pathlib.Path, split: str, count: int, *, start: int = 0, verify: bool = True,
                progress: bool = True, workers: int = 1) -> pathlib.Path:
    """Write tasks ``start .. start+count-1`` of ``split`` (videos checked by decoding unless ``verify`` is
    False; ``workers`` processes render them, each video single-threaded) and their rows; returns the JSONL
    path. Raises :class:`~omniagent_jax.toy.check.ToyCheckError` when a written video does not hold its task."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    folder = pathlib.Path(folder)
    (folder / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    indices = range(start, start + count)
    job = functools.partial(ensure_video, folder, split, verify=verify)
    bar = functools.partial(tqdm, total=count, desc=f"toy {split}", unit="video", file=sys.stderr, disable=not progress)
    if workers == 1:
        rows = [job(i) for i in bar(indices)]
    else:  # spawned, not forked: the caller may hold JAX's threads
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            rows = list(bar(pool.imap(job, indices)))
    path = rows_path(folder, split)
    tmp = path.with_suffix(".jsonl.part")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
    return path


def play(rows: str | pathlib.Path, policy: str, *, limit: int | None = None,
         progress: bool = True) -> list[tuple[str, EpisodeResult]]:
    """Play ``policy`` (``expert`` or ``uniform``) on the rows of a split file in toy episodes: (major type, result) each."""
    if policy not in POLICIES:
        raise ValueError(f"unknown toy policy {policy!r}; expected one of {sorted(POLICIES)}")
    samples = list(iter_samples(rows, resolve_videos=True))[:limit]
    if not samples:
        raise ValueError(f"{rows} has no rows")
    player = POLICIES[policy]()
    out = []
    for sample in tqdm(samples, desc=f"toy {policy}", unit="episode", file=sys.stderr, disable=not progress):
        with VideoEnvironment(sample, settings.env_config()) as env:
            out.append((sample.major_type, run_episode(env, player)))
    return out


def score_policy(rows: str | pathlib.Path, policy: str, *, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Accuracy (reward > 0.5) overall and per question type, mean reward and mean steps of ``policy`` on ``rows``."""
    by_type: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
    for qtype, result in play(rows, policy, limit=limit, progress=progress):
        by_type[qtype].append((result.total_reward, len(result.steps)))
    return summarize(by_type.items())


def summarize(groups: Iterable[tuple[str, Sequence[tuple[float, int]]]]) -> dict[str, Any]:
    """Accuracy / mean reward / mean steps overall and per type from (type, [(reward, steps)]) groups."""
    groups = dict(groups)
    everything = [x for g in groups.values() for x in g]

    def stats(xs: Sequence[tuple[float, int]]) -> dict[str, float]:
        return {"n": len(xs), "accuracy": sum(is_correct(r) for r, _ in xs) / len(xs),
                "mean_reward": sum(r for r, _ in xs) / len(xs), "mean_steps": sum(s for _, s in xs) / len(xs)}

    return {"overall": stats(everything), "by_type": {t: stats(xs) for t, xs in sorted(groups.items())}}
