"""The strict turn parser (docs/protocol.md §2): model text in, a typed turn out, or an ``ActionError``.

The model output is data, never code: it is decoded with ``json`` only. Every failure maps to a
protocol error code and the reference's message (see :mod:`omniagent_jax.agent.prompts`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
from typing import Any, Union

from omniagent_jax.agent import prompts
from omniagent_jax.agent.errors import ActionError, ErrorCode

GET_FRAMES = "get_frames"
GET_AUDIO = "get_audio"
GET_CLIP = "get_clip"
ANSWER = "answer"
ACTION_TYPES = (GET_FRAMES, GET_AUDIO, GET_CLIP, ANSWER)

REQUIRED_KEYS = ("observation", "think", "action")
CONFIDENCE_KEY = "confidence"
ALLOWED_KEYS = frozenset((*REQUIRED_KEYS, CONFIDENCE_KEY))

_SHORT = reprlib.Repr()
_SHORT.maxstring = 80
_SHORT.maxother = 80
_SHORT.maxlevel = 3


@dataclasses.dataclass(frozen=True)
class GetFrames:
    start: float
    end: float
    num: int
    type: str = GET_FRAMES


@dataclasses.dataclass(frozen=True)
class GetAudio:
    start: float
    end: float
    type: str = GET_AUDIO


@dataclasses.dataclass(frozen=True)
class GetClip:
    start: float
    end: float
    type: str = GET_CLIP


@dataclasses.dataclass(frozen=True)
class Answer:
    content: str
    type: str = ANSWER


Action = Union[GetFrames, GetAudio, GetClip, Answer]


def action_to_dict(action: Action) -> dict[str, Any]:
    """JSON form of an action, ``type`` first (what step logs record)."""
    d = dataclasses.asdict(action)
    return {"type": d.pop("type"), **d}


@dataclasses.dataclass(frozen=True)
class Turn:
    """One parsed model turn."""

    observation: str
    think: str
    confidence: float | None
    action: Action


class _DuplicateKey(ValueError):
    pass


class _NonFinite(ValueError):
    pass


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    # json accepts NaN / Infinity / -Infinity by default; the protocol's numbers are finite.
    raise _NonFinite(name)


_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


def _is_number(value: Any) -> bool:
    """A finite JSON number (bool is not a number here, unlike ``isinstance(True, int)``)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _describe(value: Any) -> str:
    return value if isinstance(value, str) else _SHORT.repr(value)


def _decode(s: str) -> dict[str, Any]:
    try:
        obj, end = _DECODER.raw_decode(s)
    except json.JSONDecodeError as e:
        raise ActionError(ErrorCode.INVALID_JSON, prompts.msg_json_decode(str(e))) from None
    except _DuplicateKey as e:
        raise ActionError(ErrorCode.INVALID_JSON, prompts.msg_duplicate_key(str(e))) from None
    except _NonFinite as e:
        raise ActionError(ErrorCode.INVALID_JSON, prompts.msg_json_decode(f"non-finite number {e}")) from None
    except RecursionError:
        raise ActionError(ErrorCode.INVALID_JSON, prompts.msg_json_decode("nesting too deep")) from None
    except ValueError as e:  # e.g. an integer literal longer than Python's digit limit
        raise ActionError(ErrorCode.INVALID_JSON, prompts.msg_json_decode(str(e))) from None
    if s[end:].strip():
        raise ActionError(ErrorCode.TRAILING_GARBAGE, prompts.MSG_TRAILING)
    if not isinstance(obj, dict):  # unreachable for text starting with '{', kept as a guard
        raise ActionError(ErrorCode.INVALID_JSON, prompts.MSG_BRACES)
    return obj


def _parse_range(act: dict[str, Any], code: ErrorCode, message) -> tuple[float, float]:
    values = []
    for field in ("start", "end"):
        if field not in act or not _is_number(act[field]):
            raise ActionError(code, message(field))
        values.append(float(act[field]))
    return values[0], values[1]


def _parse_action_object(act: Any) -> Action:
    if not isinstance(act, dict):
        raise ActionError(ErrorCode.INVALID_JSON, prompts.MSG_ACTION_TYPE)
    atype = act.get("type")
    if not isinstance(atype, str) or atype not in ACTION_TYPES:
        raise ActionError(ErrorCode.UNKNOWN_ACTION_TYPE, prompts.msg_unknown_action(_describe(atype)))
    # Extra fields inside the action object are ignored, as in the reference: the prompt's schema
    # example lists every field for every type, and models copy it.
    if atype == GET_FRAMES:
        start, end = _parse_range(act, ErrorCode.INVALID_JSON, prompts.msg_frames_field)
        num = act.get("num")
        if isinstance(num, bool) or not isinstance(num, int):
            raise ActionError(ErrorCode.INVALID_JSON, prompts.MSG_FRAMES_NUM)
        return GetFrames(start, end, num)
    if atype == GET_AUDIO:
        return GetAudio(*_parse_range(act, ErrorCode.AUDIO_ARG_TYPE, prompts.msg_range_field))
    if atype == GET_CLIP:
        return GetClip(*_parse_range(act, ErrorCode.CLIP_ARG_TYPE, prompts.msg_range_field))
    content = act.get("content")
    if not isinstance(content, str):
        raise ActionError(ErrorCode.ANSWER_NOT_STRING, prompts.MSG_ANSWER_CONTENT)
    return Answer(content)


def parse_action(text: Any, *, strict_confidence: bool = False) -> Turn:
    """Parse one model turn strictly.

    ``strict_confidence`` makes ``confidence`` a required key (on for training, off for eval and the
    CLI, as in the reference). When present, ``confidence`` must be a finite number in [0, 1].
    Raises :class:`ActionError` and nothing else.
    """
    if not isinstance(text, str):
        raise ActionError(ErrorCode.INVALID_JSON, prompts.MSG_NOT_A_STRING)
    s = text.strip()
    if s.startswith("```") or s.endswith("```") or (
        len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'"
    ):
        raise ActionError(ErrorCode.INVALID_JSON, prompts.MSG_WRAPPED)
    if not (s.startswith("{") and s.endswith("}")):
        raise ActionError(ErrorCode.INVALID_JSON, prompts.MSG_BRACES)
    obj = _decode(s)

    required = set(REQUIRED_KEYS) | ({CONFIDENCE_KEY} if strict_confidence else set())
    missing = required - obj.keys()
    if missing:
        raise ActionError(ErrorCode.INVALID_JSON, prompts.msg_missing_keys(list(missing)))
    extra = obj.keys() - ALLOWED_KEYS
    if extra:
        raise ActionError(ErrorCode.INVALID_JSON, prompts.msg_unknown_keys(list(extra)))
    if not isinstance(obj["observation"], str):
        raise ActionError(ErrorCode.INVALID_JSON, prompts.MSG_OBSERVATION_TYPE)
    if not isinstance(obj["think"], str):
        raise ActionError(ErrorCode.INVALID_JSON, prompts.MSG_THINK_TYPE)
    confidence = None
    if CONFIDENCE_KEY in obj:
        if not _is_number(obj[CONFIDENCE_KEY]):
            raise ActionError(ErrorCode.INVALID_JSON, prompts.MSG_CONFIDENCE_TYPE)
        confidence = float(obj[CONFIDENCE_KEY])
        if not 0.0 <= confidence <= 1.0:
            raise ActionError(ErrorCode.INVALID_JSON, prompts.MSG_CONFIDENCE_RANGE)
    return Turn(obj["observation"], obj["think"], confidence, _parse_action_object(obj["action"]))
