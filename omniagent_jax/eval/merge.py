"""Summaries of a run, of its shards, and of several output directories merged (`omniagent eval merge`).

An unsharded run writes the summary files itself. Shard K of several writes `summary.shard-K.json`; the
shard that finds every shard's rows present (all shards share the output directory) also writes the
combined `results.jsonl` and summary files. `omniagent eval merge D1 D2 ... --output-dir D` does the same
for directories from different hosts: rows are matched by `sample_index` (an `ok` row wins over an
`error` row of the same sample), and the runs must share their result configuration (docs/protocol.md §11).
"""

from __future__ import annotations

import argparse
import glob
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from omniagent_jax.eval import metadata, results_file
from omniagent_jax.eval.rows import STATUS_OK
from omniagent_jax.eval.summary import write_summaries


class MergeError(ValueError):
    """Directories that cannot be merged."""


def summary_extra(args: argparse.Namespace, plan: Any, played: Any) -> dict[str, Any]:
    """The run-level fields of a summary: where, what, and this invocation's speed."""
    return {
        "started_at": plan.meta["created_at"],
        "finished_at": metadata.utc_now(),
        "dataset_jsonl": str(args.dataset),
        "output_dir": str(plan.out_dir),
        "model_path": getattr(args, "model", None),
        "policy": plan.meta["policy"],
        "shard_index": plan.shard[0],
        "num_shards": plan.shard[1],
        "num_played_this_run": len(played.rows) if played is not None else 0,
        "run_wall_seconds": played.wall_seconds if played is not None else 0.0,
        "samples_per_minute": played.samples_per_minute if played is not None else 0.0,
        "runtime_config": plan.meta["result_config"],
    }


def all_rows(directory: pathlib.Path) -> dict[int, dict[str, Any]]:
    """Every row of `results.jsonl` and `results.shard-*.jsonl` under `directory` (ok rows win)."""
    rows: dict[int, dict[str, Any]] = {}
    paths = [directory / "results.jsonl", *sorted(pathlib.Path(p) for p in glob.glob(str(directory / "results.shard-*.jsonl")))]
    for path in paths:
        for index, row in results_file.read_rows(path, repair=False).items():
            if index not in rows or row.get("status") == STATUS_OK or rows[index].get("status") != STATUS_OK:
                rows[index] = row
    return rows


def write_shard_or_run_summary(plan: Any, rows: Sequence[Mapping[str, Any]], extra: Mapping[str, Any]) -> dict[str, Any]:
    """An unsharded run's summary files; a shard's `summary.shard-K.json`, and the combined files once every
    shard's rows are in the directory. Returns this run's (or shard's) summary."""
    k, n = plan.shard
    if n == 1:
        return write_summaries(plan.out_dir, rows, extra)
    from omniagent_jax.eval.summary import group_metrics

    summary = {**extra, **group_metrics(rows)}
    metadata.write_json_atomic(plan.out_dir / f"summary.shard-{k}.json", summary)
    combined = all_rows(plan.out_dir)
    if all(item.index in combined for item in plan.selection):
        shards = [metadata.read_metadata(plan.out_dir / f"summary.shard-{i}.json") for i in range(n)]
        speed = sum(s.get("samples_per_minute", 0.0) for s in shards if s)
        chosen = [combined[item.index] for item in plan.selection]
        results_file.write_rows(plan.out_dir / "results.jsonl", sorted(chosen, key=lambda r: r["sample_index"]))
        write_summaries(plan.out_dir, chosen, {**extra, "shard_index": None, "samples_per_minute": speed,
                                               "merged_from": [str(plan.out_dir)]})
    return summary


def merge_dirs(dirs: Sequence[str | pathlib.Path], out_dir: str | pathlib.Path, *, force: bool = False) -> dict[str, Any]:
    """Merges the rows of `dirs` into `out_dir` (results.jsonl and every summary file); returns the summary."""
    out = pathlib.Path(out_dir)
    rows: dict[int, dict[str, Any]] = {}
    configs: dict[str, dict[str, Any]] = {}
    speed = 0.0
    for d in map(pathlib.Path, dirs):
        if not d.is_dir():
            raise MergeError(f"{d} is not a directory")
        found = all_rows(d)
        if not found:
            raise MergeError(f"{d} holds no results.jsonl or results.shard-*.jsonl rows")
        for path in sorted(p for p in d.glob("run_metadata*.json") if p.resolve() != (out / "run_metadata.json").resolve()):
            meta = metadata.read_metadata(path) or {}
            configs[str(path)] = meta.get("result_config") or {}
        for path in sorted(d.glob("summary*.json")):
            if path.name == "summary.json" and any(d.glob("summary.shard-*.json")):
                continue
            speed += (metadata.read_metadata(path) or {}).get("samples_per_minute", 0.0) or 0.0
        for index, row in found.items():
            if index not in rows or row.get("status") == STATUS_OK or rows[index].get("status") != STATUS_OK:
                rows[index] = row
    distinct = {repr(sorted(c.items())) for c in configs.values()}
    if len(distinct) > 1 and not force:
        raise MergeError("the directories hold runs of different configurations (" + ", ".join(sorted(configs)) +
                         "); pass --force to merge anyway")
    out.mkdir(parents=True, exist_ok=True)
    ordered = [rows[i] for i in sorted(rows)]
    results_file.write_rows(out / "results.jsonl", ordered)
    first = next(iter(configs.values()), {})
    merged_meta = {"created_at": metadata.utc_now(), "merged_from": [str(d) for d in dirs], "versions": metadata.versions(),
                   "result_config": first}
    metadata.write_json_atomic(out / "run_metadata.json", merged_meta)
    extra = {"finished_at": metadata.utc_now(), "output_dir": str(out), "merged_from": [str(d) for d in dirs],
             "samples_per_minute": speed, "runtime_config": first}
    return write_summaries(out, ordered, extra)
