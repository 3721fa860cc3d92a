"""Eval / RL JSONL rows (docs/protocol.md §7.1) → validated :class:`Sample` objects, with clear errors."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from omniagent_jax.agent import rewards


class DataError(ValueError):
    """A broken data row; the message names the file, line and field."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One question about one video. ``answer`` is None when there is no ground truth."""

    video: str
    question_type: str  # as written in the data, e.g. "MCQ_LongVR-Short"
    question: str
    options: tuple[str, ...] = ()
    answer: Any = None
    # Recorded video facts (RL rows); the environment probes the video itself.
    fps: float | None = None
    duration_seconds: float | None = None
    has_audio: bool | None = None
    domain: str | None = None
    ability: str | None = None
    data_source: str | None = None
    extra_info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    index: int | None = None

    @property
    def major_type(self) -> str:
        return rewards.major_type(self.question_type)

    def to_json(self) -> dict[str, Any]:
        d = {
            "video": self.video,
            "question_type": self.question_type,
            "question": self.question,
            "options": list(self.options),
            "answer": self.answer,
        }
        for key in ("fps", "duration_seconds", "has_audio", "domain", "ability", "data_source"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.extra_info:
            d["extra_info"] = dict(self.extra_info)
        return d


def _require_str(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def _optional_number(row: Mapping[str, Any], key: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise DataError(f"field {key!r} must be a positive number, got {value!r}")
    return float(value)


def sample_from_row(row: Any, *, index: int | None = None, base_dir: str | pathlib.Path | None = None) -> Sample:
    """Validate one row. ``index``: ``extra_info.index`` when the row has one, else this default.
    ``base_dir`` resolves a relative ``video`` path (the data file's folder)."""
    if not isinstance(row, Mapping):
        raise DataError(f"row must be a JSON object, got {type(row).__name__}")
    video = _require_str(row, "video")
    if base_dir is not None and not pathlib.Path(video).is_absolute():
        video = str(pathlib.Path(base_dir) / video)
    qtype = _require_str(row, "question_type")
    question = _require_str(row, "question")
    options = row.get("options") or ()
    if not isinstance(options, Sequence) or isinstance(options, str) or not all(isinstance(o, str) for o in options):
        raise DataError(f"field 'options' must be a list of strings, got {options!r}")
    has_audio = row.get("has_audio")
    if has_audio is not None and not isinstance(has_audio, bool):
        raise DataError(f"field 'has_audio' must be true/false, got {has_audio!r}")
    extra = row.get("extra_info") or {}
    if not isinstance(extra, Mapping):
        raise DataError(f"field 'extra_info' must be an object, got {extra!r}")
    answer = row.get("answer")
    try:
        rewards.check_ground_truth(qtype, answer, options)
    except ValueError as e:
        raise DataError(str(e)) from None
    if isinstance(extra.get("index"), int) and not isinstance(extra.get("index"), bool):
        index = extra["index"]
    return Sample(
        video=video,
        question_type=qtype,
        question=question,
        options=tuple(options),
        answer=answer,
        fps=_optional_number(row, "fps"),
        duration_seconds=_optional_number(row, "duration_seconds"),
        has_audio=has_audio,
        domain=row.get("domain"),
        ability=row.get("ability"),
        data_source=row.get("data_source"),
        extra_info=dict(extra),
        index=index,
    )


def iter_samples(path: str | pathlib.Path, *, resolve_videos: bool = False,
                 video_root: str | pathlib.Path | None = None) -> Iterator[Sample]:
    """Yield the samples of a JSONL file (blank lines skipped); a broken row or an unreadable file raises
    :class:`DataError` naming ``path:line``. ``index`` defaults to the 0-based row number. Relative video
    paths are taken under ``video_root`` when given, else under the file's folder with ``resolve_videos``."""
    p = pathlib.Path(path)
    base = pathlib.Path(video_root) if video_root is not None else p.parent if resolve_videos else None
    try:
        handle = p.open("rb")  # decoded line by line, so a bad byte is reported on its own line
    except OSError as e:
        raise DataError(f"cannot read {p}: {e.strerror or e}") from None
    with handle:
        row_number = 0
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{p}:{lineno}: not UTF-8 text ({e.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(f"{p}:{lineno}: not valid JSON ({e})") from None
            try:
                yield sample_from_row(row, index=row_number, base_dir=base)
            except DataError as e:
                raise DataError(f"{p}:{lineno}: {e}") from None
            row_number += 1


def load_samples(path: str | pathlib.Path, *, resolve_videos: bool = False) -> list[Sample]:
    return list(iter_samples(path, resolve_videos=resolve_videos))
