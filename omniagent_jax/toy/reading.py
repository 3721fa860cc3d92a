"""Frame-reading rows (docs/toy.md §5): the curriculum that teaches the toy decoder to read its frozen towers'
image tokens before the agentic SFT.

Trained on the expert's rows alone, the decoder never starts reading the images: the few log entries that need
a look (a lit square among mostly empty frames) are too small a share of the loss, and the model settles on the
text prior. Rows made only of that look learn it: first one frame and what it shows (``frames=1``; the decoder
starts using the image after ≈ 450 steps of 16 such rows), then the frame log the expert writes, after a task's
question and a frames message laid out as the environment writes it (12 frames over the whole video or between
scan frames around one of its events). Label rows (a look at a random grid span, the output only its labels) train
the look-up of a frame's label in the prompt, and copy rows (text only: a frame log repeated) copying from the context,
each on its own. Agent rows put a look in the agent's own layout (the expert's second turn, its look replaced).
Numpy + media + the expert; no JAX.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from omniagent_jax.agent import prompts
from omniagent_jax.media import open_video
from omniagent_jax.toy import perceive, world
from omniagent_jax.toy.expert import ExpertPolicy, first_look, frame_log, log_entry

COPY_ENTRIES = (2, 9)  # entries per copy row (inclusive): rows stay within COPY_MAX_TOKENS
COPY_MAX_TOKENS = 128  # the longest copy row in toy tokens, chat template included: the copy phase's max_length
LOG_WORDS = ("-", "lit", "dot", *world.COLOURS)  # what a frame-log entry says before its label


def _frames_message(times: list[float], video: str) -> list[dict[str, Any]]:
    """The content of a frames message at ``times`` (the environment's header and labels; images cut from ``video``)."""
    parts = [{"type": "text", "text": prompts.frames_header(times[0], times[-1], len(times))}]
    for t in times:
        parts += [{"type": "text", "text": prompts.frame_label(t)}, {"type": "image", "image": video}]
    return parts


def _labels(times: list[float]) -> list[str]:
    """The frame labels of ``times`` as a log writes them (``12.50s``)."""
    return [prompts.format_seconds(t) + "s" for t in times]


def _frame_at(t: float) -> int:
    """The index of the first frame shown at or after ``t`` (event times are on the frame grid)."""
    return math.ceil(t * world.FPS - 1e-6)


def _scan_times(task: world.Task) -> list[float]:
    """The expert's coarse scan: 12 frames over the whole video."""
    return np.linspace(0.0, float(task.duration), world.MAX_FRAMES).tolist()


def _one_frame_time(rng: np.random.Generator, task: world.Task) -> list[float]:
    """One frame on the frame grid, inside a lit span half the time."""
    spans = [(e.start, e.end) for e in task.events]
    start, end = spans[rng.integers(len(spans))] if rng.random() < 0.5 else (0.0, float(task.duration))
    return [round(float(rng.uniform(start, end)) * world.FPS) / world.FPS]


def _expert_look_times(rng: np.random.Generator, task: world.Task) -> list[float]:
    """A look of 12 frames as the expert takes them: the whole video, or between two scan frames 1–3 spacings apart
    around an event (the question's own event three times in four), so every label is a grid time (one token)."""
    spans = [(e.start, e.end) for e in task.events]
    scan = _scan_times(task)
    if rng.random() < 0.5:
        return scan
    start, _ = spans[task.target] if rng.random() < 0.75 else spans[rng.integers(len(spans))]
    spacings = int(rng.integers(1, 4))
    first = int(np.clip(int(start // world.coarse_spacing(task.duration)) - int(rng.integers(0, 2)), 0,
                        world.MAX_FRAMES - 1 - spacings))
    return np.linspace(scan[first], scan[first + spacings], world.MAX_FRAMES).tolist()


def _grid_look(start: int, step: int) -> list[float]:
    """12 frame times from frame ``start`` on, ``step`` frames apart."""
    return [(start + k * step) / world.FPS for k in range(world.MAX_FRAMES)]


def _random_look_times(rng: np.random.Generator, task: world.Task) -> list[float]:
    """A look of 12 frames at a random start and spacing on the frame grid (inside the video): its labels follow no
    pattern a model could recall, so writing them takes looking each one up in the prompt."""
    frames = task.frame_count
    step = int(rng.integers(1, frames // (world.MAX_FRAMES - 1) + 1))
    return _grid_look(int(rng.integers(0, frames - step * (world.MAX_FRAMES - 1) + 1)), step)


def _event_look_times(rng: np.random.Generator, task: world.Task) -> list[float]:
    """A look of 12 frames around the question's event at a random grid step of at most half its lit span (so at
    least two frames are lit where the span allows) and a random start that puts the event's first frame inside the
    look: the labels must be looked up, as in :func:`_random_look_times`, and lit frames come in runs, as in the
    expert's focused looks."""
    frames = task.frame_count
    event = task.events[task.target]
    lit = int((event.end - event.start) * world.FPS)
    step = int(rng.integers(1, max(1, min(frames // (world.MAX_FRAMES - 1), lit // 2)) + 1))
    span = step * (world.MAX_FRAMES - 1)
    first_lit = _frame_at(event.start)
    return _grid_look(int(rng.integers(max(0, first_lit - span), min(first_lit, frames - span) + 1)), step)


def _single_look_times(rng: np.random.Generator, task: world.Task) -> list[float]:
    """A look of 12 frames at distinct random grid times in increasing order, exactly one of them inside the question's
    lit span (MCQ: inside one of its two squares' spans and no other): the one lit frame among twelve that a whole-video
    scan of a short event shows, at a place no pattern predicts, so naming it takes reading that frame."""
    frames = task.frame_count
    spans = [(_frame_at(e.start), _frame_at(e.end)) for e in task.events]
    start, end = spans[task.target] if task.question_type != "MCQ" else spans[rng.integers(len(spans))]
    dark = np.setdiff1d(np.arange(frames), np.concatenate([np.arange(a, b) for a, b in spans]))
    picked = [int(rng.integers(start, end)), *rng.choice(dark, world.MAX_FRAMES - 1, replace=False).tolist()]
    return [f / world.FPS for f in sorted(picked)]


# How the log and word phases place their 12-frame looks (docs/toy.md §5): as the expert takes them, around the question's
# event at a random grid step, or one lit frame among eleven at random times.
LOG_LOOKS = {"expert": _expert_look_times, "event": _event_look_times, "single": _single_look_times}


def label_rows(tasks: list[Mapping[str, Any]], data_root: str | pathlib.Path, *, per_task: int,
               seed: int) -> Iterator[dict[str, Any]]:
    """``per_task`` rows per task: its question and a look of 12 frames at a random grid span, the output only the
    frames' labels in order (``66.00s, 68.25s, …``): the look-up of the label after the one just written, with each
    frame's image between two labels, on its own (docs/toy.md §5)."""
    rng = np.random.default_rng(seed)
    for task, video in _task_videos(tasks, data_root, per_task):
        for _ in range(per_task):
            times = _random_look_times(rng, task)
            content = [{"type": "text", "text": _question(task)}, *_frames_message(times, video)]
            yield _row(content, ", ".join(_labels(times)), video, task)


def _task_videos(tasks: list[Mapping[str, Any]], data_root: str | pathlib.Path,
                 per_task: int) -> Iterator[tuple[world.Task, str]]:
    """Each task row's task and the path of its video under ``data_root``."""
    if per_task < 1:
        raise ValueError(f"per_task must be >= 1, got {per_task}")
    for row in tasks:
        info = row["extra_info"]
        yield world.generate_task(info["split"], info["index"]), str(pathlib.Path(data_root) / row["video"])


def _row(content: list[dict[str, Any]], output: str, video: str, task: world.Task) -> dict[str, Any]:
    """One SFT step row: a user message of ``content`` and the reply ``output``."""
    return {"raw_input": [{"role": "user", "content": content}], "output": output,
            "extra_info": {"video": video, "question_type": task.question_type}}


def _question(task: world.Task) -> str:
    """The task's question as the first user message states it."""
    return prompts.question_text(task.question, task.question_type, list(task.options), duration=float(task.duration),
                                 fps=float(world.FPS), has_audio=True)


def reading_rows(tasks: list[Mapping[str, Any]], data_root: str | pathlib.Path, *, frames: int | None,
                 per_task: int, seed: int, looks: str = "expert", words: bool = False) -> Iterator[dict[str, Any]]:
    """``per_task`` step rows (the SFT ``raw_input`` / ``output`` / ``extra_info.video`` format) per task row of a
    split written under ``data_root``: with ``frames=1`` one frame and its colour log entry; with ``frames=None``
    the task's question, a look of 12 frames placed as ``looks`` says (a :data:`LOG_LOOKS` key) and the frame log
    the expert writes for that question. ``words``: the log without its labels (``-, -, magenta``), what each frame
    shows in frame order: reading on its own, which a label to copy keeps from forming (docs/toy.md §5)."""
    if frames not in (1, None):
        raise ValueError(f"frames must be 1 or None, got {frames!r}")
    if looks not in LOG_LOOKS:
        raise ValueError(f"looks must be one of {sorted(LOG_LOOKS)}, got {looks!r}")
    look_times = _one_frame_time if frames == 1 else LOG_LOOKS[looks]
    rng = np.random.default_rng(seed)
    for task, video in _task_videos(tasks, data_root, per_task):
        reader = open_video(video)
        for _ in range(per_task):
            times = look_times(rng, task)
            seen = [perceive.look(np.asarray(f)) for f in reader.frames(times)]
            labels = _labels(times)
            content = _frames_message(times, video)
            if frames == 1:
                output = frame_log(labels, seen, with_labels=not words)
            else:
                focus = "" if task.question_type == "MCQ" else task.events[task.target].colour
                sizes = task.question_type == "SIZE" and rng.random() < 0.5
                content = [{"type": "text", "text": _question(task)}, *content]
                output = frame_log(labels, seen, focus, sizes=sizes, with_labels=not words)
            yield _row(content, output, video, task)


def agent_rows(step_rows: Iterable[Mapping[str, Any]], tasks: list[Mapping[str, Any]], data_root: str | pathlib.Path, *,
               per_task: int, seed: int, scan_share: float = 0.5) -> Iterator[dict[str, Any]]:
    """Reading rows in the agent's own layout: ``per_task`` rows per expert episode of ``step_rows`` (its second
    turn: system prompt, question, first turn, the frames of the first look), the look replaced by the whole-video
    scan (a ``scan_share`` of the rows) or a look around the question's event (:func:`_event_look_times`), the first
    turn asking for that look, the output the expert's reply to those frames. ``tasks`` are the split's task rows
    (videos under ``data_root``); reading learned in the bare log layout does not carry into this one (docs/toy.md §5)."""
    if per_task < 1:
        raise ValueError(f"per_task must be >= 1, got {per_task}")
    if not 0.0 <= scan_share <= 1.0:
        raise ValueError(f"scan_share must be in [0, 1], got {scan_share}")
    by_video = {pathlib.Path(row["video"]).name: row for row in tasks}
    rng = np.random.default_rng(seed)
    expert = ExpertPolicy()
    for step_row in step_rows:
        if step_row.get("step") != 2:
            continue
        name = pathlib.Path(step_row["extra_info"]["video"]).name
        if name not in by_video:
            raise ValueError(f"step row {step_row.get('question_id')!r}: video {name} is not in the task rows")
        task_row = by_video[name]
        task = world.generate_task(task_row["extra_info"]["split"], task_row["extra_info"]["index"])
        video = str(pathlib.Path(data_root) / task_row["video"])
        system, question, _, look = step_row["raw_input"]
        notice = look["content"][-1]  # the step countdown after the frames
        reader = open_video(video)
        for _ in range(per_task):
            scan = rng.random() < scan_share
            times = _scan_times(task) if scan else _event_look_times(rng, task)
            labels = _labels(times)
            first = {"role": "assistant", "content": [{"type": "text", "text": first_look(labels[0], labels[-1], len(times),
                                                                                             scan=scan)}]}
            frames = {"role": "user", "content": [*_frames_message(times, video), notice]}
            pictures = iter(reader.frames(times))
            seen = {"role": "user", "content": [{**p, "image": np.asarray(next(pictures))} if p["type"] == "image" else p
                                                for p in frames["content"]]}
            output = expert.generate([system, question, first, seen]).text
            yield {"raw_input": [system, question, first, frames], "output": output,
                   "extra_info": {"video": video, "question_type": task.question_type}}


def copy_rows(count: int, seed: int) -> Iterator[dict[str, Any]]:
    """``count`` text-only rows whose output repeats the user's message: a frame log of 2–9 entries at random times
    on the frame grid in 0–575 s (``lit 163.75s, - 170.00s``): copying from the context (an induction head), the first
    hop of every log entry, summary and action the agent writes, on its own. 1,200 steps of 32 copy 76 % of the tokens; text-only
    rows also erase the frame reading learned before them (docs/toy.md §5)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(COPY_ENTRIES[0], COPY_ENTRIES[1] + 1))
        times = np.round(rng.uniform(0.0, float(world.MAX_DURATION), n) * world.FPS) / world.FPS
        text = ", ".join(log_entry(LOG_WORDS[rng.integers(len(LOG_WORDS))], label) for label in _labels(times.tolist()))
        yield {"raw_input": [{"role": "user", "content": [{"type": "text", "text": text}]}], "output": text,
               "extra_info": {}}


def _write_rows(rows: Iterator[dict[str, Any]], out: pathlib.Path) -> pathlib.Path:
    """``rows`` as JSONL at ``out``, through a temporary file: a killed run never leaves a partial file under the
    final name."""
    partial = out.with_suffix(".part")
    with open(partial, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    partial.replace(out)
    return out


def write_copy_rows(out: str | pathlib.Path, *, count: int, seed: int) -> pathlib.Path:
    """:func:`copy_rows` written to ``out`` as JSONL."""
    return _write_rows(copy_rows(count, seed), pathlib.Path(out))


def _read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_reading_rows(tasks_path: str | pathlib.Path, out: str | pathlib.Path, *, frames: int | None, per_task: int,
                       seed: int, looks: str = "expert", words: bool = False) -> pathlib.Path:
    """:func:`reading_rows` over the task rows of ``tasks_path`` (videos beside it), written to ``out`` as JSONL."""
    tasks_path = pathlib.Path(tasks_path)
    rows = reading_rows(_read_jsonl(tasks_path), tasks_path.parent, frames=frames, per_task=per_task, seed=seed,
                        looks=looks, words=words)
    return _write_rows(rows, pathlib.Path(out))


def write_agent_rows(step_rows_path: str | pathlib.Path, tasks_path: str | pathlib.Path, out: str | pathlib.Path, *,
                     per_task: int, seed: int, scan_share: float = 0.5) -> pathlib.Path:
    """:func:`agent_rows` from the expert's step rows at ``step_rows_path`` and the task rows of ``tasks_path``
    (videos beside it), written to ``out`` as JSONL."""
    tasks_path = pathlib.Path(tasks_path)
    rows = agent_rows(_read_jsonl(pathlib.Path(step_rows_path)), _read_jsonl(tasks_path), tasks_path.parent,
                      per_task=per_task, seed=seed, scan_share=scan_share)
    return _write_rows(rows, pathlib.Path(out))


def write_label_rows(tasks_path: str | pathlib.Path, out: str | pathlib.Path, *, per_task: int, seed: int) -> pathlib.Path:
    """:func:`label_rows` over the task rows of ``tasks_path`` (videos beside it), written to ``out`` as JSONL."""
    tasks_path = pathlib.Path(tasks_path)
    rows = label_rows(_read_jsonl(tasks_path), tasks_path.parent, per_task=per_task, seed=seed)
    return _write_rows(rows, pathlib.Path(out))
