"""Upload safety: size and container-type limits, and a private temp folder per browser session.

Gradio refuses bodies over the launch's `max_file_size` before a handler runs; :func:`accept_upload`
checks again (size, a known video suffix, and the container's magic bytes, so a renamed text file is
refused) and copies the file into the session's own folder, which :meth:`SessionFiles.close` removes
when the browser tab goes away or the app stops.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile

ALLOWED_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
DEFAULT_MAX_UPLOAD_MB = 200


class UploadError(ValueError):
    """An upload the demo refuses (too large, or not a video container it accepts)."""


def _looks_like_video(head: bytes, suffix: str) -> bool:
    """Whether the first bytes are those of the container the suffix names (ISO-BMFF, Matroska/WebM, RIFF AVI)."""
    if suffix in (".mp4", ".m4v", ".mov"):
        return len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
    if suffix in (".mkv", ".webm"):
        return head[:4] == b"\x1a\x45\xdf\xa3"
    return head[:4] == b"RIFF" and head[8:12] == b"AVI "


def check_upload(path: str | pathlib.Path, max_bytes: int) -> pathlib.Path:
    """`path` if it is a file of at most `max_bytes` with an accepted video suffix; UploadError otherwise.
    A file that passes may still be unreadable: probing it reports the media layer's error."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        raise UploadError(f"{path.name}: not an accepted video type (accepted: {', '.join(ALLOWED_SUFFIXES)})")
    size = path.stat().st_size
    if size > max_bytes:
        raise UploadError(f"{path.name}: {size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB upload limit")
    with path.open("rb") as f:
        head = f.read(16)
    if not _looks_like_video(head, suffix):
        raise UploadError(f"{path.name}: the file is not a {suffix[1:]} container")
    return path


class SessionFiles:
    """A browser session's private folder under `root`: its uploads and each episode's media."""

    def __init__(self, root: pathlib.Path) -> None:
        self.path = pathlib.Path(tempfile.mkdtemp(prefix="session-", dir=root))
        self._runs = 0

    def accept_upload(self, source: str | pathlib.Path, max_bytes: int) -> pathlib.Path:
        """Checks `source` and copies it into this session's folder (the name kept, path parts dropped)."""
        source = check_upload(source, max_bytes)
        target = self.path / "uploads" / pathlib.Path(source.name).name
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, target)
        return target

    def new_run(self) -> pathlib.Path:
        """A fresh folder for one episode's media and export."""
        self._runs += 1
        run = self.path / f"run{self._runs:03d}"
        run.mkdir()
        return run

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
