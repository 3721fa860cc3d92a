"""Memory consolidation keeps the context flat: 30 steps on a 60-minute video cost about what they
cost on a 1-minute video, while a keep-all-media history grows with every fetch."""

from __future__ import annotations

import agent_helpers as h

from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.environment import EnvConfig, VideoEnvironment
from omniagent_jax.agent.limits import EpisodeLimits
from omniagent_jax.agent.messages import message_text
from omniagent_jax.agent.policy import ScriptedPolicy
from omniagent_jax.agent.runner import run_episode

STEPS = 30
WINDOW = 60.0
# Token estimate for media, at the checkpoints' rates: an image at ~1024·28·28 px is ~1024 tokens
# after the 2x2 merge (we take 256 for a small frame); audio is 25 tokens/s; a clip frame pair ~128.
IMAGE_TOKENS = 256
AUDIO_TOKENS_PER_S = 25
CLIP_TOKENS_PER_FRAME = 64


def count_tokens(messages) -> int:
    """Whitespace tokens of the text plus a per-kind estimate for each live media part."""
    n = 0
    for m in messages:
        for p in m["content"]:
            if p["type"] == "text":
                n += len(p["text"].split())
            elif p["type"] == "image":
                n += IMAGE_TOKENS
            elif p["type"] == "audio":
                n += AUDIO_TOKENS_PER_S * len(p["audio"]) // h.AUDIO_RATE
            elif p["type"] == "video":
                clip = p["video"]
                n += CLIP_TOKENS_PER_FRAME * len(clip.frames)
                if clip.audio is not None:
                    n += AUDIO_TOKENS_PER_S * len(clip.audio) // h.AUDIO_RATE
    return n


def count_chars(messages) -> int:
    return sum(len(message_text(m)) for m in messages)


def script(duration: float) -> list[str]:
    """29 media fetches spread over the video (same fractions on any length), then the answer."""
    turns = []
    for i in range(STEPS - 1):
        start = round((duration - WINDOW) * i / (STEPS - 2), 2)
        end = round(start + WINDOW, 2)
        obs = f"[step {i}] a person walks left to right; a red car passes; speech: 'we leave at noon'."
        kind = i % 3
        if kind == 0:
            turns.append(h.frames(start, end, 60, observation=obs))
        elif kind == 1:
            turns.append(h.audio(start, end, observation=obs))
        else:
            turns.append(h.clip(start, end, observation=obs))
    turns.append(h.answer("A", observation="done", confidence=0.95))
    return turns


def run(duration: float, *, consolidate: bool = True) -> tuple[list[int], list[int]]:
    sample = Sample(video="long.mp4", question_type="MCQ", question="Which color is the car?",
                    options=("A. red", "B. blue"), answer="A")
    config = EnvConfig(limits=EpisodeLimits(60, 300, 60), budget=StepBudget(max_steps=STEPS, dynamic=False),
                       consolidate=consolidate)
    tokens, chars = [], []
    with VideoEnvironment(sample, config, media_opener=h.fake_opener(duration, 25.0, True),
                          token_counter=count_tokens, **h.FAKE_ENV_KW) as env:
        result = run_episode(env, ScriptedPolicy(script(duration)),
                             on_step=lambda rec, e: (tokens.append(rec.result.prompt_tokens),
                                                     chars.append(count_chars(e.messages))))
    assert result.steps_used == STEPS and result.won
    assert all(r.result.error_code is None for r in result.steps)
    return tokens, chars


def test_context_is_flat_in_video_length():
    long_tokens, long_chars = run(3600.0)
    short_tokens, short_chars = run(60.0)
    assert long_tokens[-1] <= 1.2 * short_tokens[-1], (long_tokens[-1], short_tokens[-1])
    assert long_chars[-1] <= 1.2 * short_chars[-1], (long_chars[-1], short_chars[-1])
    # at every step at most one media block is live, so the context grows only by text
    per_step = [b - a for a, b in zip(long_tokens, long_tokens[1:])]
    assert max(per_step) < 2 * 60 * IMAGE_TOKENS


def test_keep_all_media_history_grows_with_media():
    flat, _ = run(3600.0)
    grown, _ = run(3600.0, consolidate=False)
    assert all(b > a for a, b in zip(grown, grown[1:-1]))  # every fetch adds its media
    assert grown[-1] > 10 * flat[-1]
    # the flat run is bounded by text growth: the last context is within 2x of the 10th
    assert flat[-1] < 2 * max(flat[:10])
