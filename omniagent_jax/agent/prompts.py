"""Every exact string of the OTA wire format (docs/protocol.md §1–§4), in one place.

The released checkpoints were trained on these strings byte for byte: the META block, the per-type
answer guides, the ``[NOTICE]`` lines, the media headers and placeholders, the ``[ERROR]`` /
``[SYSTEM]`` lines and the validation details. Change nothing here without a reason from the
reference data (``tests/data/reference/example_train_sft.jsonl``).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from collections.abc import Sequence
from typing import Literal

from omniagent_jax.agent.limits import EpisodeLimits

# ----------------------------------------------------------------------------------------------
# System prompt: a template with three slots, filled by literal replacement (not str.format, so
# the JSON braces of the schema need no escaping).
# ----------------------------------------------------------------------------------------------
SLOT_MAX_FRAMES = "{max_frames}"
SLOT_MAX_AUDIO = "{max_audio}"
SLOT_MAX_CLIP = "{max_clip}"
SYSTEM_PROMPT_SLOTS = (SLOT_MAX_FRAMES, SLOT_MAX_AUDIO, SLOT_MAX_CLIP)

DEFAULT_SYSTEM_PROMPT_TEMPLATE = """
You are an omni-modal video investigator. You answer a question about one video by inspecting it \
step by step in an Observation-Thought-Action loop: each turn you record what you have seen, reason \
about it, and request exactly one piece of evidence (or give the answer).

==================== RULES ====================
- **Video META**: the first message gives the video's duration, fps and has_audio. Every timestamp \
you request must lie inside [0, duration].
- **No audio track**: when has_audio is False, never call `get_audio`; rely on frames and clips.
- **Media becomes text**: media you receive is shown to you once. From the next turn on it is \
replaced by a short placeholder, for example:
  *   Frames: "Frames 10.00s-12.00s (num=5). Timestamps: [10.00s, 10.50s, 11.00s, 11.50s, 12.00s] \
[MEDIA OMITTED - Refer to your Observation]"
  *   Audio or clip: "Audio 10.00s-20.00s [MEDIA OMITTED - Refer to your Observation]"
- **Observation is your memory**: write down every relevant detail you perceive (people, objects \
with approximate [y, x] positions on a 0-100 grid, on-screen text, speech near-verbatim, sounds, \
timing). Whatever you do not write down is lost once the media is omitted.
- **Evidence ids**: cite evidence by its full label, e.g. "[Frames 10.00s-12.00s (num=5)]" or \
"[Audio 10.00s-20.00s]", in both `observation` and `think`. Use the exact timestamps printed by \
the environment; never round them.
- **No repeats**: do not request the same action over the same range twice. Re-inspect a range only \
through another modality or at a higher frame density.
- **Feedback**: `[ERROR]` lines explain why an action was rejected (it still cost a step); \
`[NOTICE]` lines count your remaining steps.

==================== ACTIONS ====================
Exactly ONE action per turn:
1. {"type": "get_frames", "start": float, "end": float, "num": int} - frames evenly spaced from start \
to end, both included (Max {max_frames} frames). Scan wide ranges (e.g. start=0, end=duration, \
num={max_frames}) to map the timeline; use a narrow window with a high num for small details.
2. {"type": "get_audio", "start": float, "end": float} - the audio of the range, at least 0.1s \
(Max {max_audio}s). Transcribe speech faithfully and note off-screen sounds.
3. {"type": "get_clip", "start": float, "end": float} - a short video clip of the range with its \
sound when the video has audio (Max {max_clip}s). Use it for motion, order of events and \
audio-visual sync.
4. {"type": "answer", "content": "string"} - your final answer (not allowed on the first turn):
   - MCQ: the option letter only, e.g. "A".
   - TR: a JSON array of [start, end] pairs, e.g. "[[10.5, 20.0], [35.0, 40.0]]".
   - NUM / SIZE: one number, e.g. "10.3".
   - FF: a short descriptive answer.

==================== CONFIDENCE ====================
- Every turn includes a top-level numeric `confidence` in [0.0, 1.0]: how sufficient your evidence is.
- Answer only when confidence >= 0.9; below that, keep gathering evidence and try to disprove your \
leading hypothesis. When the notice says "FINAL STEP", answer immediately with your best guess.

==================== OUTPUT ====================
Reply with ONE JSON object on ONE line and nothing else: no markdown, no code fences, no text \
before '{' or after '}', no newlines. Keys in this order:
{"observation": "...", "think": "...", "confidence": 0.0, "action": {"type": "get_frames", "start": 0.0, "end": 0.0, "num": 1}}
"""


def format_limit(value: float) -> str:
    """How a limit is printed in the system prompt and in error details: Python's ``str``.

    An int prints as ``60`` and a float as ``210.0``, exactly as the reference's f-strings did.
    """
    return str(value)


def render_system_prompt(template: str, limits: EpisodeLimits) -> str:
    """Fill the three limit slots of a system-prompt template."""
    return (
        template.replace(SLOT_MAX_FRAMES, format_limit(limits.max_frames))
        .replace(SLOT_MAX_AUDIO, format_limit(limits.max_audio))
        .replace(SLOT_MAX_CLIP, format_limit(limits.max_clip))
    )


def check_system_prompt_template(template: str) -> str:
    """Return ``template`` if it has all three slots, else raise ``ValueError`` naming the missing ones."""
    missing = [slot for slot in SYSTEM_PROMPT_SLOTS if slot not in template]
    if missing:
        raise ValueError(
            f"system prompt template lacks the slot(s) {', '.join(missing)}; "
            f"a template must contain {', '.join(SYSTEM_PROMPT_SLOTS)} where the episode's limits go"
        )
    return template


def load_system_prompt_template(path: str | pathlib.Path) -> str:
    """Read a ``--system-prompt-file`` (UTF-8, used verbatim) and check its slots."""
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"cannot read system prompt file {p}: {e.strerror or e}") from e
    return check_system_prompt_template(text)


# ----------------------------------------------------------------------------------------------
# First user message: META block, question, per-type answer guide.
# ----------------------------------------------------------------------------------------------
QUESTION_TYPES = ("MCQ", "TR", "FF", "NUM", "SIZE")
GUIDE_PREFIX = "\nWhen answering, set action.content to "
ANSWER_GUIDES = {
    "MCQ": GUIDE_PREFIX + "ONE uppercase letter (A, B, C …).",
    "TR": GUIDE_PREFIX + "a JSON array of timestamp pairs such as [[10.5, 20.0]].",
    "FF": GUIDE_PREFIX + "**your free-form answer text**.",
    "NUM": GUIDE_PREFIX + "**ONE number**, e.g. 42 or 3.14159.",
    # The doubled "e.g." is what the checkpoints saw.
    "SIZE": GUIDE_PREFIX + "**ONE number**, e.g. e.g., 203 or 10.3.",
}
OPTIONS_HEADER = "\nOptions:\n"


def floor2(x: float) -> str:
    """META number format: floored (not rounded) to 2 decimals, printed with 2 decimals."""
    return f"{math.floor(x * 100) / 100:.2f}"


def format_meta(duration: float, fps: float, has_audio: bool) -> str:
    """The ``Video META:`` block, ending with the blank line before the question."""
    return (
        f"Video META:\n- duration_seconds: {floor2(duration)}\n"
        f"- fps: {floor2(fps)}\n- has_audio: {bool(has_audio)}\n\n"
    )


def question_text(
    question: str,
    major_type: str,
    options: Sequence[str] | None,
    *,
    duration: float,
    fps: float,
    has_audio: bool,
) -> str:
    """The text of the first user message (before the notice part)."""
    if major_type not in ANSWER_GUIDES:
        raise ValueError(f"unknown question type {major_type!r}; expected one of {', '.join(QUESTION_TYPES)}")
    body = format_meta(duration, fps, has_audio) + "Question: " + question
    if major_type == "MCQ":
        body += OPTIONS_HEADER + "\n".join(options or ())
    return body + ANSWER_GUIDES[major_type]


# ----------------------------------------------------------------------------------------------
# Notices: one in context at a time, appended as its own text part to the last user message.
# ----------------------------------------------------------------------------------------------
NOTICE_MARKER = "[NOTICE]"
NOTICE_FINAL_STEP = "\n[NOTICE] FINAL STEP! You MUST provide your answer now."
NOTICE_STEP_LIMIT = "\n[NOTICE] STEP LIMIT REACHED. Operation terminated."
# Our optional forced-final-answer mode (off by default; not in the reference).
NOTICE_FORCED_ANSWER = "\n[NOTICE] STEP LIMIT REACHED. You MUST provide your answer now with an answer action."


def notice_countdown(steps_taken: int, max_steps: int) -> str:
    """The notice before a model turn (``Step k/N. R steps remaining.`` or the final-step line)."""
    remaining = max_steps - steps_taken
    if remaining == 1:
        return NOTICE_FINAL_STEP
    return f"\n[NOTICE] Step {steps_taken}/{max_steps}. {remaining} steps remaining."


def notice_terminated(steps_taken: int, max_steps: int) -> str:
    """The notice after the last step of an episode."""
    if max_steps - steps_taken <= 0:
        return NOTICE_STEP_LIMIT
    return f"\n[NOTICE] Operation terminated. Steps used: {steps_taken}/{max_steps}."


def is_notice(text: str) -> bool:
    """Whether a text part is a notice (the reference matches on the stripped prefix)."""
    return text.lstrip().startswith(NOTICE_MARKER)


# ----------------------------------------------------------------------------------------------
# Media headers (the text part before a media action's parts, and the label before each image) and
# their consolidated placeholders. Each header is one template: the formatters fill it and
# `parse_media_header` reads it back, so training's re-cut of logged media follows what the
# environment writes.
# ----------------------------------------------------------------------------------------------
MEDIA_OMITTED = "[MEDIA OMITTED - Refer to your Observation]"
FRAMES_HEADER = "Frames {start}s-{end}s (num={num})."
SINGLE_FRAME_HEADER = "Frame at {start}s (num=1)."
FRAME_LABEL = "Frame {start}s:"
AUDIO_HEADER = "Audio {start}s-{end}s"
CLIP_HEADER = "Clip {start}s-{end}s"
MediaHeaderKind = Literal["frames", "frame", "audio", "clip"]


def format_seconds(t: float) -> str:
    """How every media time is printed: 2 decimals, rounded."""
    return f"{t:.2f}"


def frames_header(start: float, end: float, num: int) -> str:
    if num == 1:
        return SINGLE_FRAME_HEADER.format(start=format_seconds(start))
    return FRAMES_HEADER.format(start=format_seconds(start), end=format_seconds(end), num=num)


def frame_label(t: float) -> str:
    return FRAME_LABEL.format(start=format_seconds(t))


def audio_header(start: float, end: float) -> str:
    return AUDIO_HEADER.format(start=format_seconds(start), end=format_seconds(end))


def clip_header(start: float, end: float) -> str:
    return CLIP_HEADER.format(start=format_seconds(start), end=format_seconds(end))


def frames_placeholder(header: str, timestamps: Sequence[float]) -> str:
    stamps = ", ".join(f"{format_seconds(t)}s" for t in timestamps)
    return f"{header.strip()} Timestamps: [{stamps}] {MEDIA_OMITTED}"


def media_placeholder(header: str) -> str:
    return f"{header.strip()} {MEDIA_OMITTED}"


@dataclasses.dataclass(frozen=True)
class MediaHeader:
    """A media header as numbers. ``frames``: ``num`` frames from ``start`` to ``end`` (one frame is
    printed at ``start`` alone, so it reads back with ``end == start``); ``frame``: one image's label,
    ``start == end``; ``audio`` and ``clip``: a range. Text holds times to 2 decimals, so
    ``parse_media_header(h.text()) == h`` exactly when the times are 2-decimal values."""

    kind: MediaHeaderKind
    start: float
    end: float
    num: int | None = None  # frames only

    def __post_init__(self) -> None:
        if (self.kind == "frames") != (isinstance(self.num, int) and self.num >= 1):
            raise ValueError(f"a {self.kind!r} header takes num {'>= 1' if self.kind == 'frames' else 'None'}, got {self.num!r}")

    def text(self) -> str:
        """The header as the environment writes it."""
        if self.kind == "frames":
            return frames_header(self.start, self.end, self.num)  # type: ignore[arg-type]
        if self.kind == "frame":
            return frame_label(self.start)
        return audio_header(self.start, self.end) if self.kind == "audio" else clip_header(self.start, self.end)


def _pattern(template: str) -> re.Pattern[str]:
    number = r"-?\d+(?:\.\d+)?"
    slots = {"{start}": f"(?P<start>{number})", "{end}": f"(?P<end>{number})", "{num}": r"(?P<num>[1-9]\d*)"}
    rx = re.escape(template)
    for slot, group in slots.items():
        rx = rx.replace(re.escape(slot), group)
    return re.compile(rx)


_HEADER_PATTERNS = tuple(
    (_pattern(template), kind)
    for template, kind in ((FRAMES_HEADER, "frames"), (SINGLE_FRAME_HEADER, "frames"), (FRAME_LABEL, "frame"),
                           (AUDIO_HEADER, "audio"), (CLIP_HEADER, "clip"))
)


def parse_media_header(text: str) -> MediaHeader | None:
    """The media header a text part holds (surrounding whitespace ignored), or ``None`` for any other text."""
    text = text.strip()
    for pattern, kind in _HEADER_PATTERNS:
        if m := pattern.fullmatch(text):
            start = float(m["start"])
            end = float(m["end"]) if "end" in pattern.groupindex else start
            num = int(m["num"]) if "num" in pattern.groupindex else 1
            return MediaHeader(kind, start, end, num if kind == "frames" else None)
    return None


# ----------------------------------------------------------------------------------------------
# Errors. Parse failures all show the INVALID_JSON marker with the parser's message + ".".
# ----------------------------------------------------------------------------------------------
PARSE_ERROR_MARKER = "INVALID_JSON"
SYSTEM_RETRY = (
    "\n[SYSTEM] The previous action was invalid. Analyze the error diagnostic above, resolve the "
    "conflict, and issue a corrected command to avoid wasting steps."
)


def error_text(marker: str, detail: str, *, episode_continues: bool) -> str:
    """The user message after an invalid action."""
    body = f"{marker}: {detail}" if detail and detail != marker else marker
    return f"[ERROR] {body}" + (SYSTEM_RETRY if episode_continues else "")


def parse_error_detail(parser_message: str) -> str:
    return f"{parser_message}."


def token_limit_text(prompt_tokens: int, max_prompt_tokens: int) -> str:
    return f"[ERROR] TOKEN_LIMIT_EXCEEDED: {token_limit_detail(prompt_tokens, max_prompt_tokens)}"


def token_limit_detail(prompt_tokens: int, max_prompt_tokens: int) -> str:
    return f"Prompt length {prompt_tokens} > {max_prompt_tokens}"


# Parser messages (docs/protocol.md §2; the reference's wording).
MSG_NOT_A_STRING = "not a string"
MSG_WRAPPED = "must be raw JSON without code fence or outer quotes"
MSG_BRACES = "must start with '{' and end with '}'"
MSG_TRAILING = "extra characters after JSON"
MSG_OBSERVATION_TYPE = "'observation' must be string"
MSG_THINK_TYPE = "'think' must be string"
MSG_CONFIDENCE_TYPE = "'confidence' must be a numeric value"
MSG_CONFIDENCE_RANGE = "'confidence' must be between 0 and 1"
MSG_ACTION_TYPE = "'action' not object"
MSG_FRAMES_NUM = "get_frames requires integer 'num'"
MSG_ANSWER_CONTENT = "'content' missing or not string"


def msg_json_decode(error: str) -> str:
    return f"json decode error: {error}"


def msg_missing_keys(keys: Sequence[str]) -> str:
    return f"missing keys: {sorted(keys)}"


def msg_unknown_keys(keys: Sequence[str]) -> str:
    return f"unknown keys: {sorted(keys)}"


def msg_duplicate_key(key: str) -> str:
    return f"duplicate key: {key!r}"


def msg_unknown_action(type_repr: str) -> str:
    return f"unknown action.type: {type_repr}"


def msg_frames_field(field: str) -> str:
    return f"get_frames requires numeric '{field}'"


def msg_range_field(field: str) -> str:
    return f"'{field}' missing or not number"


# Validation details (the reference's wording, limits printed with format_limit).
EARLY_ANSWER_DETAIL = "Must gather evidence before answering"


def detail_frames_oob(start: float, end: float, duration: float) -> str:
    return f"Range [{start}, {end}] OOB for {duration}s"


def detail_end_before_start(start: float, end: float) -> str:
    return f"end {end} < start {start}"


def detail_too_many_frames(num: int, max_frames: int) -> str:
    return f"num {num} > max {format_limit(max_frames)}"


DETAIL_FRAME_NUM = "num must be >= 1"


def detail_start_negative(start: float) -> str:
    return f"start {start:.3f}s < 0"


def detail_audio_end(end: float, duration: float) -> str:
    return f"end {end:.3f}s > duration {duration:.3f}s"


def detail_clip_end(end: float, duration: float) -> str:
    return f"end {end:.3f}s > video duration {duration:.3f}s"


def detail_too_short(length: float, minimum: float) -> str:
    return f"{length:.3f}s < {format_limit(minimum)}s"


def detail_too_long(length: float, maximum: float) -> str:
    return f"{length:.3f}s > {format_limit(maximum)}s"


def detail_clip_too_short(length: float, min_length: float, min_frames: int) -> str:
    return f"{length:.3f}s < {min_length:.3f}s (need ≥ {min_frames} frames)"


def detail_decode_failure(what: str, start: float, end: float) -> str:
    return f"could not decode {what} {start:.2f}s-{end:.2f}s"


# Scoring details.
DETAIL_NUMBER_IN_ANSWER = "Cannot parse number from answer."


def detail_gt_number(gt: object) -> str:
    return f"cannot parse gt number: {gt!r}"


def detail_gt_spans(gt: object) -> str:
    return f"TR answer must be a list/tuple or ndarray, but got {type(gt).__name__}: {gt}"


# ----------------------------------------------------------------------------------------------
# After an answer (never training tokens).
# ----------------------------------------------------------------------------------------------
FEEDBACK_CORRECT = "CORRECT ANSWER"
FEEDBACK_INCORRECT = "INCORRECT ANSWER"
# Ours: with no ground truth (or FF without a judge) correctness is unknown; say so instead of
# claiming INCORRECT as the reference does.
FEEDBACK_UNSCORED = "ANSWER RECEIVED (not scored)"


def answer_feedback(won: bool, scored: bool) -> str:
    if not scored:
        return FEEDBACK_UNSCORED
    return FEEDBACK_CORRECT if won else FEEDBACK_INCORRECT
