"""Scripted policies of the toy world (docs/toy.md §2): the expert and the uniform-scan baseline.

Both read only what a model reads: the system prompt (the frame and audio limits), the first user
message (duration, question, options) and the media the environment returned, decoded with
:mod:`omniagent_jax.toy.perceive`; earlier media is gone after consolidation, so what they need later
they write into their ``observation`` and read back from there. They never see the ground truth.

Expert: a coarse scan of the whole video with the full frame budget, then one focused look (frames of
the interval where the target first shows, or the audio around it), then the answer. Every number it
writes is copied from its context: frame labels, the duration in the META block, the limits in the
system prompt, the choices in the question. Baseline: the same coarse scan, then an answer from it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from typing import Any

from omniagent_jax.agent import prompts
from omniagent_jax.agent.messages import Message, has_media, message_text
from omniagent_jax.agent.policy import ScriptedPolicy
from omniagent_jax.processing.policy_contract import PolicyError, PolicyOutput
from omniagent_jax.toy import perceive

SEARCHING, SURE = "0.5", "0.9"
_GUIDE_TYPES = {guide: qtype for qtype, guide in prompts.ANSWER_GUIDES.items()}


class _Frames:
    """A frames message: per frame, the printed time and what is in the picture."""

    def __init__(self, labels: list[str], seen: list[list[perceive.Seen]]) -> None:
        self.labels, self.seen = labels, seen

    def lit(self, colour: str) -> list[int]:
        return [i for i, things in enumerate(self.seen) if any(s.colour == colour and s.lit for s in things)]

    def first(self, colour: str) -> int | None:
        return next((i for i, things in enumerate(self.seen) if any(s.colour == colour for s in things)), None)

    def size(self, colour: str) -> str | None:
        sizes = [s.size for things in self.seen for s in things if s.colour == colour and s.lit]
        return str(max(set(sizes), key=sizes.count)) if sizes else None

    def colours(self) -> list[str]:
        """Colours in order of first appearance."""
        out: list[str] = []
        for things in self.seen:
            out += [s.colour for s in things if s.colour not in out]
        return out

    def log(self, focus: str = "", *, sizes: bool = False, labels: bool = True) -> str:
        """Frame by frame, in order: what each frame shows of ``focus`` (``lit``, with the square's size when
        ``sizes``; ``dot``; ``-``), or with no focus the colour of the lit square (``-`` when none); then, when
        ``labels``, the frame's label: ``- 46.75s, lit 49.50s, dot 55.00s``."""
        entries = []
        for label, things in zip(self.labels, self.seen):
            if focus:
                lit = [s for s in things if s.colour == focus and s.lit]
                dot = any(s.colour == focus and not s.lit for s in things)
                what = (f"lit {lit[0].size}px" if sizes else "lit") if lit else "dot" if dot else "-"
            else:
                what = " ".join(s.colour for s in things if s.lit) or "-"
            entries.append(log_entry(what, label) if labels else what)
        return ", ".join(entries)

    def describe(self, focus: str = "", *, sizes: bool = False) -> str:
        """What the frames showed: the frame-by-frame log, then per colour (only ``focus`` when given) the frames
        where its square was lit and where its dot first showed.

        The log comes first, each entry what the frame shows and then its label, so that a model reads the frames
        in order (the word after ``, `` is the next frame's picture) and copies the label of the frame it has just
        read; the summary and the action then copy labels that stand right after (or before) a word of the log. (Up
        to v5 the label came first. Either way, learning to copy a label per frame has so far cost the toy decoder
        the frame reading it had: docs/toy.md §5.)
        """
        facts = []
        for colour in self.colours():
            if focus and colour != focus:
                continue
            name = "" if focus else f"{colour} "  # the question names the focus colour: no word to copy from far back
            lit = self.lit(colour)
            if lit:
                when = self.labels[lit[0]] + ("" if len(lit) == 1 else f" to {self.labels[lit[-1]]}")
                size = f" ({self.size(colour)} px)" if sizes else ""
                facts.append(f"{name}square{size} lit at {when}")
            dots = [i for i, things in enumerate(self.seen) if any(s.colour == colour and not s.lit for s in things)]
            if dots:
                facts.append(f"{name}dot from {self.labels[dots[0]]}")
        return f"{self.log(focus, sizes=sizes)}. " + ("; ".join(facts) if facts else "no coloured square") + "."


def log_entry(what: str, label: str) -> str:
    """One frame-log entry: what the frame showed, then its label (``lit 49.50s``); :func:`read_log` reads it back."""
    return f"{what} {label}"


def frame_log(labels: list[str], seen: list[list[perceive.Seen]], focus: str = "", *, sizes: bool = False,
              with_labels: bool = True) -> str:
    """The frame log the expert writes for frames labelled ``labels`` that show ``seen`` (see ``_Frames.log``)."""
    return _Frames(labels, seen).log(focus, sizes=sizes, labels=with_labels)


_LOG_ENTRY = re.compile(r"(?P<what>[a-z-][a-z0-9 -]*?) (?P<label>\d+\.\d\ds)")


@dataclasses.dataclass(frozen=True)
class LogEntry:
    """One entry of a frame log: what the frame showed (``-``, ``lit``, ``lit 13px``, ``dot``, colours), its label
    (``12.50s``) and the character offset of ``what`` in the observation."""

    what: str
    label: str
    at: int

    @property
    def word(self) -> str:
        """The entry's first word: ``-``, ``lit``, ``dot`` or a colour."""
        return self.what.split(" ")[0]


def read_log(observation: str) -> list[LogEntry]:
    """The entries of the frame log that opens ``observation`` (as :func:`frame_log` writes them, up to the first
    ``. ``; the log ends at the first entry that is not one)."""
    entries, offset = [], 0
    for text in observation.split(". ", 1)[0].removesuffix(".").split(", "):
        found = _LOG_ENTRY.fullmatch(text)
        if not found:
            break
        entries.append(LogEntry(found["what"], found["label"], offset))
        offset += len(text) + 2
    return entries


class _Context:
    """What a policy can read from the history."""

    def __init__(self, messages: Sequence[Message]) -> None:
        system, first = message_text(messages[0]), message_text(messages[1])
        self.max_frames = _int(re.search(r"\(Max (\d+) frames\)", system), 1)
        self.duration = _match(re.search(r"duration_seconds: (\S+)", first), "duration")
        self.question = _match(re.search(r"Question: (.*)", first), "question")
        self.options = re.findall(r"^([A-Z])\. (\w+)$", first, flags=re.M)
        self.qtype = next((t for guide, t in _GUIDE_TYPES.items() if guide in first), "")
        self.target = _match(re.search(r"the (\w+) square", self.question), "colour") if self.qtype != "MCQ" else ""
        self.turns = [_json(message_text(m)) for m in messages if m["role"] == "assistant"]
        self.step = len(self.turns)
        self.media = next((m for m in reversed(messages) if m["role"] == "user" and has_media(m)), None)

    def frames(self) -> _Frames:
        if self.media is None or not any(p.get("type") == "image" for p in self.media["content"]):
            raise PolicyError("expected frames in the last media message")
        parts = self.media["content"]
        labels, seen = [], []
        for label, image in zip(parts[1:], parts[2:]):
            if image.get("type") == "image" and label.get("type") == "text":
                labels.append(_match(re.fullmatch(r"Frame (\S+)s:", label["text"]), "frame label") + "s")
                seen.append(perceive.look(image["image"]))
        return _Frames(labels, seen)

    def audio(self) -> list[perceive.Sound]:
        wave = next((p["audio"] for p in (self.media or {}).get("content", ()) if p.get("type") == "audio"), None)
        if wave is None:
            raise PolicyError("expected audio in the last media message")
        return perceive.listen(wave)


class ExpertPolicy(ScriptedPolicy):
    """The toy expert: coarse scan -> focused frames or audio -> answer (docs/toy.md §2).

    A :class:`~omniagent_jax.agent.policy.Policy` and a
    :class:`~omniagent_jax.agent.policy.ConcurrentPolicy` (``submit``/``collect``/``cancel`` from
    :class:`ScriptedPolicy`, each turn a ``generate`` call)."""

    def __init__(self) -> None:
        super().__init__([])

    def generate(self, messages: Sequence[Message], *, unchanged_prefix: int = 0, seed: int | None = None) -> PolicyOutput:
        ctx = _Context(messages)
        if ctx.step == 0:
            return _coarse_scan(ctx)
        if ctx.step == 1:
            return self.after_scan(ctx)
        return self.after_look(ctx)

    def after_scan(self, ctx: _Context) -> PolicyOutput:
        """The turn after the coarse scan: one focused look (or, for SIZE seen lit, the answer)."""
        frames = ctx.frames()
        labels = frames.labels
        if ctx.qtype == "MCQ":
            colours = [c for c in frames.colours() if frames.lit(c)]
            if not colours:
                return _answer(frames.describe(ctx.target), "No square lit; I guess.", ctx.options[0][0] if ctx.options else "A")
            first = frames.lit(colours[0])[0]
            end = labels[min(first + 1, len(labels) - 1)]
            think = f"Lit in order: {', '.join(colours)}. I listen to the {colours[0]} square."
            return _turn(frames.describe(ctx.target), think, SEARCHING, _audio(labels[first], end))
        first, lit = frames.first(ctx.target), frames.lit(ctx.target)
        if first is None:
            return _answer(frames.describe(ctx.target), "The square never showed; I guess.", _guess(ctx))
        if ctx.qtype == "SIZE" and lit:
            size = frames.size(ctx.target)
            return _answer(frames.describe(ctx.target, sizes=True), f"The square is {size} px wide.", size or "")
        # The span to look at: around the lit frames, or between the last empty frame and the dot.
        lo, hi = (lit[0] - 1, lit[-1] + 1) if lit else (first - 1, first)
        start, end = _label(labels, lo, ctx.duration), _label(labels, hi, ctx.duration)
        if ctx.qtype == "NUM":
            think = "I listen where the square appears."
            return _turn(frames.describe(ctx.target), think, SEARCHING, _audio(start, end))
        think = "I look closer where the square appears."
        return _turn(frames.describe(ctx.target), think, SEARCHING, _frames(start, end, ctx.max_frames))

    def after_look(self, ctx: _Context) -> PolicyOutput:
        """The answer, from the focused look (and, for MCQ, the colours its scan observation recorded)."""
        if ctx.qtype == "MCQ":
            sounds = ctx.audio()
            colours = re.findall(r"(\w+) square lit at", ctx.turns[-1].get("observation", ""))
            heard = _describe_sounds(sounds)
            if len(colours) < 2 or not sounds:
                guess = _letter(ctx, colours[0] if colours else "")
                return _answer(heard, "I cannot tell which square had the high tone; I guess.", guess)
            if sounds[0].pitch == "high":
                return _answer(heard, f"The high tone is the {colours[0]} square's.", _letter(ctx, colours[0]))
            think = f"The {colours[0]} square's tone is {sounds[0].pitch}, so the high tone is the {colours[1]} square's."
            return _answer(heard, think, _letter(ctx, colours[1]))
        if ctx.qtype == "NUM":
            sounds = ctx.audio()
            return _answer(_describe_sounds(sounds), f"I count {len(sounds)} beeps.", str(len(sounds)))
        frames = ctx.frames()
        lit = frames.lit(ctx.target)
        if ctx.qtype == "SIZE":
            size = frames.size(ctx.target) or _guess(ctx)
            return _answer(frames.describe(ctx.target, sizes=True), f"The square is {size} px wide.", size)
        if not lit:
            start, end = frames.labels[0], frames.labels[-1]
            think = "The square was not lit in these frames; I give the whole span."
            return _answer(frames.describe(ctx.target), think, _span(start, end))
        start = frames.labels[max(lit[0] - 1, 0)]
        end = frames.labels[min(lit[-1] + 1, len(frames.labels) - 1)]
        think = "I bracket the lit frames."
        return _answer(frames.describe(ctx.target), think, _span(start, end))


class UniformScanPolicy(ExpertPolicy):
    """The baseline: the expert's coarse scan with the same frame budget, then an answer from it alone."""

    def after_scan(self, ctx: _Context) -> PolicyOutput:
        """The answer, from the coarse scan alone."""
        frames = ctx.frames()
        labels = frames.labels
        if ctx.qtype == "MCQ":
            lit = [c for c in frames.colours() if frames.lit(c)]
            guess = _letter(ctx, lit[0] if lit else "")
            return _answer(frames.describe(ctx.target), "I cannot hear; I pick the first lit square.", guess)
        if ctx.qtype == "NUM":
            return _answer(frames.describe(ctx.target), "I cannot hear; I guess.", _guess(ctx))
        first, lit = frames.first(ctx.target), frames.lit(ctx.target)
        if ctx.qtype == "SIZE":
            size = frames.size(ctx.target) if lit else None
            return _answer(frames.describe(ctx.target, sizes=True), "From the scan.", size or _guess(ctx))
        if first is None:
            return _answer(frames.describe(ctx.target), "Not seen.", _span("0.00s", ctx.duration + "s"))
        lo, hi = (lit[0] - 1, lit[-1] + 1) if lit else (first - 1, first)
        span = _span(_label(labels, lo, ctx.duration), _label(labels, hi, ctx.duration))
        return _answer(frames.describe(ctx.target), "From the scan.", span)


# ------------------------------------------------------------------------------------------ turns
def _coarse_scan(ctx: _Context) -> PolicyOutput:
    return PolicyOutput(first_look("0.00s", ctx.duration + "s", ctx.max_frames, scan=True))


def first_look(start: str, end: str, num: int, *, scan: bool) -> str:
    """A first turn asking for ``num`` frames from ``start`` to ``end`` (labels such as ``12.50s``): the expert's
    coarse scan when ``scan`` (the whole video), else a look at that span (the agent-layout reading rows)."""
    think = "I scan the whole video." if scan else f"I look at {start} to {end}."
    return _turn("Nothing inspected yet.", think, SEARCHING, _frames(start, end, num)).text


def _turn(observation: str, think: str, confidence: str, action: str) -> PolicyOutput:
    text = (f'{{"observation": {json.dumps(observation)}, "think": {json.dumps(think)}, '
            f'"confidence": {confidence}, "action": {action}}}')
    return PolicyOutput(text)


def _answer(observation: str, think: str, content: str) -> PolicyOutput:
    return _turn(observation, think, SURE, f'{{"type": "answer", "content": {json.dumps(content)}}}')


def _frames(start: str, end: str, num: int) -> str:
    return f'{{"type": "get_frames", "start": {start[:-1]}, "end": {end[:-1]}, "num": {num}}}'


def _audio(start: str, end: str) -> str:
    return f'{{"type": "get_audio", "start": {start[:-1]}, "end": {end[:-1]}}}'


def _span(start: str, end: str) -> str:
    return f"[[{start[:-1]}, {end[:-1]}]]"


def _label(labels: list[str], i: int, duration: str) -> str:
    """Frame label ``i``, or the video's ends past either side."""
    return "0.00s" if i < 0 else duration + "s" if i >= len(labels) else labels[i]


def _describe_sounds(sounds: list[perceive.Sound]) -> str:
    if not sounds:
        return "Silence."
    if len(sounds) == 1 and sounds[0].end - sounds[0].start > 0.5:
        return f"A steady {sounds[0].pitch} tone."
    pitches = "/".join(sorted({s.pitch for s in sounds}))
    return f"{len(sounds)} short {pitches} beeps." if len(sounds) > 1 else f"One short {pitches} beep."


def _letter(ctx: _Context, colour: str) -> str:
    return next((letter for letter, c in ctx.options if c == colour), ctx.options[0][0] if ctx.options else "A")


def _guess(ctx: _Context) -> str:
    """The middle choice listed in the question (a guess without evidence)."""
    choices = re.findall(r"\d+", ctx.question)
    return choices[len(choices) // 2] if choices else "0"


def _match(m: re.Match[str] | None, what: str) -> str:
    if m is None:
        raise PolicyError(f"toy policy: no {what} in the prompt")
    return m.group(1)


def _int(m: re.Match[str] | None, default: int) -> int:
    return int(m.group(1)) if m else default


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}

