"""Protocol error codes (docs/protocol.md §3.1) and the one exception type the agent raises for a bad turn."""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    """Every error code of the OTA protocol. The value is the marker written after ``[ERROR]``."""

    STEP_LIMIT_REACHED = "STEP_LIMIT_REACHED"
    TOKEN_LIMIT_EXCEEDED = "TOKEN_LIMIT_EXCEEDED"
    ENV_ALREADY_DONE = "ENV_ALREADY_DONE"
    # The reference splits this into FFMPEG_FRAME_FAIL / FFMPEG_AUDIO_FAIL / FFMPEG_CLIP_FAIL.
    MEDIA_DECODE_FAIL = "MEDIA_DECODE_FAIL"
    EARLY_ANSWER = "EARLY_ANSWER"
    INVALID_JSON = "INVALID_JSON"
    TRAILING_GARBAGE = "TRAILING_GARBAGE"
    UNKNOWN_ACTION_TYPE = "UNKNOWN_ACTION_TYPE"
    FRAME_TS_OOB = "FRAME_TS_OOB"
    TOO_MANY_FRAMES = "TOO_MANY_FRAMES"
    INVALID_FRAME_NUM = "INVALID_FRAME_NUM"
    AUDIO_ARG_TYPE = "AUDIO_ARG_TYPE"
    NO_AUDIO = "NO_AUDIO"
    AUDIO_RANGE = "AUDIO_RANGE"
    AUDIO_TOO_SHORT = "AUDIO_TOO_SHORT"
    AUDIO_TOO_LONG = "AUDIO_TOO_LONG"
    CLIP_ARG_TYPE = "CLIP_ARG_TYPE"
    CLIP_RANGE = "CLIP_RANGE"
    CLIP_NEG_LEN = "CLIP_NEG_LEN"
    CLIP_TOO_LONG = "CLIP_TOO_LONG"
    CLIP_TOO_SHORT = "CLIP_TOO_SHORT"
    ANSWER_JSON_PARSE = "ANSWER_JSON_PARSE"
    GT_JSON_PARSE = "GT_JSON_PARSE"
    SPAN_FORMAT = "SPAN_FORMAT"
    ANSWER_NOT_STRING = "ANSWER_NOT_STRING"
    UNKNOWN_QTYPE = "UNKNOWN_QTYPE"

    def __str__(self) -> str:
        return self.value


class ActionError(Exception):
    """A turn the protocol rejects: a code from :class:`ErrorCode` plus a human-readable detail.

    Raised by the parser (:func:`omniagent_jax.agent.actions.parse_action`), by range validation and
    by answer scoring. ``detail`` is the text shown to the model after the marker ("" for none).
    """

    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        self.code = ErrorCode(code)
        self.detail = detail
        super().__init__(f"{self.code.value}: {detail}" if detail else self.code.value)
