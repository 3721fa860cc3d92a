"""`MediaError`: every failure of the media layer, with what went wrong and where."""

from __future__ import annotations

import os
from typing import Literal

MediaErrorKind = Literal["not_found", "not_media", "no_video", "no_audio", "truncated", "out_of_range", "decode"]
ERROR_KINDS: tuple[MediaErrorKind, ...] = (
    "not_found",
    "not_media",
    "no_video",
    "no_audio",
    "truncated",
    "out_of_range",
    "decode",
)


class MediaError(Exception):
    """A video or audio file cannot give what was asked for.

    ``kind`` is one of :data:`ERROR_KINDS`: ``not_found`` (no such file), ``not_media`` (not a file
    FFmpeg can read as audio/video), ``no_video`` / ``no_audio`` (the stream a request needs is
    missing), ``truncated`` (the file ends before its own index or duration says it should),
    ``out_of_range`` (a time outside the media) and ``decode`` (FFmpeg failed on the data).
    """

    def __init__(self, path: str | os.PathLike[str], kind: MediaErrorKind, message: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown MediaError kind {kind!r}; expected one of {ERROR_KINDS}")
        self.path = os.fspath(path)
        self.kind: MediaErrorKind = kind
        self.message = message
        super().__init__(f"{self.path}: {message} [{kind}]")

    def __reduce__(self):
        # Data-loader workers send exceptions across processes; rebuild from the three fields.
        return (type(self), (self.path, self.kind, self.message))
