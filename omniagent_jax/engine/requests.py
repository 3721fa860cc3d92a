"""What goes into the engine and what comes out: `Request`, `Completion`, `EngineStats`, and the
checks `Engine.submit` runs before anything is queued (`check_request`, raising `RequestError`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from omniagent_jax.engine.sampling import SamplingParams
from omniagent_jax.processing.media_inputs import MediaInputs
from omniagent_jax.processing.policy_contract import is_integer, sampling_problem


@dataclasses.dataclass
class Request:
    """One prompt: token ids, the media of this prompt alone, sampling parameters.

    `media` is a `MediaInputs` (which carries `use_audio_in_video`); a processor output dict is
    accepted and converted with `MediaInputs.from_processor_output`.
    """

    input_ids: np.ndarray
    sampling: SamplingParams = dataclasses.field(default_factory=SamplingParams)
    media: MediaInputs | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.media, Mapping) and not isinstance(self.media, MediaInputs):
            self.media = MediaInputs.from_processor_output(self.media)
        elif self.media is not None and not isinstance(self.media, MediaInputs):
            raise TypeError(f"Request.media must be a MediaInputs or a processor output mapping, not {type(self.media).__name__}")

    @property
    def use_audio_in_video(self) -> bool:
        return self.media is not None and self.media.use_audio_in_video


@dataclasses.dataclass
class Completion:
    """One finished request. `finish_reason` "error" means its processing failed inside the engine (a
    media encode raising, non-finite logits, a failed device step) and it alone was finished: `error`
    then says why in one line, and `tokens` are those sampled before the failure."""

    request_id: str
    tokens: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache
    logprobs: list[float] | None = None
    entropies: list[float] | None = None
    error: str | None = None
    prefilled_tokens: int = 0  # tokens this request ran through prefill (recomputation after preemption included)


@dataclasses.dataclass
class EngineStats:
    prefilled_tokens: int = 0  # tokens run through prefill (incl. recomputation after preemption)
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    decode_steps: int = 0
    preemptions: int = 0
    tower_items: int = 0  # media items encoded by the towers
    peak_pages: int = 0  # most pages referenced at once
    errors: int = 0  # requests finished with finish_reason "error"


class RequestError(ValueError):
    """A request the engine refuses at submit; `field` names the offending value (`seed`, `top_k`,
    `input_ids`, `media`, ...), and the message starts with it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field




def check_request(request: Request, vocab_size: int) -> None:
    """Raises `RequestError` naming the first bad value: sampling values out of range or of the wrong
    type, stop or prompt ids outside the vocabulary, non-finite media features."""
    p = request.sampling
    problem = sampling_problem(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, max_new_tokens=p.max_new_tokens,
                               seed=p.seed, vocab_size=vocab_size)
    if problem is not None:
        raise RequestError(*problem)
    stops = p.stop_token_ids or ()
    bad = [t for t in stops if not is_integer(t) or not 0 <= t < vocab_size]
    if bad:
        raise RequestError("stop_token_ids", f"{bad} are not token ids of the vocabulary [0, {vocab_size})")
    ids = np.asarray(request.input_ids)
    if ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise RequestError("input_ids", f"must be a non-empty array of token ids, got {ids.dtype} of size {ids.size}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise RequestError("input_ids", f"hold ids outside the vocabulary [0, {vocab_size}): {int(ids.min())}..{int(ids.max())}")
    if request.media is not None:
        for key in request.media.keys():
            value = request.media[key]
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(value).all():
                raise RequestError("media", f"{key} holds NaN or infinite values")
