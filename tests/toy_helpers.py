"""A small toy split written once per test session (tests/test_toy_*.py share it)."""

from __future__ import annotations

import pathlib

from omniagent_jax.toy import splits

# Test-split tasks 328..335: two of each question type; MCQ/NUM 20-56 s, TR/SIZE 155-527 s.
SAMPLE_START, SAMPLE_COUNT = 328, 8
_written: dict[str, pathlib.Path] = {}


def sample_split(tmp_path_factory) -> pathlib.Path:
    """The rows file of the sample split (videos checked by decoding as they are written)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _written:
        folder = tmp_path_factory.mktemp("toy_split")
        _written[key] = splits.write_split(folder, "test", SAMPLE_COUNT, start=SAMPLE_START, progress=False)
    return _written[key]
