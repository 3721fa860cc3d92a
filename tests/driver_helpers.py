"""Test helpers for the episode driver: episode results as plain comparable values (media payloads by
content digest, no wall-clock times)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np


def freeze(obj):
    """`obj` with arrays replaced by (shape, dtype, digest) and dataclasses by dicts, for == comparison."""
    if isinstance(obj, np.ndarray):
        return ("array", obj.shape, str(obj.dtype), hashlib.blake2b(np.ascontiguousarray(obj).tobytes()).hexdigest())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: freeze(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: freeze(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [freeze(v) for v in obj]
    return obj


def comparable(result, *, metrics: bool = False) -> dict:
    """Everything of an EpisodeResult except times and log-probs (compare those with `logprobs_close`); the
    policy's cache metrics only with `metrics` (prefix-cache hits depend on which episode got to a shared
    prompt first)."""
    steps = []
    for r in result.steps:
        step = [r.step, r.raw_input, r.unchanged_prefix, r.seed, r.output, r.action, r.result.reward, r.result.error_code,
                r.result.media, r.result.first_changed, r.logprobs is None, r.finish_reason, r.policy_metrics.prompt_tokens,
                r.policy_metrics.completion_tokens]
        if metrics:
            step += [r.policy_metrics.cached_prompt_tokens, r.policy_metrics.prefilled_tokens]
        steps.append(step)
    return freeze({"steps": steps, "messages": result.messages, "answer": result.final_answer, "reward": result.total_reward,
                   "won": result.won, "scored": result.scored, "end": result.end_reason, "code": result.error_code,
                   "max_steps": result.max_steps, "seed": result.seed, "error": result.error})


def logprobs_close(a, b, tol: float = 1e-4) -> bool:
    """Whether two results' per-token log-probs agree to `tol`: the same tokens computed in batches of other
    shapes differ in the last float32 bits (XLA's reduction order follows the shapes)."""
    la = [x for r in a.steps for x in (r.logprobs or [])]
    lb = [x for r in b.steps for x in (r.logprobs or [])]
    return len(la) == len(lb) and bool(np.allclose(la, lb, rtol=tol, atol=tol))


def first_difference(a, b, path: str = "") -> str | None:
    """Where two frozen values first differ (for assertion messages), or None."""
    if type(a) is not type(b):
        return f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, dict):
        for k in a.keys() | b.keys():
            if k not in a or k not in b:
                return f"{path}.{k}: missing on one side"
            found = first_difference(a[k], b[k], f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r:.200} vs {b!r:.200}"
