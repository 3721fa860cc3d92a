"""One `results.jsonl` row per sample, with the reference's field names (docs/protocol.md §11).

The reference's evaluator writes, per sample, its metadata, `final_answer`, `total_reward`, `correct`
(reward > 0.5), `steps_used`, valid/invalid step counts, tool usage and sequence, token totals, `media_usage`,
`latency`, per-step records and `final_history`; its vLLM-internal timings have no counterpart here and
are left out. Unlike the reference, a sample whose episode could not be played (unreadable video,
policy failure, timeout, a video that fails to decode mid-episode) gets a row too: `status: "error"` with
`error_class` and `error_message`.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from omniagent_jax.agent.environment import END_MEDIA_FAILURE, VideoEnvironment
from omniagent_jax.agent.episode import END_CANCELLED, END_ERROR, EpisodeResult, StepRecord
from omniagent_jax.agent.messages import serialize_messages
from omniagent_jax.agent.records import step_entry
from omniagent_jax.agent.rewards import is_correct, major_type
from omniagent_jax.eval.dataset import EvalItem

STATUS_OK = "ok"
STATUS_ERROR = "error"
TIMEOUT_ERROR = "EpisodeTimeout"


def _mean(values: Sequence[float]) -> float:
    return statistics.mean(values) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (the reference's)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] * (1 - (rank - lo)) + ordered[hi] * (rank - lo))


def eval_step(rec: StepRecord, cumulative_reward: float) -> dict[str, Any]:
    """One per-step record: `latest_run.json`'s step plus the reference evaluator's action fields."""
    entry = step_entry(rec)
    act = rec.action or {}
    start, end = act.get("start"), act.get("end")
    media = rec.media
    frame_count = len(media.timestamps) if media is not None and media.kind == "frames" else 0
    cached = rec.policy_metrics.cached_prompt_tokens or 0
    entry.update({
        "error_message": rec.result.error_detail,
        "action_start": start,
        "action_end": end,
        "requested_duration_seconds": max(0.0, end - start) if start is not None and end is not None else None,
        "requested_num_frames": act.get("num"),
        "cumulative_reward": cumulative_reward,
        # Media is cut in memory and never written: no paths (the `media` record says what was cut).
        "clip_path": None,
        "audio_path": None,
        "frame_paths": [],
        "frame_count": frame_count,
        "vllm_cached_tokens": cached,
        "vllm_cached_ratio": cached / entry["prompt_total_tokens"] if entry["prompt_total_tokens"] else 0.0,
    })
    return entry


def media_usage(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The reference's per-sample media summary from the step records."""
    clips = [s["requested_duration_seconds"] for s in steps
             if s["action_type"] == "get_clip" and s["requested_duration_seconds"] is not None]
    audio = [s["requested_duration_seconds"] for s in steps
             if s["action_type"] == "get_audio" and s["requested_duration_seconds"] is not None]
    requested = [s["requested_num_frames"] for s in steps
                 if s["action_type"] == "get_frames" and s["requested_num_frames"] is not None]
    returned = [s["frame_count"] for s in steps if s["action_type"] == "get_frames"]
    return {
        "clip_calls": len(clips), "audio_calls": len(audio), "frame_calls": len(returned),
        "total_clip_seconds": float(sum(clips)), "total_audio_seconds": float(sum(audio)),
        "total_requested_frames": int(sum(requested)), "total_returned_frames": int(sum(returned)),
        "avg_clip_seconds_per_call": _mean(clips), "avg_audio_seconds_per_call": _mean(audio),
        "avg_requested_frames_per_call": _mean(requested), "avg_returned_frames_per_call": _mean(returned),
    }


def latency(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The reference's per-sample latency summary (its vLLM-internal timings excepted)."""
    col = {k: [float(s[f"{k}_seconds"]) for s in steps] for k in
           ("prompt_build", "multimodal_prep", "generation", "env_step", "postprocess", "overhead", "step_wall")}
    gen, env = col["generation"], col["env_step"]
    out: dict[str, Any] = {f"total_{k}_seconds": sum(v) for k, v in col.items()}
    out.update({
        "pure_model_latency_seconds": sum(gen), "model_only_seconds": sum(gen),
        "model_pipeline_seconds": sum(col["prompt_build"]) + sum(col["multimodal_prep"]) + sum(gen),
        "pure_env_latency_seconds": sum(env), "env_only_seconds": sum(env), "agent_compute_seconds": sum(gen) + sum(env),
    })
    out.update({f"avg_{k}_seconds_per_step": _mean(v) for k, v in col.items() if k != "step_wall"})
    out["avg_step_wall_seconds"] = _mean(col["step_wall"])
    for name, values in (("generation", gen), ("env_step", env)):
        for q in (50, 90, 95):
            out[f"p{q}_{name}_seconds_per_step"] = percentile(values, q / 100)
    totals: dict[str, float] = {}
    counts: Counter[str] = Counter()
    for s in steps:
        totals[s["action_type"]] = totals.get(s["action_type"], 0.0) + float(s["env_step_seconds"])
        counts[s["action_type"]] += 1
    out["tool_env_seconds_total"] = totals
    out["tool_env_seconds_avg"] = {k: totals[k] / counts[k] for k in totals}
    return out


def _token_totals(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys = ("response_tokens", "prompt_text_tokens", "prompt_total_tokens", "prompt_nontext_tokens", "full_sequence_tokens")
    for prefix, chosen in (("", steps), ("valid_", [s for s in steps if s["is_action_valid"]]),
                           ("invalid_", [s for s in steps if not s["is_action_valid"]])):
        for key in keys:
            out[f"{prefix}total_{key}"] = int(sum(s[key] for s in chosen))
        for key in ("prompt_build", "multimodal_prep", "generation", "env_step", "postprocess", "overhead", "step_wall"):
            if prefix:
                out[f"{prefix}total_{key}_seconds"] = float(sum(s[f"{key}_seconds"] for s in chosen))
    n = len(steps)
    for key in keys:
        out[f"avg_{key}_per_step"] = out[f"total_{key}"] / n if n else 0.0
    common = int(sum(s["common_prefix_tokens"] for s in steps))
    out.update({
        "common_prefix_step_count": sum(1 for s in steps if s["common_prefix_tokens"] > 0),
        "prompt_token_ids_step_count": 0, "prompt_token_ids_requested_step_count": 0, "prompt_token_ids_success_rate": 0.0,
        "total_common_prefix_tokens": common,
        "total_effective_new_prompt_tokens": int(sum(s["effective_new_prompt_tokens"] for s in steps)),
        "avg_common_prefix_tokens_per_step": common / n if n else 0.0,
        "avg_common_prefix_ratio_per_step": _mean([s["common_prefix_ratio"] for s in steps]),
        "prefix_reuse_ratio": common / out["total_prompt_total_tokens"] if out["total_prompt_total_tokens"] else 0.0,
        "total_vllm_cached_tokens": common,
        "avg_vllm_cached_tokens_per_step": common / n if n else 0.0,
        "avg_vllm_cached_ratio_per_step": _mean([s["vllm_cached_ratio"] for s in steps]),
        "vllm_cached_step_count": sum(1 for s in steps if s["vllm_cached_tokens"] > 0),
        # Ours: what the engine actually prefilled (pages recomputed included), when the policy knows.
        "total_prefilled_tokens": int(sum(s["policy_metrics"].get("prefilled_tokens") or 0 for s in steps)),
    })
    return out


def split_error(error: str | None) -> tuple[str, str]:
    """`EpisodeResult.error` ("<exception type>: <message>") as (class, message)."""
    if not error:
        return "", ""
    cls, sep, msg = error.partition(": ")
    return (cls, msg) if sep and cls.isidentifier() else ("Error", error)


def result_row(item: EvalItem, result: EpisodeResult, env: VideoEnvironment | None, *, run: Mapping[str, Any],
               started_at: str, ended_at: str, timed_out: bool = False) -> dict[str, Any]:
    """The `results.jsonl` row of one played sample. `run` holds the run-wide fields (`model_path`,
    `gpu_id`, `shard_index`, `model_load_seconds`, `runtime_config`)."""
    sample = item.sample
    # A video that fails to decode mid-episode ends it "not by the model's fault": an error too, so it is
    # counted, visible and retried with --retry-errors rather than scored as a wrong answer.
    media_failure = result.end_reason == END_MEDIA_FAILURE
    failed = result.end_reason in (END_ERROR, END_CANCELLED) or media_failure
    error_class, error_message = split_error(result.error)
    if media_failure:
        error_class, error_message = "MediaError", result.steps[-1].result.error_detail if result.steps else ""
    if result.end_reason == END_CANCELLED:
        error_class = TIMEOUT_ERROR if timed_out else "Cancelled"
        error_message = f"the episode ran past --sample-timeout ({run.get('sample_timeout')} s)" if timed_out else "cancelled"
    steps: list[dict[str, Any]] = []
    cumulative = 0.0
    for rec in result.steps:
        cumulative += rec.result.reward
        steps.append(eval_step(rec, cumulative))
    tools = [s["action_type"] for s in steps]
    row: dict[str, Any] = {
        "sample_index": item.index,
        "gpu_id": run.get("gpu_id"),
        "shard_index": run.get("shard_index", 0),
        "model_path": run.get("model_path"),
        "video": sample.video,
        "question_type": major_type(sample.question_type),
        "dataset_question_type": sample.question_type,
        "ability": sample.ability or "",
        "data_source": sample.data_source or "",
        "domain": sample.domain or "",
        "extra_info": dict(sample.extra_info),
        "question": sample.question,
        "ground_truth": sample.answer,
        "options": list(sample.options),
        "started_at": started_at,
        "ended_at": ended_at,
        "model_load_seconds": run.get("model_load_seconds", 0.0),
        "runtime_config": dict(run.get("runtime_config") or {}),
        "status": STATUS_ERROR if failed else STATUS_OK,
        "error": f"{error_class}: {error_message}" if failed else "",
        "error_class": error_class if failed else "",
        "error_message": error_message if failed else "",
        "seed": result.seed,
        "episode_seconds": result.wall_seconds,
        "final_answer": result.final_answer,
        "total_reward": 0.0 if failed else result.total_reward,
        "correct": bool(not failed and is_correct(result.total_reward)),
        "won": result.won,
        "scored": result.scored,
        "end_reason": result.end_reason,
        "error_code": result.error_code,
        "effective_max_steps": result.max_steps,
        "steps_used": result.steps_used,
        "tool_usage_counts": dict(Counter(tools)),
        "tool_sequence": tools,
        "valid_step_count": sum(1 for s in steps if s["is_action_valid"]),
        "invalid_step_count": sum(1 for s in steps if not s["is_action_valid"]),
        **_token_totals(steps),
        "video_info": None if env is None else {"duration": env.duration, "fps": env.fps, "has_audio": env.has_audio},
        "env_info": {} if env is None else {"max_steps": env.max_steps, "end_reason": env.end_reason},
        "media_usage": media_usage(steps),
        "latency": latency(steps),
        "steps": steps,
        "final_history": {
            "video": sample.video,
            "question": sample.question,
            "runtime_config": dict(run.get("runtime_config") or {}),
            "messages": serialize_messages(result.messages, sample.video),
        },
    }
    return row


_RUN_IDENTITY = {"gpu_id", "shard_index", "model_path", "runtime_config", "run_id", "latency"}
_CACHE_WORDS = ("cached", "common_prefix", "prefill", "prefix_reuse", "effective_new_prompt", "prefix_caching")


def comparable_row(value: Any) -> Any:
    """`value` (a row, or any part of one) without what differs between runs of the same samples: timings
    (`*_seconds`, `*_at`, `latency`), cache statistics (what was served from a prefix cache depends on which
    episode reached a shared prompt first, and on the server) and the run's identity (`runtime_config`,
    `model_path`, `gpu_id`, `shard_index`). Two runs agree when their comparable rows are equal."""
    if isinstance(value, Mapping):
        return {k: comparable_row(v) for k, v in value.items()
                if k not in _RUN_IDENTITY and not k.endswith(("_seconds", "_at")) and not any(w in k for w in _CACHE_WORDS)}
    if isinstance(value, list):
        return [comparable_row(v) for v in value]
    return value
