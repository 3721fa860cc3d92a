"""Memory consolidation and the single in-context notice (docs/protocol.md §1, §4).

Each function edits a message list in place and returns the index of the first message it changed
(``None`` when nothing changed), so the engine can reuse the KV pages of the unchanged prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

from omniagent_jax.agent import prompts
from omniagent_jax.agent.messages import MEDIA_KEY, MediaRecord, Message, has_media, text_part


def _min(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def placeholder_for(message: Message) -> str:
    """The placeholder text of a media message: from its :class:`MediaRecord`, or, for a message
    built elsewhere (no record), from its text parts as the reference does (first text part is the
    header; frame times are read from the frame labels of the other text parts)."""
    record = message.get(MEDIA_KEY)
    if isinstance(record, MediaRecord):
        return record.placeholder()
    parts = message["content"]
    header = "Media content"
    if parts and parts[0].get("type") == "text":
        header = parts[0]["text"]
    if any(p.get("type") == "image" for p in parts):
        labels = [prompts.parse_media_header(p.get("text", "")) for p in parts[1:] if p.get("type") == "text"]
        stamps = [label.start for label in labels if label is not None and label.kind == "frame"]
        return prompts.frames_placeholder(header, stamps)
    return prompts.media_placeholder(header)


def consolidate(messages: list[Message], *, keep_latest: int = 1) -> int | None:
    """Replace every media-bearing user message except the ``keep_latest`` most recent ones by its
    placeholder (one text part). ``keep_latest=0`` purges all media (after an invalid action)."""
    first: int | None = None
    kept = 0
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if msg.get("role") != "user" or not has_media(msg):
            continue
        kept += 1
        if kept <= keep_latest:
            continue
        messages[i] = {"role": "user", "content": [text_part(placeholder_for(msg))]}
        first = i
    return first


def remove_notices(messages: list[Message]) -> int | None:
    """Drop every ``[NOTICE]`` text part from user messages."""
    first: int | None = None
    for i, msg in enumerate(messages):
        content = msg.get("content")
        if msg.get("role") != "user" or not isinstance(content, list):
            continue
        kept = [p for p in content if not (p.get("type") == "text" and prompts.is_notice(p.get("text", "")))]
        if len(kept) != len(content):
            messages[i] = {**msg, "content": kept}
            first = _min(first, i)
    return first


def set_notice(messages: list[Message], notice: str) -> int | None:
    """Remove older notices, then append ``notice`` as its own text part to the last user message."""
    first = remove_notices(messages)
    last = len(messages) - 1
    if last < 0 or messages[last].get("role") != "user":
        raise ValueError("a notice goes on a user message, but the last message is not one")
    msg = messages[last]
    messages[last] = {**msg, "content": [*msg["content"], text_part(notice)]}
    return _min(first, last)


def count_media_messages(messages: Sequence[Message]) -> int:
    return sum(1 for m in messages if m.get("role") == "user" and has_media(m))
