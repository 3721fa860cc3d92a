"""The export: a ZIP with a self-contained HTML report, the JSON trace and only the media the agent fetched."""

from __future__ import annotations

import json
import pathlib
import zipfile
from typing import Any

from omniagent_jax.demo.render import report_html

REPORT = "report.html"
TRACE = "trace.json"


def fetched_files(trace: dict[str, Any]) -> list[str]:
    """The media files the trace's steps name (paths relative to the run folder)."""
    return [f["file"] for step in trace.get("steps", []) for f in (step.get("media") or {}).get("files", [])]


def export_zip(trace: dict[str, Any], run_dir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """Writes `out`: report.html (its media links point inside the ZIP), trace.json and the fetched media."""
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(REPORT, report_html(trace, lambda path: path))
        z.writestr(TRACE, json.dumps(trace, indent=1, ensure_ascii=False))
        for path in fetched_files(trace):
            source = (run_dir / path).resolve()
            if source.is_relative_to(run_dir.resolve()) and source.is_file():
                z.write(source, path)
    return out
