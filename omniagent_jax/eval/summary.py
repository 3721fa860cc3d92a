"""`summary.json` / `summary.csv`, `samples.csv`, `breakdowns.json` and `summary_by_<field>.csv` from the
rows of `results.jsonl`, with the reference's metric names (docs/protocol.md §11).

As in the reference, the averages are over the samples whose episode was played (`status: "ok"`), and
`accuracy_reward_gt_0_5` is the share of them with reward > 0.5; unlike it, errored samples are in the
rows and counted (`num_error`, `error_classes`), and `accuracy_all_samples` counts them as wrong.
For TR the reward is the temporal IoU and for SIZE/NUM the mean relative accuracy, so their
`avg_reward` is the mean IoU / MRA (`tr_mean_iou`, `size_mra`, `num_mra`).
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from omniagent_jax.eval.results_file import write_text_atomic
from omniagent_jax.eval.rows import STATUS_OK

BREAKDOWN_FIELDS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "question_type": lambda r: r.get("question_type", ""),
    "ability": lambda r: r.get("ability", ""),
    "data_source": lambda r: r.get("data_source", ""),
    "split": lambda r: (r.get("extra_info") or {}).get("split", ""),
}

# (summary name, row field or (block, field), int?) averaged over the ok rows.
_AVERAGES: tuple[tuple[str, str | tuple[str, str]], ...] = (
    ("avg_reward", "total_reward"), ("avg_steps", "steps_used"), ("avg_episode_seconds", "episode_seconds"),
    ("avg_response_tokens", "total_response_tokens"), ("avg_prompt_text_tokens", "total_prompt_text_tokens"),
    ("avg_prompt_total_tokens", "total_prompt_total_tokens"), ("avg_prompt_nontext_tokens", "total_prompt_nontext_tokens"),
    ("avg_full_sequence_tokens", "total_full_sequence_tokens"), ("avg_valid_step_count", "valid_step_count"),
    ("avg_invalid_step_count", "invalid_step_count"),
    ("avg_valid_prompt_total_tokens", "valid_total_prompt_total_tokens"),
    ("avg_valid_full_sequence_tokens", "valid_total_full_sequence_tokens"),
    ("avg_invalid_prompt_total_tokens", "invalid_total_prompt_total_tokens"),
    ("avg_invalid_full_sequence_tokens", "invalid_total_full_sequence_tokens"),
    ("avg_valid_generation_seconds", "valid_total_generation_seconds"),
    ("avg_valid_env_step_seconds", "valid_total_env_step_seconds"),
    ("avg_invalid_generation_seconds", "invalid_total_generation_seconds"),
    ("avg_invalid_env_step_seconds", "invalid_total_env_step_seconds"),
    ("avg_total_clip_seconds_per_sample", ("media_usage", "total_clip_seconds")),
    ("avg_total_audio_seconds_per_sample", ("media_usage", "total_audio_seconds")),
    ("avg_total_requested_frames_per_sample", ("media_usage", "total_requested_frames")),
    ("avg_total_returned_frames_per_sample", ("media_usage", "total_returned_frames")),
    ("avg_clip_calls_per_sample", ("media_usage", "clip_calls")),
    ("avg_audio_calls_per_sample", ("media_usage", "audio_calls")),
    ("avg_frame_calls_per_sample", ("media_usage", "frame_calls")),
    ("avg_total_multimodal_prep_seconds_per_sample", ("latency", "total_multimodal_prep_seconds")),
    ("avg_total_generation_seconds_per_sample", ("latency", "total_generation_seconds")),
    ("avg_total_env_step_seconds_per_sample", ("latency", "total_env_step_seconds")),
    ("avg_total_overhead_seconds_per_sample", ("latency", "total_overhead_seconds")),
    ("avg_total_common_prefix_tokens", "total_common_prefix_tokens"),
    ("avg_total_effective_new_prompt_tokens", "total_effective_new_prompt_tokens"),
    ("avg_prefix_reuse_ratio", "prefix_reuse_ratio"),
    ("avg_generation_seconds_per_step", ("latency", "avg_generation_seconds_per_step")),
    ("avg_env_step_seconds_per_step", ("latency", "avg_env_step_seconds_per_step")),
    ("p50_generation_seconds_per_step", ("latency", "p50_generation_seconds_per_step")),
    ("p90_generation_seconds_per_step", ("latency", "p90_generation_seconds_per_step")),
    ("p95_generation_seconds_per_step", ("latency", "p95_generation_seconds_per_step")),
)


def _value(row: Mapping[str, Any], key: str | tuple[str, str]) -> float:
    if isinstance(key, tuple):
        return float((row.get(key[0]) or {}).get(key[1], 0.0) or 0.0)
    return float(row.get(key, 0.0) or 0.0)


def _mean_or_none(values: Sequence[float]) -> float | None:
    return statistics.mean(values) if values else None


def group_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The reference's `compute_group_metrics` over `rows`, plus error counts and the per-type metrics."""
    ok = [r for r in rows if r.get("status") == STATUS_OK]
    out: dict[str, Any] = {
        "num_samples": len(rows),
        "num_success": len(ok),
        "num_error": len(rows) - len(ok),
        "success_rate": len(ok) / len(rows) if rows else 0.0,
        "accuracy_reward_gt_0_5": sum(1 for r in ok if r.get("correct")) / len(ok) if ok else 0.0,
        "accuracy_all_samples": sum(1 for r in ok if r.get("correct")) / len(rows) if rows else 0.0,
        "num_scored": sum(1 for r in ok if r.get("scored")),
    }
    for name, key in _AVERAGES:
        out[name] = statistics.mean([_value(r, key) for r in ok]) if ok else 0.0
    for name, qtype in (("tr_mean_iou", "TR"), ("size_mra", "SIZE"), ("num_mra", "NUM"), ("mcq_accuracy", "MCQ")):
        typed = [r for r in ok if r.get("question_type") == qtype]
        out[name] = _mean_or_none([float(r["total_reward"]) for r in typed]) if qtype != "MCQ" else \
            _mean_or_none([1.0 if r.get("correct") else 0.0 for r in typed])
    tools: Counter[str] = Counter()
    for r in ok:
        tools.update(r.get("tool_usage_counts") or {})
    out["tool_usage_counts"] = dict(tools)
    out["error_classes"] = dict(Counter(r.get("error_class") or "Error" for r in rows if r.get("status") != STATUS_OK))
    out["total_prompt_tokens"] = int(sum(_value(r, "total_prompt_total_tokens") for r in rows))
    out["total_cached_prompt_tokens"] = int(sum(_value(r, "total_common_prefix_tokens") for r in rows))
    prompt, cached = out["total_prompt_tokens"], out["total_cached_prompt_tokens"]
    out["tokens_reused_ratio"] = cached / prompt if prompt else 0.0
    return out


def breakdowns(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per question_type / ability / data_source / split: the group metrics of each value (empty: UNKNOWN)."""
    out: dict[str, dict[str, Any]] = {}
    for field, get in BREAKDOWN_FIELDS.items():
        buckets: dict[str, list[Mapping[str, Any]]] = {}
        for r in rows:
            buckets.setdefault(str(get(r) or "UNKNOWN"), []).append(r)
        out[field] = {k: group_metrics(v) for k, v in sorted(buckets.items())}
    return out


def _csv_value(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value


def write_csv(path: pathlib.Path, rows: Iterable[Mapping[str, Any]], fields: Sequence[str] | None = None) -> None:
    rows = list(rows)
    if fields is None:
        fields = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_value(r.get(k)) for k in fields})
    write_text_atomic(path, buffer.getvalue())


SAMPLE_FIELDS = (
    "sample_index", "status", "correct", "question_type", "ability", "data_source", "split", "extra_index", "gpu_id",
    "video", "ground_truth", "final_answer", "total_reward", "steps_used", "valid_step_count", "invalid_step_count",
    "common_prefix_step_count", "total_common_prefix_tokens", "total_effective_new_prompt_tokens", "prefix_reuse_ratio",
    "episode_seconds", "total_response_tokens", "total_prompt_text_tokens", "total_prompt_total_tokens",
    "total_prompt_nontext_tokens", "total_full_sequence_tokens", "total_generation_seconds", "total_env_step_seconds",
    "clip_calls", "audio_calls", "frame_calls", "total_clip_seconds", "total_audio_seconds", "total_requested_frames",
    "total_returned_frames", "tool_sequence", "error", "error_class", "end_reason", "seed",
)


def sample_csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    extra = row.get("extra_info") or {}
    lat, media = row.get("latency") or {}, row.get("media_usage") or {}
    out = {k: row.get(k) for k in SAMPLE_FIELDS}
    out.update({"split": extra.get("split", ""), "extra_index": extra.get("index", ""),
                "total_generation_seconds": lat.get("total_generation_seconds", 0.0),
                "total_env_step_seconds": lat.get("total_env_step_seconds", 0.0),
                "tool_sequence": ",".join(row.get("tool_sequence") or [])})
    out.update({k: media.get(k, 0) for k in ("clip_calls", "audio_calls", "frame_calls", "total_clip_seconds",
                                            "total_audio_seconds", "total_requested_frames", "total_returned_frames")})
    return out


def write_summaries(out_dir: pathlib.Path, rows: Sequence[Mapping[str, Any]], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Writes summary.json/.csv, samples.csv, breakdowns.json and summary_by_<field>.csv; returns the summary."""
    rows = sorted(rows, key=lambda r: r["sample_index"])
    summary = {**extra, **group_metrics(rows)}
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_csv(out_dir / "summary.csv", [summary])
    write_csv(out_dir / "samples.csv", [sample_csv_row(r) for r in rows], SAMPLE_FIELDS)
    groups = breakdowns(rows)
    write_text_atomic(out_dir / "breakdowns.json", json.dumps(groups, indent=2, ensure_ascii=False) + "\n")
    for field, groups_of in groups.items():
        write_csv(out_dir / f"summary_by_{field}.csv", [{field: k, **m} for k, m in groups_of.items()])
    return summary


def format_table(summary: Mapping[str, Any], groups: Mapping[str, Mapping[str, Any]]) -> str:
    """The end-of-run table: overall and per question type."""
    lines = [f"{'group':<16}{'n':>6}{'ok':>6}{'err':>6}{'acc':>8}{'reward':>9}{'steps':>7}"]

    def line(name: str, m: Mapping[str, Any]) -> str:
        return (f"{name[:15]:<16}{m['num_samples']:>6}{m['num_success']:>6}{m['num_error']:>6}"
                f"{m['accuracy_reward_gt_0_5']:>8.3f}{m['avg_reward']:>9.3f}{m['avg_steps']:>7.2f}")

    lines.append(line("all", summary))
    for name, m in (groups.get("question_type") or {}).items():
        lines.append(line(name, m))
    return "\n".join(lines)
