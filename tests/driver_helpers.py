"""Test helpers for the episode driver: episode results as plain comparable values (media payloads by
content digest, no wall-clock times), and `Forced`, a JAX policy whose turns carry scripted actions."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from omniagent_jax.processing.policy_contract import episode_of


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


def action(spec: tuple) -> dict:
    """The action dict of ("answer", content) or (kind, start, end[, num])."""
    kind, *args = spec
    if kind == "answer":
        return {"type": "answer", "content": args[0]}
    keys = ("start", "end", "num") if kind == "get_frames" else ("start", "end")
    return {"type": kind, **dict(zip(keys, args))}


class Forced:
    """A concurrent policy (the JAX one) generates each turn; the turn's text is the episode's scripted
    action (`scripts[episode][turn - 1]`, a tuple for `action`; an exception there is that turn's failure)
    in the OTA JSON, with the generated text as its observation: the history then grows by about as many
    tokens as the model wrote, as it would with a real model. `generate` is the wrapped policy's own."""

    def __init__(self, policy, scripts: dict[str, list]):
        self.policy, self.scripts = policy, scripts
        self.token_ids: dict[str, list[int] | None] = {}  # turn key -> the ids the policy generated

    def generate(self, messages, *, unchanged_prefix=0, seed=None):
        return self.policy.generate(messages, unchanged_prefix=unchanged_prefix, seed=seed)

    def submit(self, key, messages, *, unchanged_prefix=0, seed=None):
        self.policy.submit(key, messages, unchanged_prefix=unchanged_prefix, seed=seed)

    def cancel(self, key):
        self.policy.cancel(key)

    def collect(self, timeout=None):
        out = []
        for key, done in self.policy.collect(timeout):
            spec = self.scripts[episode_of(key)][int(key.rpartition("#")[2]) - 1]
            if isinstance(done, Exception) or isinstance(spec, Exception):
                out.append((key, done if isinstance(done, Exception) else spec))
                continue
            self.token_ids[key] = done.token_ids
            # Special-token spellings are broken up so the chat template reads the text as text; stripped, as
            # an endpoint's text is.
            observation = done.text.strip().replace("<|", "< |")
            text = json.dumps({"observation": observation, "think": "t", "confidence": 0.5, "action": action(spec)},
                              ensure_ascii=False)
            out.append((key, dataclasses.replace(done, text=text)))
        return out
