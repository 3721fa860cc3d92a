"""Episode records (docs/protocol.md §7): ``latest_run.json``, SFT step logs, and the SFT export filter."""

from __future__ import annotations

import json
import pathlib
import posixpath
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omniagent_jax.agent.environment import VideoEnvironment
from omniagent_jax.agent.errors import ErrorCode
from omniagent_jax.agent.messages import MEDIA_PART_TYPES, serialize_messages
from omniagent_jax.agent.runner import EpisodeResult, StepRecord

MODE = "OmniAgent"
# Media failures: ours, and the reference's ffmpeg codes (in its released step logs).
_MEDIA_FAILURES = frozenset({"MEDIA_DECODE_FAIL", "FFMPEG_AUDIO_FAIL", "FFMPEG_CLIP_FAIL", "FFMPEG_FRAME_FAIL"})


def bool_str(value: bool) -> str:
    """Booleans of the step log as the reference wrote them: the strings "True" / "False"."""
    return "True" if value else "False"


def _video_facts(env: VideoEnvironment) -> dict[str, Any]:
    return {"fps": env.fps, "duration_seconds": env.duration, "has_audio": env.has_audio}


def env_config_record(env: VideoEnvironment, steps_used: int) -> dict[str, Any]:
    limits = env.config.limits
    return {
        "actual_used_steps": steps_used,
        "actual_max_steps": env.max_steps,
        "actual_max_frames": limits.max_frames,
        "actual_max_audio": limits.max_audio,
        "actual_max_clip": limits.max_clip,
        "video_duration": env.duration,
    }


# ---------------------------------------------------------------------------------- step logs
def step_log_lines(
    result: EpisodeResult,
    env: VideoEnvironment,
    *,
    question_id: str,
    traj_id: str,
) -> list[dict[str, Any]]:
    """One SFT step-log line per step, in the reference layout. ``raw_input`` media parts hold the
    video path and each media message its ``media`` record (kind, range, timestamps), and
    ``extra_info.action`` the parsed action, so training can re-cut every input from the video."""
    sample = env.sample
    lines = []
    for rec in result.steps:
        r = rec.result
        extra = {
            "video": sample.video,
            **_video_facts(env),
            "question_type": sample.question_type,
            "question": sample.question,
            "answer": sample.answer,
            "options": list(sample.options),
            "mode": MODE,
            "max_steps": env.max_steps,
            "won": r.won,
            "is_action_valid": bool_str(r.is_action_valid),
            "reward": r.reward,
            "action": rec.action,
            "token_stats": {
                "final_history_tokens": r.prompt_tokens if r.prompt_tokens is not None else 0,
                "total_assistant_tokens": 0,
                "avg_assistant_tokens": 0.0,
                "max_prompt_limit": env.config.max_prompt_tokens,
            },
            "env_config": env_config_record(env, rec.step),
        }
        if r.error_code is not None:
            extra["error_code"] = r.error_code.value
            extra["error_message"] = r.error_detail
        if rec.media is not None:
            extra["media"] = rec.media.to_json()
        lines.append({
            "question_id": question_id,
            "traj_id": traj_id,
            "step": rec.step,
            "raw_input": serialize_messages(rec.raw_input, sample.video),
            "output": rec.output,
            "step_reward": r.reward,
            "done": bool_str(r.done),
            "extra_info": extra,
            "episode_reward": result.total_reward,
        })
    return lines


# --------------------------------------------------------------------------------- SFT export
_AGENTIC_TMP = "agentic_tmp/"


def rebase_path(path: str, base_path: str, *, strip_prefix: str | None = None) -> str:
    """Put a media path under ``base_path``: a reference store path (``.../agentic_tmp/<rest>[?signature]``)
    becomes ``base_path/<rest>``; a relative path is joined onto it; an absolute one is re-rooted when it
    starts with ``strip_prefix`` and kept otherwise."""
    if not isinstance(path, str) or not path:
        return path
    if _AGENTIC_TMP in path:  # the reference's media store: what follows it goes under base_path
        return posixpath.join(base_path, path.split(_AGENTIC_TMP, 1)[1].split("?", 1)[0])
    if strip_prefix and path.startswith(strip_prefix):
        path = path[len(strip_prefix):].lstrip("/")
    if posixpath.isabs(path):
        return path
    return posixpath.join(base_path, path)


def _rebase_line(line: dict[str, Any], base_path: str, strip_prefix: str | None) -> dict[str, Any]:
    line = json.loads(json.dumps(line))  # deep copy; the input lines stay untouched
    extra = line.get("extra_info") or {}
    if isinstance(extra.get("video"), str):
        extra["video"] = rebase_path(extra["video"], base_path, strip_prefix=strip_prefix)
    for msg in line.get("raw_input") or ():
        for part in msg.get("content") or ():
            if isinstance(part, dict) and part.get("type") in MEDIA_PART_TYPES:
                key = part["type"]
                part[key] = rebase_path(part.get(key), base_path, strip_prefix=strip_prefix)
    return line


def export_sft(
    lines: Iterable[Mapping[str, Any]],
    *,
    base_path: str,
    max_steps: int,
    strip_prefix: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The SFT export filter: per (question, answer, video) keep the last won trajectory; drop its
    steps that carry an error code; rebase media paths under ``base_path``; write only won
    trajectories of at most ``max_steps`` steps. Returns the kept lines and counts."""
    trajectories: OrderedDict[str, list[Mapping[str, Any]]] = OrderedDict()
    by_sample: OrderedDict[tuple[str, str, str], list[str]] = OrderedDict()
    for line in lines:
        tid = str(line["traj_id"])
        trajectories.setdefault(tid, []).append(line)
        info = line.get("extra_info") or {}
        key = (str(info.get("question", "")), str(info.get("answer", "")), str(info.get("video", "")))
        if tid not in by_sample.setdefault(key, []):
            by_sample[key].append(tid)

    def won(tid: str) -> bool:
        steps = sorted(trajectories[tid], key=lambda s: s["step"])
        return bool((steps[-1].get("extra_info") or {}).get("won"))

    stats = {"samples": len(by_sample), "trajectories": len(trajectories), "kept_trajectories": 0,
             "kept_steps": 0, "dropped_not_won": 0, "dropped_superseded": 0, "dropped_too_long": 0,
             "dropped_error_steps": 0}
    # The reference's report: error turns of the trajectory it looks at per sample (the last won one, else
    # the last), and how many samples ended kept, unwon or too long.
    ref = dict.fromkeys(("ffmpeg_err", "step_limit", "token_limit", "win_count", "fail_count", "overstep_count"), 0)
    chosen = set()
    for tids in by_sample.values():
        winners = [t for t in tids if won(t)]
        stats["dropped_not_won"] += len(tids) - len(winners)
        stats["dropped_superseded"] += max(0, len(winners) - 1)
        if winners:
            chosen.add(winners[-1])
        for step in trajectories[winners[-1] if winners else tids[-1]]:
            code = (step.get("extra_info") or {}).get("error_code")
            if code in (ErrorCode.STEP_LIMIT_REACHED.value, ErrorCode.TOKEN_LIMIT_EXCEEDED.value):
                ref["step_limit" if code == ErrorCode.STEP_LIMIT_REACHED.value else "token_limit"] += 1
            elif code in _MEDIA_FAILURES:
                ref["ffmpeg_err"] += 1
        if not winners:
            ref["fail_count"] += 1
    out: list[dict[str, Any]] = []
    for tid, steps in trajectories.items():
        if tid not in chosen:
            continue
        steps = sorted(steps, key=lambda s: s["step"])
        if len(steps) > max_steps:
            stats["dropped_too_long"] += 1
            continue
        kept = [s for s in steps if not (s.get("extra_info") or {}).get("error_code")]
        stats["dropped_error_steps"] += len(steps) - len(kept)
        out.extend(_rebase_line(dict(s), base_path, strip_prefix) for s in kept)
        stats["kept_trajectories"] += 1
        stats["kept_steps"] += len(kept)
    ref["win_count"], ref["overstep_count"] = stats["kept_trajectories"], stats["dropped_too_long"]
    return out, {**stats, **ref}


# ------------------------------------------------------------------------------- latest_run.json
def step_entry(rec: StepRecord) -> dict[str, Any]:
    """One step of ``latest_run.json`` (and of eval's ``results.jsonl``): the reference's fields from the policy's typed metrics.

    The reference's ``common_prefix_tokens`` is the prompt prefix shared with the previous turn; ours
    is the part the policy served from its prefix cache (page-granular, so at most that prefix). Our
    policies do not split prompt building from media preparation: both are ``multimodal_prep_seconds``,
    and ``prompt_text_tokens`` is not measured (0).
    """
    r, m = rec.result, rec.policy_metrics
    turn = rec.turn
    prompt_total = m.prompt_tokens if m.prompt_tokens is not None else (r.prompt_tokens or 0)
    prompt_text = 0
    response_tokens = m.completion_tokens or 0
    timing = {
        "prompt_build_seconds": 0.0,
        "multimodal_prep_seconds": m.prep_seconds or 0.0,
        "generation_seconds": rec.generation_seconds,
        "env_step_seconds": r.env_seconds,
    }
    accounted = sum(timing.values())
    common_prefix = m.cached_prompt_tokens or 0
    return {
        "step": rec.step,
        "action_type": rec.action_type,
        "think": turn.think if turn else "",
        "observation": turn.observation if turn else "",
        "confidence": turn.confidence if turn else None,
        "response": rec.output,
        "reward": r.reward,
        **timing,
        "postprocess_seconds": 0.0,
        "overhead_seconds": max(0.0, rec.step_wall_seconds - accounted),
        "step_wall_seconds": rec.step_wall_seconds,
        "prompt_text_tokens": prompt_text,
        "prompt_total_tokens": prompt_total,
        "prompt_nontext_tokens": max(0, prompt_total - prompt_text),
        "response_tokens": response_tokens,
        "full_sequence_tokens": prompt_total + response_tokens,
        "common_prefix_tokens": common_prefix,
        "common_prefix_ratio": common_prefix / prompt_total if prompt_total else 0.0,
        "effective_new_prompt_tokens": prompt_total - common_prefix,
        "used_prompt_token_ids": False,
        "prompt_token_ids_requested": False,
        "prompt_token_ids_available": False,
        "prompt_segment_count": 0,
        "prompt_token_ids_error": "",
        "prefix_caching_enabled": m.prefix_caching,  # None (null): the policy cannot tell
        # Ours, beyond the reference's fields:
        "seed": rec.seed,
        "finish_reason": rec.finish_reason,
        "policy_metrics": m.to_json(),
        "action": rec.action,
        "done": r.done,
        "is_action_valid": r.is_action_valid,
        "error_code": r.error_code.value if r.error_code else None,
        "error_detail": r.error_detail,
        "media": rec.media.to_json() if rec.media else None,
        "unchanged_prefix_messages": rec.unchanged_prefix,
        "first_changed_message": r.first_changed,
    }


def latest_run_record(
    result: EpisodeResult,
    env: VideoEnvironment,
    *,
    runtime_config: Mapping[str, Any],
    policy_name: str,
) -> dict[str, Any]:
    """The ``latest_run.json`` of one CLI run: every field of the reference's, with ``gt_answer``,
    ``final_answer`` and ``question_type`` filled in, plus the outcome and video facts."""
    sample = env.sample
    video_name = pathlib.PurePath(sample.video).name
    info = env.video_info
    budget = env.config.budget
    return {
        "video": sample.video,
        "question": sample.question,
        "gt_answer": sample.answer if sample.answer is not None else "",
        "final_answer": result.final_answer,
        "question_type": sample.question_type,
        "options": list(sample.options),
        "source_label": video_name,
        "dataset_name": pathlib.PurePath(sample.video).parent.name or "Custom",
        "video_name": video_name,
        "total_steps": result.steps_used,
        "runtime_config": dict(runtime_config),
        "env_snapshot": {
            "USE_DYNAMIC_STEP": bool_str(budget.dynamic),
            "USE_TITO": "False",
            "STRICT_CONFIDENCE_CHECK": bool_str(env.config.strict_confidence),
            "MIN_MAX_STEPS": str(budget.min_max_steps),
            "DELETE_MEDIA_WHEN_ERROR": bool_str(env.config.purge_media_on_error),
        },
        "messages": serialize_messages(result.messages, sample.video),
        "steps": [step_entry(rec) for rec in result.steps],
        # KV reuse across turns is prefix caching here; null when the policy cannot tell.
        "kvcache": {
            "enabled": result.prefix_caching,
            "prefix_caching_enabled": result.prefix_caching,
            "prompt_token_ids_enabled": False,
            "internal_tito_enabled": False,
        },
        # Ours:
        "policy": policy_name,
        "seed": result.seed,
        "total_reward": result.total_reward,
        "won": result.won,
        "scored": result.scored,
        "correct": result.correct,
        "end_reason": result.end_reason,
        "error_code": result.error_code,
        "effective_max_steps": result.max_steps,
        "wall_seconds": result.wall_seconds,
        "video_info": {
            "duration": env.duration,
            "fps": env.fps,
            "has_audio": env.has_audio,
            "width": getattr(info, "width", None),
            "height": getattr(info, "height", None),
        },
    }


# ------------------------------------------------------------------------------------- files
def write_json(path: str | pathlib.Path, obj: Any) -> pathlib.Path:
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return p


def write_jsonl(path: str | pathlib.Path, rows: Sequence[Mapping[str, Any]], *, append: bool = False) -> pathlib.Path:
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a" if append else "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return p


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
    with pathlib.Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
