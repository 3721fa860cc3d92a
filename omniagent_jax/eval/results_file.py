"""`results.jsonl` written so that a kill at any moment loses at most the sample being written.

Each row is one line, written by one `os.write` on a file opened with O_APPEND and flushed to the disk
(`fsync`) before the next sample is reported done. A kill mid-write leaves a last line without its
newline: :func:`read_rows` (on resume) truncates the file back to the last complete line, so that
sample is simply played again. A sample may have several rows (an error row, then the row of its retry
under `--retry-errors`): the last one counts, and :func:`compact` rewrites the file with one row per
sample, atomically (a temporary file renamed over it). Every other unreadable line is an error: it
was not written by this code, and guessing would hide lost results (docs/protocol.md §11).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# Test hook: called with ("before_write" | "mid_write" | "after_write", sample_index); a test raises from
# it to stop the run there. "mid_write" runs after the first half of the line's bytes reached the file.
KillHook = Callable[[str, int], None]
kill_hook: KillHook | None = None


class ResultsError(ValueError):
    """A results file this run cannot continue from."""


def read_rows(path: str | pathlib.Path, *, repair: bool = True) -> dict[int, dict[str, Any]]:
    """The rows of a results file by `sample_index` (the last row of each sample wins). A torn last line
    is cut off (with `repair`; otherwise ignored); an unreadable complete line raises ResultsError."""
    p = pathlib.Path(path)
    if not p.exists():
        return {}
    data = p.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        with p.open("r+b") as f:  # the torn tail of a kill mid-write: that sample is played again
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    rows: dict[int, dict[str, Any]] = {}
    for lineno, line in enumerate(data[:end].split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            index = row["sample_index"]
        except (ValueError, KeyError, TypeError) as e:
            raise ResultsError(f"{p}:{lineno} is not a results row ({type(e).__name__}: {e}); "
                               "move the file away to start over") from None
        if not isinstance(index, int):
            raise ResultsError(f"{p}:{lineno}: sample_index must be an integer, got {index!r}")
        rows.pop(index, None)  # re-inserted: the dict keeps the order of each sample's last row
        rows[index] = row
    return rows


class ResultsWriter:
    """Appends rows to a results file: one write per row, fsync'd (use as a context manager)."""

    def __init__(self, path: str | pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, row: Mapping[str, Any]) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        index = int(row["sample_index"])
        if kill_hook is not None:
            kill_hook("before_write", index)
            half = len(data) // 2
            os.write(self._fd, data[:half])
            os.fsync(self._fd)
            kill_hook("mid_write", index)
            data = data[half:]
        view = memoryview(data)
        while view:  # one write for a regular file; the loop only guards against a short write
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        if kill_hook is not None:
            kill_hook("after_write", index)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_text_atomic(path: str | pathlib.Path, text: str) -> pathlib.Path:
    """Writes `path` whole or not at all: a temporary file of this process, renamed over it (shards that
    finish together may write the same combined files at once)."""
    p = pathlib.Path(path)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    return p


def write_rows(path: str | pathlib.Path, rows: Iterable[Mapping[str, Any]]) -> pathlib.Path:
    """Writes a whole results file atomically."""
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def compact(path: str | pathlib.Path) -> dict[int, dict[str, Any]]:
    """Rewrites `path` with one row per sample (its last) when some sample has several; returns the rows."""
    p = pathlib.Path(path)
    rows = read_rows(p)
    lines = sum(1 for line in p.read_bytes().split(b"\n") if line.strip()) if p.exists() else 0
    if lines != len(rows):
        write_rows(p, rows.values())
    return rows
