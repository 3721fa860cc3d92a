"""The episode runner: alternate policy turns and environment steps until the episode ends.

`run_episode` is the one-episode case of the episode driver (`agent/driver.py`): the same loop, the same
records (`agent/episode.py`). Seeds belong to the episode, not to the policy: `run_episode(..., seed=s)`
gives turn t the seed `turn_seed(s, t)`, so one policy object can play any number of episodes (RL groups,
eval) and a run is reproduced from its episode seed alone.
"""

from __future__ import annotations

from collections.abc import Callable

from omniagent_jax.agent.driver import Episode, EpisodeDriver
from omniagent_jax.agent.environment import VideoEnvironment
from omniagent_jax.agent.episode import INVALID_ACTION_TYPE, EpisodeResult, StepRecord
from omniagent_jax.agent.policy import ConcurrentPolicy, Policy

__all__ = ["INVALID_ACTION_TYPE", "EpisodeResult", "StepCallback", "StepRecord", "run_episode"]

StepCallback = Callable[[StepRecord, VideoEnvironment], None]


def run_episode(
    env: VideoEnvironment, policy: Policy | ConcurrentPolicy, *, seed: int | None = None, on_step: StepCallback | None = None
) -> EpisodeResult:
    """Reset ``env`` and play it out with ``policy``; ``on_step`` is called after every turn.

    With ``seed``, turn t samples with ``turn_seed(seed, t)``; without, every turn gets the policy's
    default. Termination is guaranteed by the environment (every turn spends a step). Policy
    failures (and environment exceptions) propagate to the caller; ``env`` stays open (it is the caller's).
    """
    on_turn = None if on_step is None else (lambda key, record, e: on_step(record, e))
    driver = EpisodeDriver(policy, max_live=1, workers=1, on_turn=on_turn)
    return driver.run([Episode("episode", env, seed)], raise_errors=True)[0]
