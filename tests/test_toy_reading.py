"""The frame-reading rows (toy.reading): what each row's output says is what its frames show (checked against the
world's event schedule, not the perception code), laid out as the environment writes frames, loadable by SFT."""

from __future__ import annotations

import json
import math
import re

import pytest
import toy_helpers

from omniagent_jax.agent import prompts
from omniagent_jax.agent.data import iter_samples
from omniagent_jax.agent.messages import serialize_messages
from omniagent_jax.model.config import REPO_CONFIGS
from omniagent_jax.processing import OmniProcessor
from omniagent_jax.toy import settings, splits, world
from omniagent_jax.toy.reading import (
    COPY_MAX_TOKENS,
    LOG_WORDS,
    agent_rows,
    copy_rows,
    label_rows,
    reading_rows,
    write_agent_rows,
    write_copy_rows,
    write_label_rows,
    write_reading_rows,
)
from omniagent_jax.train.sft_data import SampleEncoder


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    path = toy_helpers.sample_split(tmp_path_factory)
    return path, [json.loads(line) for line in path.read_text().splitlines()]


def _frame_time(task: world.Task, t: float) -> float:
    """The time of the frame a look at ``t`` returns: the first at or after it (the last frame past the end)."""
    return min(math.ceil(t * world.FPS - 1e-6), task.duration * world.FPS - 1) / world.FPS


def _lit_colours(task: world.Task, t: float) -> list[str]:
    """Colours of the squares lit in the frame a look at ``t`` returns, in cell order (the world's schedule)."""
    frame_t = _frame_time(task, t)
    return [e.colour for e in sorted(task.events, key=lambda e: e.cell) if e.start <= frame_t < e.end]


def _texts(row: dict) -> list[str]:
    return [p["text"] for p in row["raw_input"][0]["content"] if p["type"] == "text"]


def test_one_frame_rows_name_what_is_lit(tasks):
    path, rows = tasks
    out = list(reading_rows(rows, path.parent, frames=1, per_task=6, seed=0))
    assert len(out) == 6 * len(rows)
    lit = 0
    for i, row in enumerate(out):
        task = world.generate_task("test", rows[i // 6]["extra_info"]["index"])
        header, label = _texts(row)
        t = float(re.fullmatch(r"Frame (\S+)s:", label).group(1))
        assert header == prompts.frames_header(t, t, 1)
        assert [p["type"] for p in row["raw_input"][0]["content"]] == ["text", "text", "image"]
        colours = _lit_colours(task, t)
        assert row["output"] == f"{' '.join(colours) or '-'} {prompts.format_seconds(t)}s"
        lit += bool(colours)
    assert 0.25 * len(out) < lit < 0.9 * len(out)  # about half the frames are picked inside a lit span


def _log_times(task: world.Task, row: dict) -> list[float]:
    """A frame-log row's look, checked as the environment lays it out after the task's question."""
    question, header, *labels = _texts(row)
    assert question.startswith(prompts.format_meta(float(task.duration), world.FPS, True) + "Question: " + task.question)
    times = [float(re.fullmatch(r"Frame (\S+)s:", x).group(1)) for x in labels]
    assert len(times) == world.MAX_FRAMES and times == sorted(times)
    assert all((t * world.FPS).is_integer() for t in times)  # grid times, one token each
    assert header == prompts.frames_header(times[0], times[-1], len(times))
    return times


def _check_log(task: world.Task, times: list[float], output: str) -> int:
    """The log names what each frame shows (the world's schedule); returns how many frames show the question's square lit."""
    entries = output.split(", ")  # each: what the frame shows, then its label
    assert [e.rsplit(" ", 1)[1] for e in entries] == [prompts.format_seconds(t) + "s" for t in times]
    target = task.events[task.target]
    focused = 0
    for t, entry in zip(times, entries):
        what = entry.rsplit(" ", 1)[0]
        if task.question_type == "MCQ":
            assert what == (" ".join(_lit_colours(task, t)) or "-")
        else:  # the log of the question's square: lit (with its size on some SIZE rows), its dot, or nothing
            frame_t = _frame_time(task, t)
            expected = "lit" if target.start <= frame_t < target.end else "dot" if frame_t >= target.end else "-"
            assert what in ((expected, f"lit {target.size}px") if expected == "lit" else (expected,)), (entry, task)
        focused += target.start <= _frame_time(task, t) < target.end
    return focused


def test_frame_log_rows_follow_the_question(tasks):
    path, rows = tasks
    out = list(reading_rows(rows, path.parent, frames=None, per_task=4, seed=1))
    focused = 0
    for i, row in enumerate(out):
        task = world.generate_task("test", rows[i // 4]["extra_info"]["index"])
        times = _log_times(task, row)
        scan = world.coarse_spacing(task.duration)  # looks as the expert takes them: the scan or 1–3 of its spacings
        assert times[0] == 0.0 and times[-1] == task.duration or round((times[-1] - times[0]) / scan, 6) in (1, 2, 3)
        focused += _check_log(task, times, row["output"])
    assert focused > 0


def test_event_looks_surround_the_question_event(tasks):
    """``looks="event"``: 12 frames at a random grid step of at most half the event's lit span, the event's first
    frame inside the look; the log is the expert's for those frames."""
    path, rows = tasks
    out = list(reading_rows(rows, path.parent, frames=None, per_task=6, seed=4, looks="event"))
    assert len(out) == 6 * len(rows)
    looks, runs = set(), 0
    for i, row in enumerate(out):
        task = world.generate_task("test", rows[i // 6]["extra_info"]["index"])
        target = task.events[task.target]
        times = _log_times(task, row)
        (step,) = {round((b - a) * world.FPS) for a, b in zip(times, times[1:])}
        lit_frames = round((target.end - target.start) * world.FPS)
        assert 1 <= step <= max(1, lit_frames // 2) and times[-1] <= task.duration
        assert times[0] <= math.ceil(target.start * world.FPS) / world.FPS <= times[-1]  # the event begins inside
        looks.add((task.duration, times[0], step))
        runs += _check_log(task, times, row["output"]) >= 2
    assert runs > 0.6 * len(out)  # lit frames come in runs
    assert len(looks) > 2 * len(rows)  # starts and steps vary per look, not one look per video


def test_single_looks_hold_one_lit_frame(tasks):
    """``looks="single"``: 12 distinct grid times in order, exactly one inside the question's lit span (MCQ: inside
    one square's span) and none inside another event's; the log is the expert's for those frames."""
    path, rows = tasks
    out = list(reading_rows(rows, path.parent, frames=None, per_task=6, seed=8, looks="single"))
    looks = set()
    for i, row in enumerate(out):
        task = world.generate_task("test", rows[i // 6]["extra_info"]["index"])
        times = _log_times(task, row)
        assert len(set(times)) == world.MAX_FRAMES and times == sorted(times) and times[-1] <= task.duration
        assert all(round(t * world.FPS, 6) == round(t * world.FPS) for t in times)  # on the frame grid
        inside = [[e.start <= _frame_time(task, t) < e.end for t in times] for e in task.events]
        assert sum(map(sum, inside)) == 1
        if task.question_type != "MCQ":
            assert sum(inside[task.target]) == 1 and _check_log(task, times, row["output"]) == 1
        else:
            _check_log(task, times, row["output"])
        looks.add(tuple(times))
    assert len(looks) == len(out)  # a fresh draw every look


def test_word_rows_are_the_log_without_labels(tasks):
    """``words=True``: the same looks and what each frame shows, in frame order, without the labels."""
    path, rows = tasks
    for frames in (1, None):
        logs = list(reading_rows(rows, path.parent, frames=frames, per_task=3, seed=6))
        words = list(reading_rows(rows, path.parent, frames=frames, per_task=3, seed=6, words=True))
        assert [r["raw_input"] for r in words] == [r["raw_input"] for r in logs]
        for log, word in zip(logs, words):
            entries = log["output"].split(", ")
            assert word["output"] == ", ".join(e.rsplit(" ", 1)[0] for e in entries)
            assert not re.search(r"\d+\.\d\ds", word["output"])  # no label left
            assert len(word["output"].split(", ")) == (1 if frames == 1 else world.MAX_FRAMES)


def test_rows_are_deterministic_and_load_for_sft(tasks, tmp_path):
    path, rows = tasks
    a = write_reading_rows(path, tmp_path / "a.jsonl", frames=None, per_task=2, seed=3)
    b = write_reading_rows(path, tmp_path / "b.jsonl", frames=None, per_task=2, seed=3)
    assert a.read_text() == b.read_text()
    assert not list(tmp_path.glob("*.part"))
    processor = OmniProcessor.from_pretrained(str(REPO_CONFIGS / "toy" / "tokenizer"))
    encoder = SampleEncoder(processor, data_root=".", max_length=768)
    row = json.loads(a.read_text().splitlines()[0])
    sample = encoder.encode(row)
    n_images = sum(p["type"] == "image" for p in row["raw_input"][0]["content"])
    assert len(sample["image_grid_thw"]) == n_images
    target = processor.tokenizer.decode([int(t) for t in sample["labels"] if t >= 0])
    assert target.startswith(row["output"])


def test_label_rows_write_a_random_looks_labels(tasks, tmp_path):
    """Label rows: the question, then 12 frames at a random start and spacing on the frame grid; the output is their
    labels in order, each one toy token."""
    path, rows = tasks
    out = list(label_rows(rows, path.parent, per_task=6, seed=2))
    assert len(out) == 6 * len(rows)
    processor = OmniProcessor.from_pretrained(str(REPO_CONFIGS / "toy" / "tokenizer"))
    spacings, starts = set(), set()
    for i, row in enumerate(out):
        task = world.generate_task("test", rows[i // 6]["extra_info"]["index"])
        question, header, *labels = _texts(row)
        assert question.startswith(prompts.format_meta(float(task.duration), world.FPS, True) + "Question: " + task.question)
        times = [float(re.fullmatch(r"Frame (\S+)s:", x).group(1)) for x in labels]
        assert len(times) == world.MAX_FRAMES and 0 <= times[0] and times[-1] <= task.duration
        assert all((t * world.FPS).is_integer() for t in times)
        steps = {round(b - a, 6) for a, b in zip(times, times[1:])}
        assert len(steps) == 1 and min(steps) > 0
        spacings.add((task.duration, *steps))
        starts.add((task.duration, times[0]))
        assert header == prompts.frames_header(times[0], times[-1], len(times))
        assert row["output"] == ", ".join(prompts.format_seconds(t) + "s" for t in times)
        assert all(len(processor.tokenizer.encode(prompts.format_seconds(t))) == 1 for t in times)
    assert len(spacings) > len(rows) and len(starts) > len(rows)  # not one look per video: starts and spacings vary
    a = write_label_rows(path, tmp_path / "a.jsonl", per_task=6, seed=2)
    assert [json.loads(line) for line in a.read_text().splitlines()] == out
    with pytest.raises(ValueError, match="per_task must be >= 1"):
        next(label_rows(rows, path.parent, per_task=0, seed=0))


@pytest.fixture(scope="module")
def expert_steps(tasks, tmp_path_factory):
    """The expert's step rows on the sample split, as `omniagent export-sft` writes them (media as the video path)."""
    path, _ = tasks
    samples = list(iter_samples(path, resolve_videos=True))
    played = splits.play(path, "expert", progress=False)
    rows = [{"question_id": f"q{i}", "step": step.step, "raw_input": serialize_messages(step.raw_input, sample.video),
             "output": step.output, "extra_info": {"video": sample.video}}
            for i, (sample, (_, result)) in enumerate(zip(samples, played)) for step in result.steps]
    out = tmp_path_factory.mktemp("steps") / "steps.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, rows


def test_agent_rows_lay_a_look_out_as_the_agent_sees_it(tasks, expert_steps, tmp_path):
    """Agent-layout rows: each episode's second turn with its look replaced by the scan or a look around the event,
    the first turn asking for that look, and the expert's reply to those frames."""
    path, rows = tasks
    steps_path, steps = expert_steps
    out = list(agent_rows(steps, rows, path.parent, per_task=4, seed=7))
    assert len(out) == 4 * len(rows)
    scans = 0
    for i, row in enumerate(out):
        task = world.generate_task("test", rows[i // 4]["extra_info"]["index"])
        (source,) = [r for r in steps if r["step"] == 2 and r["question_id"] == f"q{i // 4}"]
        system, question, first, frames = row["raw_input"]
        assert [system, question] == source["raw_input"][:2]
        assert frames["content"][-1] == source["raw_input"][3]["content"][-1]  # the step countdown
        assert frames["content"][0]["text"].startswith("Frames ")
        labels = [p["text"] for p in frames["content"][1:-1] if p["type"] == "text"]
        times = [float(re.fullmatch(r"Frame (\S+)s:", x).group(1)) for x in labels]
        assert all(p["image"] == row["extra_info"]["video"] for p in frames["content"] if p["type"] == "image")
        action = json.loads(first["content"][0]["text"])["action"]
        assert action == {"type": "get_frames", "start": times[0], "end": times[-1], "num": world.MAX_FRAMES}
        if times[0] == 0.0 and times[-1] == task.duration and len(times) == world.MAX_FRAMES:
            scans += 1
        else:  # a look around the question's event
            assert times[0] <= math.ceil(task.events[task.target].start * world.FPS) / world.FPS <= times[-1]
        reply = json.loads(row["output"])
        _check_log(task, times, reply["observation"].split(". ")[0])
    assert 0 < scans < len(out)
    written = write_agent_rows(steps_path, path, tmp_path / "a.jsonl", per_task=4, seed=7)
    assert [json.loads(line) for line in written.read_text().splitlines()] == out  # seeded
    processor = OmniProcessor.from_pretrained(str(REPO_CONFIGS / "toy" / "tokenizer"))
    encoder = SampleEncoder(processor, data_root=".", max_length=768)
    for row in out:
        sample = encoder.encode(row)
        assert len(sample["input_ids"]) <= settings.MAX_ROW_TOKENS
        assert processor.tokenizer.decode([int(t) for t in sample["labels"] if t >= 0]).startswith(row["output"])


@pytest.mark.parametrize("kwargs, message", [({"per_task": 0}, "per_task must be >= 1"),
                                             ({"per_task": 1, "scan_share": 1.5}, r"scan_share must be in \[0, 1\]")])
def test_agent_rows_bad_arguments(tasks, expert_steps, kwargs, message):
    path, rows = tasks
    with pytest.raises(ValueError, match=message):
        next(agent_rows(expert_steps[1], rows, path.parent, seed=0, **kwargs))


def test_agent_rows_name_a_step_row_without_its_task(tasks, expert_steps):
    path, rows = tasks
    with pytest.raises(ValueError, match="video .* is not in the task rows"):
        next(agent_rows(expert_steps[1], rows[1:], path.parent, per_task=1, seed=0))


def test_copy_rows_repeat_a_frame_log(tmp_path):
    rows = list(copy_rows(200, seed=5))
    sizes = set()
    for row in rows:
        (message,) = row["raw_input"]
        assert message["role"] == "user" and [p["type"] for p in message["content"]] == ["text"]
        assert row["output"] == message["content"][0]["text"]
        entries = row["output"].split(", ")
        sizes.add(len(entries))
        for entry in entries:
            what, label = entry.split(" ")
            assert re.fullmatch(r"\d+\.\d\ds", label) and 0 <= float(label[:-1]) <= world.MAX_DURATION
            assert what in LOG_WORDS
    assert sizes == set(range(2, 10))
    assert len({r["output"] for r in rows}) == len(rows)
    a = write_copy_rows(tmp_path / "a.jsonl", count=200, seed=5)
    assert [json.loads(line) for line in a.read_text().splitlines()] == rows  # seeded: the same rows again
    processor = OmniProcessor.from_pretrained(str(REPO_CONFIGS / "toy" / "tokenizer"))
    encoder = SampleEncoder(processor, data_root=".", max_length=COPY_MAX_TOKENS)  # the copy phase's length
    for row in rows:
        sample = encoder.encode(row)
        target = processor.tokenizer.decode([int(t) for t in sample["labels"] if t >= 0])
        assert target.startswith(row["output"])
    with pytest.raises(ValueError, match="count must be >= 1"):
        next(copy_rows(0, seed=0))


@pytest.mark.parametrize("kwargs, message", [({"frames": 3, "per_task": 1}, "frames must be 1 or None"),
                                             ({"frames": 1, "per_task": 0}, "per_task must be >= 1"),
                                             ({"frames": None, "per_task": 1, "looks": "sideways"}, "looks must be one of")])
def test_bad_arguments(tasks, kwargs, message):
    path, rows = tasks
    with pytest.raises(ValueError, match=message):
        next(reading_rows(rows, path.parent, seed=0, **kwargs))

