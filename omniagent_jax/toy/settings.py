"""The toy world's episode settings (docs/toy.md §3): a short system prompt and limits that keep every
row of an expert trajectory within :data:`MAX_ROW_TOKENS` tokens of the toy tokenizer."""

from __future__ import annotations

import os

from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.environment import EnvConfig
from omniagent_jax.agent.episode_card import write_episode_card
from omniagent_jax.agent.limits import EpisodeLimits
from omniagent_jax.model.config import REPO_CONFIGS
from omniagent_jax.toy.world import MAX_FRAMES

MAX_AUDIO = 6  # seconds per get_audio: 150 audio tokens
MAX_CLIP = 4  # clips are allowed but costly (their frames are upscaled to the clip budget); the expert never uses them
MAX_STEPS = 5
MAX_ROW_TOKENS = 768
MAX_NEW_TOKENS = 160  # per turn: an expert turn is at most ~120 toy tokens; a model that does not stop is cut here
LIMITS = EpisodeLimits(max_frames=MAX_FRAMES, max_audio=MAX_AUDIO, max_clip=MAX_CLIP)

# A template with the three limit slots, like --system-prompt-file takes (docs/protocol.md §1); configs/toy/system_prompt.txt
# holds the same text for the CLIs.
SYSTEM_PROMPT_TEMPLATE = """Answer a question about a video by inspecting it step by step. Each turn reply with ONE JSON line:
{"observation": "...", "think": "...", "confidence": 0.5, "action": {...}}
Actions, one per turn:
{"type": "get_frames", "start": s, "end": e, "num": n} (Max {max_frames} frames)
{"type": "get_audio", "start": s, "end": e} (Max {max_audio}s)
{"type": "get_clip", "start": s, "end": e} (Max {max_clip}s)
{"type": "answer", "content": "..."} (not on the first turn)
Times are seconds from 0.00 to the duration. Seen media becomes a placeholder, so note it in observation. \
Confidence: 0.5 while searching, 0.9 when answering."""


SYSTEM_PROMPT_FILE = REPO_CONFIGS / "toy" / "system_prompt.txt"


def cli_flags() -> list[str]:
    """The episode flags of ``omniagent run`` / ``eval`` / ``collect`` that play :func:`env_config`'s episode."""
    return ["--system-prompt-file", str(SYSTEM_PROMPT_FILE), "--max-frames", str(MAX_FRAMES), "--max-audio", str(MAX_AUDIO),
            "--max-clip", str(MAX_CLIP), "--max-steps", str(MAX_STEPS), "--fixed-steps", "--strict-confidence"]


def env_config(*, max_prompt_tokens: int | None = None) -> EnvConfig:
    """The toy episode: toy limits and prompt, a fixed step budget, strict confidence (as in training)."""
    return EnvConfig(
        limits=LIMITS,
        budget=StepBudget(max_steps=MAX_STEPS, dynamic=False),
        system_prompt_template=SYSTEM_PROMPT_TEMPLATE,
        strict_confidence=True,
        max_prompt_tokens=max_prompt_tokens,
    )


def write_card(model_dir: str | os.PathLike) -> None:
    """The toy episode as a checkpoint's episode card (agent.episode_card), played greedily: `omniagent run`,
    `eval` and `demo` on that checkpoint then use the toy prompt and limits without any flag."""
    write_episode_card(model_dir, system_prompt_template=SYSTEM_PROMPT_TEMPLATE, max_frames=MAX_FRAMES, max_audio=MAX_AUDIO,
                       max_clip=MAX_CLIP, max_steps=MAX_STEPS, fixed_steps=True, strict_confidence=True,
                       max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
