"""The episode runner: alternate policy turns and environment steps until the episode ends.

Seeds belong to the episode, not to the policy: `run_episode(..., seed=s)` gives turn t the seed
`turn_seed(s, t)`, so one policy object can play any number of episodes (RL groups, eval) and a run is
reproduced from its episode seed alone.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from omniagent_jax.agent import rewards
from omniagent_jax.agent.actions import ANSWER, Turn, action_to_dict
from omniagent_jax.agent.environment import END_ANSWERED, StepResult, VideoEnvironment
from omniagent_jax.agent.messages import MediaRecord, Message
from omniagent_jax.agent.policy import Policy
from omniagent_jax.processing.policy_contract import PolicyMetrics, turn_seed

INVALID_ACTION_TYPE = "invalid"


@dataclasses.dataclass
class StepRecord:
    """Everything about one turn: what the model saw and said, and what the environment did."""

    step: int
    raw_input: list[Message]  # the history before the step, as the policy saw it
    unchanged_prefix: int
    seed: int | None  # the turn's sampling seed (None: the policy's default)
    output: str
    turn: Turn | None
    result: StepResult
    policy_metrics: PolicyMetrics
    logprobs: list[float] | None
    finish_reason: str | None
    generation_seconds: float
    step_wall_seconds: float

    @property
    def action_type(self) -> str:
        return self.turn.action.type if self.turn is not None else INVALID_ACTION_TYPE

    @property
    def action(self) -> dict[str, Any] | None:
        return action_to_dict(self.turn.action) if self.turn is not None else None

    @property
    def media(self) -> MediaRecord | None:
        return self.result.media


@dataclasses.dataclass
class EpisodeResult:
    """The finished episode."""

    steps: list[StepRecord]
    messages: list[Message]  # the final history
    final_answer: str
    total_reward: float
    won: bool
    scored: bool  # False: no ground truth, or FF without a judge
    end_reason: str | None
    error_code: str | None  # the last step's error code, if any
    max_steps: int
    wall_seconds: float
    seed: int | None = None

    @property
    def prefix_caching(self) -> bool | None:
        """Whether the policy reused prefix KV across the turns: what every step reported, else None."""
        reported = {r.policy_metrics.prefix_caching for r in self.steps}
        return reported.pop() if len(reported) == 1 else None

    @property
    def correct(self) -> bool:
        return rewards.is_correct(self.total_reward)

    @property
    def steps_used(self) -> int:
        return len(self.steps)


StepCallback = Callable[[StepRecord, VideoEnvironment], None]


def run_episode(
    env: VideoEnvironment, policy: Policy, *, seed: int | None = None, on_step: StepCallback | None = None
) -> EpisodeResult:
    """Reset ``env`` and play it out with ``policy``; ``on_step`` is called after every turn.

    With ``seed``, turn t samples with ``turn_seed(seed, t)``; without, every turn gets the policy's
    default. Termination is guaranteed by the environment (every turn spends a step). Policy
    failures propagate to the caller.
    """
    t_start = time.perf_counter()
    env.reset()
    records: list[StepRecord] = []
    while not env.done:
        t0 = time.perf_counter()
        messages, unchanged = env.observe()
        step_seed = None if seed is None else turn_seed(seed, len(records) + 1)
        out = policy.generate(messages, unchanged_prefix=unchanged, seed=step_seed)
        t1 = time.perf_counter()
        result = env.step(out.text)
        record = StepRecord(
            step=result.step,
            raw_input=messages,
            unchanged_prefix=unchanged,
            seed=step_seed,
            output=out.text,
            turn=result.turn,
            result=result,
            policy_metrics=out.metrics,
            logprobs=out.logprobs,
            finish_reason=out.finish_reason,
            generation_seconds=float(t1 - t0 if out.metrics.generation_seconds is None else out.metrics.generation_seconds),
            step_wall_seconds=time.perf_counter() - t0,
        )
        records.append(record)
        if on_step is not None:
            on_step(record, env)
    last = records[-1].result if records else None
    answered = last is not None and last.end_reason == END_ANSWERED
    final_answer = ""
    if answered and last.turn is not None and last.turn.action.type == ANSWER:
        final_answer = last.turn.action.content  # type: ignore[union-attr]
    return EpisodeResult(
        steps=records,
        messages=env.messages,
        final_answer=final_answer,
        total_reward=sum(r.result.reward for r in records),
        won=bool(last and last.won),
        # An answered episode carries its answer's score status; one that ended otherwise scores a
        # real 0 whenever an answer could have been scored.
        scored=last.scored if answered else env.scorable,
        end_reason=env.end_reason,
        error_code=last.error_code.value if last is not None and last.error_code is not None else None,
        max_steps=env.max_steps,
        wall_seconds=time.perf_counter() - t_start,
        seed=seed,
    )
