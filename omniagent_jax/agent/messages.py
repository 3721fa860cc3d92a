"""OTA messages: ``{"role", "content": [parts]}`` dicts as in the SFT step logs, plus media records.

A media-bearing user message carries, next to its parts, a :class:`MediaRecord` under the
``"media"`` key: the action's kind and range and the frame timestamps. Consolidation builds the
placeholder from it. Step logs write it as a record only (exact times for analysis): training
re-cuts media from the text headers, which the released step logs carry and this record mirrors.
Media payloads in live messages are decoded objects: a ``uint8 [H, W, 3]`` array per image part,
a ``float32`` 16 kHz array per audio part and an ``omniagent_jax.media.Clip`` per video part.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

from omniagent_jax.agent import prompts

Message = dict[str, Any]
MediaKind = Literal["frames", "audio", "clip"]

MEDIA_KEY = "media"
MEDIA_PART_TYPES = ("image", "audio", "video")
PART_TYPE_OF_KIND = {"frames": "image", "audio": "audio", "clip": "video"}


@dataclasses.dataclass(frozen=True)
class MediaRecord:
    """What a media message holds: enough to rebuild its placeholder or re-cut its media."""

    kind: MediaKind
    start: float
    end: float
    header: str
    # frames: the requested timestamps, one per image part; clip: the sampled frame times.
    timestamps: tuple[float, ...] = ()
    num: int | None = None
    has_audio: bool = False

    def placeholder(self) -> str:
        """The text that replaces the whole message once the media is consolidated."""
        if self.kind == "frames":
            return prompts.frames_placeholder(self.header, self.timestamps)
        return prompts.media_placeholder(self.header)

    def to_json(self) -> dict[str, Any]:
        d = {"kind": self.kind, "start": self.start, "end": self.end, "header": self.header}
        if self.kind == "frames":
            d["num"] = self.num
            d["timestamps"] = list(self.timestamps)
        elif self.kind == "clip":
            d["frame_timestamps"] = list(self.timestamps)
            d["has_audio"] = self.has_audio
        return d


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def media_part(part_type: str, payload: Any) -> dict[str, Any]:
    if part_type not in MEDIA_PART_TYPES:
        raise ValueError(f"unknown media part type {part_type!r}")
    return {"type": part_type, part_type: payload}


def system_message(text: str) -> Message:
    return {"role": "system", "content": [text_part(text)]}


def user_message(parts: Sequence[dict[str, Any]], media: MediaRecord | None = None) -> Message:
    msg: Message = {"role": "user", "content": list(parts)}
    if media is not None:
        msg[MEDIA_KEY] = media
    return msg


def assistant_message(text: str) -> Message:
    return {"role": "assistant", "content": [text_part(text)]}


def has_media(message: Message) -> bool:
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") in MEDIA_PART_TYPES for p in content
    )


def message_text(message: Message) -> str:
    """All text parts of a message joined (a plain-string content is returned as is)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or () if isinstance(p, dict) and p.get("type") == "text")


def serialize_messages(messages: Sequence[Message], media_source: str = "") -> list[dict[str, Any]]:
    """JSON-ready copy of a message list: media payloads become ``media_source`` (the video path,
    from which the ``media`` record says what to cut) and records become dicts."""
    out = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            parts = []
            for p in content:
                if p.get("type") in MEDIA_PART_TYPES:
                    parts.append({"type": p["type"], p["type"]: media_source})
                else:
                    parts.append(dict(p))
            content = parts
        item: dict[str, Any] = {"role": msg.get("role"), "content": content}
        record = msg.get(MEDIA_KEY)
        if isinstance(record, MediaRecord):
            item[MEDIA_KEY] = record.to_json()
        out.append(item)
    return out
