"""The agent's JAX policy: OTA messages → processor → engine → one assistant turn.

It satisfies `omniagent_jax.agent.policy.Policy` structurally (`generate(messages, *,
unchanged_prefix=0)` returning an object with `text`, `token_ids`, `logprobs`, `metrics`); the
agent never imports it. KV reuse across the turns of an episode needs no hint: the engine's prefix
cache matches the unchanged history by content.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from omniagent_jax.engine.engine import MEDIA_INPUT_KEYS, Engine, Request
from omniagent_jax.engine.sampling import SamplingParams
from omniagent_jax.processing import tokens

# Sampling defaults for eval/demo (protocol.md §8).
DEFAULT_SAMPLING = SamplingParams(temperature=1.0, top_p=0.95, top_k=20, max_new_tokens=4096)


@dataclasses.dataclass
class Generation:
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    entropies: list[float] | None = None
    finish_reason: str = "stop"
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


def uses_audio_in_video(messages: Sequence[dict]) -> bool:
    """True when a video part carries its own audio track (clips of videos with sound, protocol.md §8)."""
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "video" and getattr(part.get("video"), "audio", None) is not None:
                    return True
    return False


class JaxPolicy:
    def __init__(self, engine: Engine, processor, sampling: SamplingParams = DEFAULT_SAMPLING, *, logprobs: bool = False):
        self.engine = engine
        self.processor = processor
        self.sampling = dataclasses.replace(sampling, logprobs=logprobs or sampling.logprobs)
        self.turn = 0

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype=None, sampling: SamplingParams = DEFAULT_SAMPLING, **engine_kwargs) -> JaxPolicy:
        from omniagent_jax.model import Thinker
        from omniagent_jax.processing.processor import OmniProcessor

        model = Thinker.from_pretrained(path, dtype=dtype)
        return cls(Engine(model, **engine_kwargs), OmniProcessor.from_pretrained(path), sampling)

    def request(self, messages: Sequence[dict], sampling: SamplingParams | None = None) -> Request:
        aiv = uses_audio_in_video(messages)
        inputs = self.processor(list(messages), add_generation_prompt=True, use_audio_in_video=aiv)
        ids = np.asarray(inputs["input_ids"])[0]
        media = {k: np.asarray(inputs[k]) for k in MEDIA_INPUT_KEYS if inputs.get(k) is not None}
        return Request(ids, sampling or self.sampling, media=media or None, use_audio_in_video=aiv)

    def generate(self, messages: Sequence[dict], *, unchanged_prefix: int = 0, seed: int | None = None) -> Generation:
        t0 = time.perf_counter()
        # Without an explicit seed each turn gets its own stream, reproducible for a given policy instance.
        sampling = dataclasses.replace(self.sampling, seed=self.sampling.seed + self.turn if seed is None else seed)
        self.turn += 1
        request = self.request(messages, sampling)
        before = dataclasses.replace(self.engine.stats)
        out = self.engine.generate([request])[0]
        return Generation(
            text=self.decode(out.tokens),
            token_ids=out.tokens,
            logprobs=out.logprobs,
            entropies=out.entropies,
            finish_reason=out.finish_reason,
            metrics={
                "prompt_tokens": out.prompt_tokens,
                "cached_prompt_tokens": out.cached_tokens,
                "completion_tokens": len(out.tokens),
                "prefilled_tokens": self.engine.stats.prefilled_tokens - before.prefilled_tokens,
                "latency_s": time.perf_counter() - t0,
            },
        )

    def count_tokens(self, messages: Sequence[dict]) -> int:
        """Prompt length of `messages` as the model will see it (media placeholders expanded)."""
        return len(self.request(messages).input_ids)

    def decode(self, token_ids: list[int]) -> str:
        body = [t for t in token_ids if t not in tokens.STOP_TOKEN_IDS]
        return self.processor.tokenizer.decode(body, skip_special_tokens=False)
