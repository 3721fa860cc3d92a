"""Checking a written toy video against its task by decoding it (docs/toy.md §1).

:func:`check_video` decodes every frame and the whole audio track through ``omniagent_jax.media``,
reads them with :mod:`omniagent_jax.toy.perceive`, and derives the answer from what was decoded
(where the square is lit, how wide it is, which tone and how many beeps play while it is lit). The
row's answer must equal that, and every frame must show exactly the task's squares and dots.
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np

from omniagent_jax.media import open_video
from omniagent_jax.toy import perceive
from omniagent_jax.toy.world import BEEP_PERIOD, FPS, Task

ONSET_TOLERANCE_S = 0.05


class ToyCheckError(ValueError):
    """A toy video that does not hold what its task says; the message names the task and the problem."""


def expected_frame(task: Task, index: int) -> list[perceive.Seen]:
    """What :func:`perceive.look` must report on frame ``index`` of ``task``'s video."""
    t = index / FPS
    seen = [perceive.Seen(e.colour, e.cell, e.size if t < e.end else 0) for e in task.events if t >= e.start]
    return sorted(seen, key=lambda s: s.cell)


def expected_sounds(task: Task) -> list[tuple[float, str]]:
    """(onset seconds, pitch) of every tone or beep of ``task``, in time order."""
    out = []
    for e in task.events:
        out += [(e.start + k * BEEP_PERIOD, e.pitch) for k in range(max(e.beeps, 1))]
    return sorted(out)


def decoded_answer(task: Task, frames: np.ndarray, sounds: list[perceive.Sound]) -> str:
    """The answer to ``task``'s question as read from decoded frames and sounds (times in seconds)."""
    looks = [perceive.look(f) for f in frames]

    def lit(colour: str) -> list[int]:
        return [i for i, things in enumerate(looks) if any(s.colour == colour and s.lit for s in things)]

    if task.question_type == "MCQ":
        high = [s for s in sounds if s.pitch == "high"]
        if len(high) != 1:
            raise ToyCheckError(f"{task.video_name}: {len(high)} high tones decoded, expected 1")
        i = int((high[0].start + high[0].end) / 2 * FPS)  # mid-tone: compression smears the onset by a few ms
        colours = [s.colour for s in looks[min(i, len(looks) - 1)] if s.lit]
        if len(colours) != 1:
            raise ToyCheckError(f"{task.video_name}: {len(colours)} squares lit while the high tone plays")
        letters = [o.split(". ", 1) for o in task.options]
        return next((letter for letter, c in letters if c == colours[0]), "?")
    colour = _target_colour(task)
    frames_lit = lit(colour)
    if not frames_lit:
        raise ToyCheckError(f"{task.video_name}: the {colour} square is never lit")
    start, end = frames_lit[0] / FPS, (frames_lit[-1] + 1) / FPS
    if task.question_type == "TR":
        return json.dumps([[start, end]])
    if task.question_type == "SIZE":
        sizes = [s.size for i in frames_lit for s in looks[i] if s.colour == colour]
        return str(max(set(sizes), key=sizes.count))
    return str(sum(1 for s in sounds if start - ONSET_TOLERANCE_S <= s.start < end))


def check_video(task: Task, path: str | pathlib.Path) -> None:
    """Raise :class:`ToyCheckError` unless the video at ``path`` holds ``task`` (frames, sounds, answer)."""
    name = task.video_name
    with open_video(path) as reader:
        info = reader.info
        if abs(info.duration - task.duration) > 0.5 or abs(info.fps - FPS) > 1e-6 or not info.has_audio:
            raise ToyCheckError(f"{name}: probed {info.duration:.2f}s at {info.fps} fps, audio {info.has_audio}; "
                                f"expected {task.duration}s at {FPS} fps with audio")
        n = task.frame_count
        frames = reader.frames(np.arange(n) / FPS)
        sounds = perceive.listen(reader.audio(0.0, float(task.duration)))
    for i, f in enumerate(frames):
        seen, want = sorted(perceive.look(f), key=lambda s: s.cell), expected_frame(task, i)
        if seen != want:
            raise ToyCheckError(f"{name}: frame {i} ({i / FPS:.2f}s) shows {seen}, expected {want}")
    want_sounds = expected_sounds(task)
    got = [(s.start, s.pitch) for s in sounds]
    if len(got) != len(want_sounds) or any(abs(a - b) > ONSET_TOLERANCE_S or p != q for (a, p), (b, q) in zip(got, want_sounds)):
        raise ToyCheckError(f"{name}: decoded sounds {got} differ from the task's {want_sounds}")
    answer = decoded_answer(task, frames, sounds)
    if answer != task.answer:
        raise ToyCheckError(f"{name}: the video answers {answer!r}, the row says {task.answer!r}")


def _target_colour(task: Task) -> str:
    m = re.search(r"the (\w+) square", task.question)
    if m is None:
        raise ToyCheckError(f"{task.video_name}: no square named in {task.question!r}")
    return m.group(1)
