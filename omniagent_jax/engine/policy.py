"""The agent's JAX policy: OTA messages → processor → engine → one assistant turn.

It satisfies `omniagent_jax.agent.policy.Policy` and `ConcurrentPolicy` structurally (`generate`, and
`submit` / `collect` / `cancel` on the engine's continuous batching, returning the shared `PolicyOutput`
of `omniagent_jax.processing.policy_contract`); the agent never imports it. KV reuse across the turns
of an episode needs no hint: the engine's prefix cache matches the unchanged history by content.
The policy keeps no per-episode state: the seed comes with each call.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections.abc import Sequence

import numpy as np

from omniagent_jax.engine.engine import Completion, Engine, Request
from omniagent_jax.engine.sampling import DEFAULT_SAMPLING, SamplingParams
from omniagent_jax.processing.content_codec import uses_audio_in_video
from omniagent_jax.processing.media_inputs import MediaInputs
from omniagent_jax.processing.policy_contract import PolicyError, PolicyMetrics, PolicyOutput


class JaxPolicy:
    """Processor + engine as a policy; `sampling` holds the defaults, its `seed` used by calls without one.

    A :class:`~omniagent_jax.agent.policy.ConcurrentPolicy` on the engine's continuous batching: `submit`
    queues a turn in the engine, `collect` runs engine steps until some turn finishes, `cancel` drops one
    (its pages are released). `generate` is one submitted turn collected at once. A new turn of an episode
    reuses the pages of its unchanged history, and the rollouts of a group share their first prompt's, by
    content (the engine's prefix cache). Only one thread may call these methods: it is the engine's.
    The processor's special ids (from its tokenizer) must be the ones the model reads: ValueError otherwise.
    """

    def __init__(self, engine: Engine, processor, sampling: SamplingParams = DEFAULT_SAMPLING, *, logprobs: bool = False,
                 keep_prompts: bool = False):
        engine.model.config.check_special_ids(processor.special_ids)
        self.keep_prompts = keep_prompts  # each PolicyOutput carries its engine Request (RL builds rows from it)
        self.engine = engine
        self.processor = processor
        self.sampling = dataclasses.replace(sampling, logprobs=logprobs or sampling.logprobs)
        self._prefix = f"policy{next(_POLICIES)}"  # engine request ids stay unique when policies share an engine
        self._ids = itertools.count()
        self._in_flight: dict[str, _Turn] = {}  # engine request id -> turn
        self._request_of: dict[str, str] = {}  # turn key -> engine request id
        self._ready: dict[str, PolicyOutput | Exception] = {}  # finished, not yet collected

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
        """One turn for `messages`, sampled with `seed` (None: `self.sampling.seed`); PolicyError if it fails."""
        key = f"{self._prefix}-generate-{next(self._ids)}"
        self.submit(key, messages, unchanged_prefix=unchanged_prefix, seed=seed)
        while key not in self._ready:
            self._advance(None)
        out = self._ready.pop(key)
        if isinstance(out, Exception):
            raise out
        return out

    def submit(self, key: str, messages: Sequence[dict], *, unchanged_prefix: int = 0, seed: int | None = None) -> None:
        """Queues one turn in the engine (a prompt it refuses comes back from `collect` as a PolicyError)."""
        if key in self._request_of or key in self._ready:
            raise ValueError(f"turn key {key!r} is already in flight")
        t0 = time.perf_counter()
        sampling = self.sampling if seed is None else dataclasses.replace(self.sampling, seed=seed)
        request_id = f"{self._prefix}-{next(self._ids)}"
        try:
            request = dataclasses.replace(self.request(messages, sampling), request_id=request_id)
            self.engine.submit(request)
        except Exception as e:  # the processor or the engine's checks refuse this prompt: this turn fails alone
            self._ready[key] = PolicyError(f"turn {key} was not accepted: {type(e).__name__}: {e}")
            return
        kept = request if self.keep_prompts else None
        self._in_flight[request_id] = _Turn(key, time.perf_counter() - t0, time.perf_counter(), kept)
        self._request_of[key] = request_id

    def collect(self, timeout: float | None = None) -> list[tuple[str, PolicyOutput | Exception]]:
        """Runs engine steps until a turn finishes (or `timeout` seconds passed: at least one step runs);
        returns every turn finished since the last call."""
        if not self._ready:
            self._advance(timeout)
        done, self._ready = list(self._ready.items()), {}
        return done

    def cancel(self, key: str) -> None:
        """Drops the turn at once; the engine releases its pages. Unknown or finished keys are ignored."""
        self._ready.pop(key, None)
        request_id = self._request_of.pop(key, None)
        if request_id is not None:
            del self._in_flight[request_id]
            self.engine.cancel(request_id)
            self.engine.finished.pop(request_id, None)  # its "cancelled" completion: nobody will read it

    def engine_request(self, key: str) -> str | None:
        """The engine's request id of turn `key` while it is in the engine (None before, after, or if refused)."""
        return self._request_of.get(key)

    def _advance(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.perf_counter() + timeout
        while self._in_flight and not self._ready:
            try:
                self.engine.step()
            except Exception as e:  # a step failed as a whole: its state is unknown, so every turn in it fails
                self._fail_all(e)
                return
            for request_id in [r for r in self._in_flight if r in self.engine.finished]:
                self._finish(request_id, self.engine.finished.pop(request_id))
            if deadline is not None and time.perf_counter() >= deadline:
                return

    def _finish(self, request_id: str, done: Completion) -> None:
        turn = self._in_flight.pop(request_id)
        del self._request_of[turn.key]
        error = getattr(done, "error", None)
        if done.finish_reason == "error":
            self._ready[turn.key] = PolicyError(f"the engine failed turn {turn.key}: {error or 'no reason given'}")
            return
        self._ready[turn.key] = PolicyOutput(
            text=self.decode(done.tokens),
            token_ids=done.tokens,
            logprobs=done.logprobs,
            entropies=done.entropies,
            finish_reason=done.finish_reason,
            metrics=PolicyMetrics(
                prompt_tokens=done.prompt_tokens,
                cached_prompt_tokens=done.cached_tokens,
                completion_tokens=len(done.tokens),
                prefilled_tokens=done.prefilled_tokens,
                prep_seconds=turn.prep_seconds,
                generation_seconds=time.perf_counter() - turn.submitted,
                prefix_caching=True,  # the engine always shares prompt pages by content
            ),
            prompt=turn.request,
        )

    def _fail_all(self, error: Exception) -> None:
        for request_id, turn in list(self._in_flight.items()):
            try:
                self.engine.cancel(request_id)
                self.engine.finished.pop(request_id, None)
            except Exception:  # noqa: BLE001 - best effort on an engine whose step just failed
                pass
            self._ready[turn.key] = PolicyError(f"an engine step failed during turn {turn.key}: {type(error).__name__}: {error}")
        self._in_flight.clear()
        self._request_of.clear()

    def count_tokens(self, messages: Sequence[dict]) -> int:
        """Prompt length of `messages` as the model will see it (media placeholders expanded)."""
        return len(self.request(messages).input_ids)

    def decode(self, token_ids: list[int]) -> str:
        """The text of generated tokens, without the model's stop ids."""
        body = [t for t in token_ids if t not in self.engine.stop_token_ids]
        return self.processor.tokenizer.decode(body, skip_special_tokens=False)


@dataclasses.dataclass(frozen=True)
class _Turn:
    """A turn in the engine: its key, how long building its request took, when it was submitted."""

    key: str
    prep_seconds: float
    submitted: float
    request: Request | None = None


_POLICIES = itertools.count()
