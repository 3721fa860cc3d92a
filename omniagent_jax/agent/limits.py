"""Episode limits and protocol constants (docs/protocol.md §2.1, §5): the one place these numbers live."""

from __future__ import annotations

import dataclasses

# Eval, CLI and demo limits of the released checkpoints (docs/protocol.md §2.1).
DEFAULT_MAX_FRAMES = 60
# Ints on purpose: the reference's eval/RL worker casts the audio and clip limits to int, so the
# released checkpoints saw "(Max 300s)" / "(Max 60s)" at eval and RL time. SFT collection used floats
# ("(Max 210.0s)"); :func:`omniagent_jax.agent.prompts.format_limit` prints whichever type is given.
DEFAULT_MAX_AUDIO: float = 300
DEFAULT_MAX_CLIP: float = 60
DEFAULT_MAX_STEPS = 32
RL_MAX_STEPS = 22
# Dynamic budget: min(MIN_MAX_STEPS + int(duration / max_clip), MAX_STEPS) (docs/protocol.md §5).
MIN_MAX_STEPS = 5
# Shortest audio range get_audio accepts, in seconds.
MIN_AUDIO_SECONDS = 0.1
# A clip must span this many source frames when the source runs at >= CLIP_MIN_FPS fps.
CLIP_MIN_SOURCE_FRAMES = 4
CLIP_MIN_FPS = 2.0
# The reference compares dur * fps < 3.999 rather than < 4 so that float error on an exact 4-frame
# span does not reject it.
CLIP_MIN_FRAMES_SLACK = 1e-3
# Float slack on the "too long" checks: a request of exactly the limit written with decimals
# (124.14 -> 184.14 for a 60 s limit) differs from it by ~1e-14 and must not be rejected (the
# reference compares without slack and rejects such requests at random).
LENGTH_LIMIT_SLACK = 1e-6
# An episode stops when its prompt exceeds max_prompt_tokens - TOKEN_LIMIT_TOLERANCE tokens.
DEFAULT_MAX_PROMPT_TOKENS = 65536
TOKEN_LIMIT_TOLERANCE = 32
# FF answers this long or longer score 0 (guards the LLM judge against answer stuffing).
FF_MAX_ANSWER_CHARS = 1000


@dataclasses.dataclass(frozen=True)
class EpisodeLimits:
    """Per-episode resource limits; the first three are printed into the system prompt."""

    max_frames: int = DEFAULT_MAX_FRAMES
    max_audio: float = DEFAULT_MAX_AUDIO
    max_clip: float = DEFAULT_MAX_CLIP

    def __post_init__(self) -> None:
        if isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int) or self.max_frames < 1:
            raise ValueError(f"max_frames must be a positive int, got {self.max_frames!r}")
        if not self.max_audio >= MIN_AUDIO_SECONDS:
            raise ValueError(f"max_audio must be >= {MIN_AUDIO_SECONDS}s, got {self.max_audio!r}")
        if not self.max_clip > 0:
            raise ValueError(f"max_clip must be > 0, got {self.max_clip!r}")
