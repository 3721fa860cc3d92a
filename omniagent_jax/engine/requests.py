"""What goes into the engine and what comes out: `Request`, `Completion`, `EngineStats`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from omniagent_jax.engine.sampling import SamplingParams
from omniagent_jax.processing.media_inputs import MediaInputs


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
    request_id: str
    tokens: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache
    logprobs: list[float] | None = None
    entropies: list[float] | None = None
    prefilled_tokens: int = 0  # tokens this request ran through prefill (recomputation after preemption included)


@dataclasses.dataclass
class EngineStats:
    prefilled_tokens: int = 0  # tokens run through prefill (incl. recomputation after preemption)
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    decode_steps: int = 0
    preemptions: int = 0
    tower_items: int = 0  # media items encoded by the towers
    peak_pages: int = 0  # most pages referenced at once
