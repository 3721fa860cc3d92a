"""The toy world (docs/toy.md §1): tasks deterministic per seed, splits that share no video, rows every CLI reads,
and every written answer checked against its video by decoding it."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import toy_helpers

from omniagent_jax.agent import rewards
from omniagent_jax.agent.data import iter_samples, sample_from_row
from omniagent_jax.toy import check, cli, perceive, render, splits, world


def test_tasks_are_deterministic_per_seed(tmp_path):
    first = [world.generate_task(split, i).fingerprint() for split in world.SPLITS for i in range(40)]
    assert first == [world.generate_task(split, i).fingerprint() for split in world.SPLITS for i in range(40)]
    assert len(set(first)) == len(first)
    task = world.generate_task("test", 46)
    assert np.array_equal(render.audio(task), render.audio(task))
    assert np.array_equal(render.frame(task, 20), render.frame(task, 20))
    a, b = render.write_video(task, tmp_path / "a.mp4"), render.write_video(task, tmp_path / "b.mp4")
    assert a.read_bytes() == b.read_bytes()


def test_splits_share_no_video():
    seeds = {split: {world.generate_task(split, i).seed for i in range(300)} for split in world.SPLITS}
    names = {split: {world.generate_task(split, i).video_name for i in range(300)} for split in world.SPLITS}
    for x, y in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not seeds[x] & seeds[y] and not names[x] & names[y]
    assert world.task_seed("train", 999_999) < world.task_seed("val", 0) < world.task_seed("test", 0)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        world.task_seed("dev", 0)
    with pytest.raises(ValueError, match=r"task index must be in \[0, 1000000\)"):
        world.generate_task("test", 1_000_000)


def test_tasks_cover_the_four_types_with_copyable_answers():
    tasks = world.generate_split("val", 200)
    assert [t.question_type for t in tasks[:4]] == list(world.QUESTION_TYPES)
    assert all(world.MIN_DURATION <= t.duration <= world.MAX_DURATION for t in tasks)
    assert max(t.duration for t in tasks) > 400  # long videos are there
    assert all((t.duration / world.DURATION_UNIT).is_integer() for t in tasks)
    for t in tasks:
        sample = sample_from_row(t.row())  # the eval/RL row every CLI reads
        assert sample.major_type == t.question_type and sample.has_audio and sample.duration_seconds == t.duration
        rewards.check_ground_truth(t.question_type, t.answer, t.options)
        assert rewards.score(t.question_type, t.answer, t.answer).reward == 1.0
        if t.question_type in ("NUM", "SIZE"):  # the answer is one of the numbers the question lists
            assert t.answer in re.findall(r"\d+", t.question)
        ev = t.events[t.target]
        spacing = world.coarse_spacing(t.duration)
        if t.question_type == "MCQ":
            assert ev.pitch == "high" and [e.pitch for e in t.events].count("high") == 1
            assert f"{t.answer}. {ev.colour}" in t.options
        if t.question_type == "TR":
            assert json.loads(t.answer) == [[ev.start, ev.end]]
            length = ev.end - ev.start
            assert max(3.0, t.duration / 25) <= length <= max(3.0, t.duration / 25) + 2.0
            if t.duration >= 400:  # under half a full-budget scan's spacing: the interval where the dot shows is no answer
                assert length < spacing / 2
        if t.question_type == "NUM":
            assert ev.end - ev.start < spacing  # at most one full-budget scan frame lands on it


def test_every_written_answer_is_checked_by_decoding(tmp_path_factory):
    rows = toy_helpers.sample_split(tmp_path_factory)
    samples = list(iter_samples(rows, resolve_videos=True))
    assert len(samples) == toy_helpers.SAMPLE_COUNT and {s.major_type for s in samples} == set(world.QUESTION_TYPES)
    # write_split checked each video; check again here, and a wrong answer or another task's video is caught.
    for s in samples:
        assert s.answer == world.generate_task("test", s.index).answer
    check.check_video(world.generate_task("test", samples[0].index), samples[0].video)
    tr = world.generate_task("test", toy_helpers.SAMPLE_START + 1)
    tr_video = rows.parent / splits.VIDEO_DIR / tr.video_name
    shifted = json.dumps([[tr.events[tr.target].start + 0.5, tr.events[tr.target].end]])
    with pytest.raises(check.ToyCheckError, match=r"the video answers .* the row says"):
        check.check_video(dataclasses.replace(tr, answer=shifted), tr_video)
    with pytest.raises(check.ToyCheckError, match="frame .* shows"):
        mcq = world.generate_task("test", toy_helpers.SAMPLE_START)
        check.check_video(dataclasses.replace(mcq, duration=tr.duration), tr_video)
    with pytest.raises(check.ToyCheckError, match="probed"):
        check.check_video(world.generate_task("test", toy_helpers.SAMPLE_START), tr_video)


def test_write_split_is_resumable_and_cli_errors_exit_2(tmp_path, capsys):
    rows = toy_helpers.SAMPLE_START
    folder = tmp_path / "toy"
    path = splits.write_split(folder, "test", 1, start=rows + 2, progress=False)
    video = folder / splits.VIDEO_DIR / f"test_{rows + 2:05d}.mp4"
    mtime = video.stat().st_mtime_ns
    assert splits.write_split(folder, "test", 1, start=rows + 2, progress=False) == path and video.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="count must be >= 1"):
        splits.write_split(folder, "test", 0)
    assert json.loads(path.read_text())["video"] == f"videos/test_{rows + 2:05d}.mp4"
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "afile").write_text("x")
    for argv, message in [
        (["generate", "--split", "test", "--count", "0", "--out", str(folder)], "--count must be >= 1"),
        (["generate", "--split", "test", "--count", "2", "--start", "999999", "--out", str(folder)], "must stay within"),
        (["generate", "--split", "test", "--count", "1", "--out", str(tmp_path / "afile")], "is not a folder"),
        (["score", "--rows", str(tmp_path / "missing.jsonl")], "no such file"),
        (["score", "--rows", str(path), "--limit", "0"], "--limit must be >= 1"),
        (["score", "--rows", str(tmp_path / "empty.jsonl")], "has no rows"),
        (["tokenizer", "--rows", str(path), "--out", str(tmp_path / "afile")], "is a file, not a folder"),
    ]:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"omniagent toy {argv[0]}: error: ") and message in err and "\n" not in err
    with pytest.raises(ValueError, match="unknown toy policy 'oracle'"):
        splits.play(path, "oracle")


def test_decoding_checks_name_what_is_wrong(tmp_path_factory):
    mcq, tr, num = (world.generate_task("test", toy_helpers.SAMPLE_START + k) for k in (0, 1, 2))
    lit = np.stack([render.frame(mcq, i) for i in range(mcq.frame_count)])
    empty = np.stack([render.background(mcq, i / world.FPS) for i in range(mcq.frame_count)])
    high = next(e for e in mcq.events if e.pitch == "high")
    tone = [perceive.Sound(high.start, high.end, "high")]
    assert check.decoded_answer(mcq, lit, tone) == mcq.answer
    with pytest.raises(check.ToyCheckError, match="0 high tones decoded, expected 1"):
        check.decoded_answer(mcq, lit, [])
    with pytest.raises(check.ToyCheckError, match="0 squares lit while the high tone plays"):
        check.decoded_answer(mcq, empty, tone)
    with pytest.raises(check.ToyCheckError, match=r"the \w+ square is never lit"):
        check.decoded_answer(tr, empty[:20], [])
    with pytest.raises(check.ToyCheckError, match="no square named"):
        check.decoded_answer(dataclasses.replace(tr, question="When?"), empty, [])
    # One beep more in the task than in its video.
    rows = toy_helpers.sample_split(tmp_path_factory)
    more = tuple(dataclasses.replace(e, beeps=e.beeps + 1) if e.beeps else e for e in num.events)
    with pytest.raises(check.ToyCheckError, match="decoded sounds .* differ"):
        check.check_video(dataclasses.replace(num, events=more), rows.parent / splits.VIDEO_DIR / num.video_name)
    with pytest.raises(world.NoRoomError, match="cannot place 2 events in 20s"):
        world._place(np.random.default_rng(0), 20, [10.0, 10.0], gap=5.0)


def test_every_label_of_a_scan_or_a_look_between_scan_frames_is_a_grid_time():
    """Durations are whole units, so the environment's labels for the expert's looks (a full scan, 12 frames between
    scan frames 1–3 spacings apart) all lie on the frame grid: each is one toy token (docs/toy.md §3)."""
    for t in world.generate_split("train", 80):
        scan = np.linspace(0.0, t.duration, world.MAX_FRAMES)
        looks = [scan] + [np.linspace(scan[i], scan[i + m], world.MAX_FRAMES)
                          for m in (1, 2, 3) for i in range(world.MAX_FRAMES - m)]
        for look in looks:
            grid = look * world.FPS
            assert np.allclose(grid, np.round(grid), atol=1e-6), (t.index, look)
        assert all((e.start * world.FPS).is_integer() and (e.end * world.FPS).is_integer() for e in t.events)
