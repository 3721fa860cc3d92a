"""The agent's JAX policy: OTA messages → processor → engine → one assistant turn.

It satisfies `omniagent_jax.agent.policy.Policy` structurally (`generate(messages, *,
unchanged_prefix=0, seed=None)` returning the shared `PolicyOutput` of
`omniagent_jax.processing.policy_contract`); the agent never imports it. KV reuse across the turns
of an episode needs no hint: the engine's prefix cache matches the unchanged history by content.
The policy keeps no per-episode state: the seed comes with each call.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

import numpy as np

from omniagent_jax.engine.engine import Engine, Request
from omniagent_jax.engine.sampling import DEFAULT_SAMPLING, SamplingParams
from omniagent_jax.processing.content_codec import uses_audio_in_video
from omniagent_jax.processing.media_inputs import MediaInputs
from omniagent_jax.processing.policy_contract import PolicyMetrics, PolicyOutput


class JaxPolicy:
    """Processor + engine as a policy; `sampling` holds the defaults, its `seed` used by calls without one.

    The processor's special ids (from its tokenizer) must be the ones the model reads: ValueError otherwise.
    """

    def __init__(self, engine: Engine, processor, sampling: SamplingParams = DEFAULT_SAMPLING, *, logprobs: bool = False):
        engine.model.config.check_special_ids(processor.special_ids)
        self.engine = engine
        self.processor = processor
        self.sampling = dataclasses.replace(sampling, logprobs=logprobs or sampling.logprobs)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype=None, sampling: SamplingParams = DEFAULT_SAMPLING,
                        **engine_kwargs) -> JaxPolicy:
        from omniagent_jax.model import Thinker
        from omniagent_jax.processing.processor import OmniProcessor

        model = Thinker.from_pretrained(path, dtype=dtype)
        return cls(Engine(model, **engine_kwargs), OmniProcessor.from_pretrained(path), sampling)

    def request(self, messages: Sequence[dict], sampling: SamplingParams | None = None) -> Request:
        aiv = uses_audio_in_video(messages)
        inputs = self.processor(list(messages), add_generation_prompt=True, use_audio_in_video=aiv)
        ids = np.asarray(inputs["input_ids"])[0]
        media = MediaInputs.from_processor_output(inputs, use_audio_in_video=aiv)
        return Request(ids, sampling or self.sampling, media=None if media.empty else media)

    def generate(self, messages: Sequence[dict], *, unchanged_prefix: int = 0, seed: int | None = None) -> PolicyOutput:
        """One turn for `messages`, sampled with `seed` (None: `self.sampling.seed`)."""
        t0 = time.perf_counter()
        sampling = self.sampling if seed is None else dataclasses.replace(self.sampling, seed=seed)
        request = self.request(messages, sampling)
        t1 = time.perf_counter()
        before = dataclasses.replace(self.engine.stats)
        out = self.engine.generate([request])[0]
        return PolicyOutput(
            text=self.decode(out.tokens),
            token_ids=out.tokens,
            logprobs=out.logprobs,
            entropies=out.entropies,
            finish_reason=out.finish_reason,
            metrics=PolicyMetrics(
                prompt_tokens=out.prompt_tokens,
                cached_prompt_tokens=out.cached_tokens,
                completion_tokens=len(out.tokens),
                prefilled_tokens=self.engine.stats.prefilled_tokens - before.prefilled_tokens,
                prep_seconds=t1 - t0,
                generation_seconds=time.perf_counter() - t1,
                prefix_caching=True,  # the engine always shares prompt pages by content
            ),
        )

    def count_tokens(self, messages: Sequence[dict]) -> int:
        """Prompt length of `messages` as the model will see it (media placeholders expanded)."""
        return len(self.request(messages).input_ids)

    def decode(self, token_ids: list[int]) -> str:
        """The text of generated tokens, without the model's stop ids."""
        body = [t for t in token_ids if t not in self.engine.stop_token_ids]
        return self.processor.tokenizer.decode(body, skip_special_tokens=False)
