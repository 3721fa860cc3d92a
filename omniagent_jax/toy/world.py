"""The toy world's tasks (docs/toy.md §1): seeded, deterministic question + event schedules, numpy only.

A task is one small video (56×56 at 4 fps, 30–575 s, a slowly drifting grey background) with a few
*events*. An event is a coloured square that is lit for a few seconds in one of four cells while a tone
(or a run of beeps) plays, then shrinks to a small dot of its colour that stays to the end. The dot is
the coarse cue (a wide scan shows *that* something happened and roughly when); the lit square and its
sound are the evidence (a scan must land inside a span of a few seconds to see or hear it).

Question types (the four RL types of docs/protocol.md §6):

- ``MCQ``: which colour is the square that flashes with the high tone (two events; needs the audio).
- ``TR``: when is the <colour> square lit (answer ``[[s, e]]``).
- ``NUM``: how many beeps play while the <colour> square is lit (needs the audio).
- ``SIZE``: how wide is the <colour> square, in pixels.

Every number an answer needs is written in the question (sizes, beep counts) or printed by the
environment (frame timestamps), so a model only copies numbers. Durations are whole multiples of
:data:`DURATION_UNIT`, so every timestamp the environment prints for a scan or for a look between scan frames
is a quarter second, one token of the toy vocabulary. Event lengths are set against the
frame budget :data:`MAX_FRAMES`: a uniform scan of that many frames misses a flash most of the time,
while a coarse scan plus one focused look always finds it (docs/toy.md §1 gives the arithmetic).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

FPS = 4  # frames per second of every toy video: the frame grid is the quarter second
FRAME_SIZE = 56  # pixels per side: 2×2 merged vision tokens per frame
AUDIO_RATE = 16_000
# The episode frame budget the world is designed around (the toy system prompt's "Max 12 frames").
MAX_FRAMES = 12
# Durations are k units. A full scan's frames are then k·(MAX_FRAMES-1)/FPS s apart and a look of MAX_FRAMES over
# m scan spacings k·m/FPS s apart: every such label lies on the frame grid (docs/toy.md §1).
DURATION_UNIT = (MAX_FRAMES - 1) ** 2 / FPS  # 30.25 s
MAX_UNITS = 19  # 574.75 s
MIN_DURATION, MAX_DURATION = DURATION_UNIT, DURATION_UNIT * MAX_UNITS

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 235),
    "yellow": (230, 210, 40),
    "magenta": (210, 60, 200),
    "cyan": (40, 200, 215),
}
# Square sides in pixels; neighbours differ by >= 25 % so a wrong size never scores on SIZE's MRA.
SIZES = (6, 9, 13, 18, 24)
DOT_SIZE = 3  # the remnant dot; smaller than any square
# Cell centres (row, col): one event per cell, so squares and dots never overlap.
CELLS = ((14, 14), (14, 42), (42, 14), (42, 42))
PITCHES: dict[str, float] = {"low": 300.0, "middle": 650.0, "high": 1400.0}
BEEP_PERIOD, BEEP_ON = 0.3, 0.15  # seconds
BEEP_COUNTS = (2, 3, 4, 5)

QUESTION_TYPES = ("MCQ", "TR", "NUM", "SIZE")
SPLITS = {"train": 1_000_000, "val": 2_000_000, "test": 3_000_000}  # seed base per split
DATA_SOURCE = "toy"


@dataclasses.dataclass(frozen=True)
class Event:
    """One lit square: ``[start, end)`` seconds on the frame grid, then a dot until the video ends."""

    colour: str
    size: int
    cell: int
    start: float
    end: float
    pitch: str  # the tone played while lit
    beeps: int = 0  # 0: a steady tone; n: n short beeps from ``start``

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Task:
    """One question about one video (everything needed to render the video and check the answer)."""

    split: str
    index: int
    seed: int
    duration: float  # seconds: a whole number of DURATION_UNIT (the video has duration·FPS frames)
    question_type: str
    question: str
    options: tuple[str, ...]
    answer: str
    events: tuple[Event, ...]
    target: int  # index into events of the square the question is about

    @property
    def frame_count(self) -> int:
        return int(round(self.duration * FPS))

    @property
    def video_name(self) -> str:
        return f"{self.split}_{self.index:05d}.mp4"

    def fingerprint(self) -> str:
        """A digest of everything that defines the task (determinism tests compare these)."""
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def row(self, video: str | None = None) -> dict[str, Any]:
        """The task as a reference RL/eval JSONL row (docs/protocol.md §7); ``video`` defaults to the file name."""
        return {
            "prompt": [{"content": "", "role": "user"}],
            "video": video or self.video_name,
            "question_type": self.question_type,
            "question": self.question,
            "options": list(self.options),
            "answer": self.answer,
            "fps": float(FPS),
            "duration_seconds": float(self.duration),
            "has_audio": True,
            "data_source": DATA_SOURCE,
            "ability": "audio" if self.question_type in ("MCQ", "NUM") else "visual",
            "extra_info": {"split": self.split, "index": self.index, "seed": self.seed,
                           "traj_id": f"toy-{self.split}-{self.index:05d}",
                           "events": [e.to_json() for e in self.events], "target": self.target},
        }


def task_seed(split: str, index: int) -> int:
    """The seed of task ``index`` of ``split``; splits use disjoint seed ranges, so they share no video."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if not 0 <= index < 1_000_000:
        raise ValueError(f"task index must be in [0, 1000000), got {index}")
    return SPLITS[split] + index


def coarse_spacing(duration: float) -> float:
    """Seconds between the frames of a full-budget uniform scan of ``[0, duration]``."""
    return duration / (MAX_FRAMES - 1)


def generate_task(split: str, index: int) -> Task:
    """Task ``index`` of ``split``; the same arguments always give the same task."""
    seed = task_seed(split, index)
    rng = np.random.default_rng(seed)
    qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    return _BUILDERS[qtype](split, index, seed, rng)


def generate_split(split: str, count: int, start: int = 0) -> list[Task]:
    return [generate_task(split, i) for i in range(start, start + count)]


# ------------------------------------------------------------------------------------- builders
def _grid(x: float) -> float:
    """Round up to the frame grid (1/FPS s)."""
    return float(np.ceil(x * FPS - 1e-9) / FPS)


class NoRoomError(RuntimeError):
    """The events do not fit in the video (the builders' lengths and gaps always fit: a bug)."""


def _place(rng: np.random.Generator, duration: float, lengths: list[float], gap: float) -> list[float]:
    """Start times on the frame grid for events of ``lengths`` seconds, in random order, ``gap`` s apart,
    inside ``[1, duration - 2]`` (the dot of the last event is still on the last frame)."""
    for _ in range(1000):
        starts = sorted(_grid(x) for x in rng.uniform(1.0, duration - 2.0, size=len(lengths)))
        order = rng.permutation(len(lengths))
        ends = [s + lengths[i] for s, i in zip(starts, order)]
        if ends[-1] <= duration - 2.0 and all(starts[k + 1] - ends[k] >= gap for k in range(len(starts) - 1)):
            out = [0.0] * len(lengths)
            for s, i in zip(starts, order):
                out[i] = s
            return out
    raise NoRoomError(f"cannot place {len(lengths)} events in {duration}s")


def _events(rng: np.random.Generator, duration: float, lengths: list[float], gap: float, pitches: list[str],
            beeps: list[int] | None = None) -> list[Event]:
    colours = rng.choice(list(COLOURS), size=len(lengths), replace=False)
    cells = rng.choice(len(CELLS), size=len(lengths), replace=False)
    sizes = rng.choice(SIZES, size=len(lengths))
    starts = _place(rng, duration, lengths, gap)
    beeps = beeps or [0] * len(lengths)
    return [Event(str(c), int(z), int(k), s, s + f, p, b)
            for c, z, k, s, f, p, b in zip(colours, sizes, cells, starts, lengths, pitches, beeps)]


def _by_time(events: list[Event], target: int) -> tuple[tuple[Event, ...], int]:
    order = sorted(range(len(events)), key=lambda i: events[i].start)
    return tuple(events[i] for i in order), order.index(target)


def _duration(units: int) -> float:
    return DURATION_UNIT * units


def _log_uniform_duration(rng: np.random.Generator) -> float:
    """1..MAX_UNITS units, log-uniform (a quarter of the videos are one unit long)."""
    return _duration(int(np.exp(rng.uniform(0.0, np.log(MAX_UNITS + 1)))))


def _build_tr_or_size(qtype: str, split: str, index: int, seed: int, rng: np.random.Generator) -> Task:
    duration = _log_uniform_duration(rng)
    k = int(rng.integers(1, 4))  # the target and up to two distractors
    # Lit for about duration/25 s (>= 3 s): under half a coarse spacing, so the dot's onset interval
    # alone is no answer, yet long enough that a focused scan of that interval sees both ends.
    lengths = [_grid(max(3.0, duration / 25) + rng.uniform(0.0, 1.5)) for _ in range(k)]
    events = _events(rng, duration, lengths, gap=2.0, pitches=[str(p) for p in rng.choice(list(PITCHES), size=k)])
    ordered, target = _by_time(events, 0)
    ev = ordered[target]
    if qtype == "TR":
        question = f"When is the {ev.colour} square lit?"
        answer = json.dumps([[ev.start, ev.end]])
    else:
        question = f"How wide is the {ev.colour} square, in pixels ({_choices(SIZES)})?"
        answer = str(ev.size)
    return Task(split, index, seed, duration, qtype, question, (), answer, ordered, target)


def _build_mcq(split: str, index: int, seed: int, rng: np.random.Generator) -> Task:
    duration = _duration(int(rng.integers(1, 3)))  # 30.25 or 60.5 s
    spacing = coarse_spacing(duration)
    # Lit longer than the coarse spacing (a full-budget scan always sees both squares) and at least
    # a spacing apart (one spacing of audio from a lit frame never holds the other tone).
    lengths = [_grid(spacing + 0.5 + rng.uniform(0.0, 2.0)) for _ in range(2)]
    other = str(rng.choice(["low", "middle"]))
    events = _events(rng, duration, lengths, gap=spacing + 1.0, pitches=["high", other])
    ordered, target = _by_time(events, 0)
    colours = [e.colour for e in ordered]
    distractors = [c for c in COLOURS if c not in colours]
    picked = colours + list(rng.choice(distractors, size=2, replace=False))
    picked = [picked[i] for i in rng.permutation(len(picked))]
    options = tuple(f"{chr(65 + i)}. {c}" for i, c in enumerate(picked))
    answer = chr(65 + picked.index(ordered[target].colour))
    return Task(split, index, seed, duration, "MCQ", "What colour is the square that flashes with the high tone?",
                options, answer, ordered, target)


def _build_num(split: str, index: int, seed: int, rng: np.random.Generator) -> Task:
    # One unit: a lit span (2 s) shorter than the coarse spacing (2.75 s) is seen on at most one coarse
    # frame, so the audio between that frame's neighbours (5.5 s, under the 6-s limit) holds every beep.
    duration = _duration(1)
    beeps = int(rng.choice(BEEP_COUNTS))
    k = int(rng.integers(1, 3))
    lengths = [2.0] * k
    pitches = [str(p) for p in rng.choice(list(PITCHES), size=k)]
    gap = coarse_spacing(duration) * 2 + 1.0  # no other tone in the audio the expert takes around the target
    events = _events(rng, duration, lengths, gap=gap, pitches=pitches, beeps=[beeps] + [0] * (k - 1))
    ordered, target = _by_time(events, 0)
    question = f"How many beeps play while the {ordered[target].colour} square is lit ({_choices(BEEP_COUNTS)})?"
    return Task(split, index, seed, duration, "NUM", question, (), str(beeps), ordered, target)


def _choices(values: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in values[:-1]) + f" or {values[-1]}"


_BUILDERS = {
    "MCQ": _build_mcq,
    "TR": lambda *a: _build_tr_or_size("TR", *a),
    "NUM": _build_num,
    "SIZE": lambda *a: _build_tr_or_size("SIZE", *a),
}
