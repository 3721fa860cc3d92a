"""What a played episode leaves behind: one :class:`StepRecord` per turn and the :class:`EpisodeResult`.

The episode driver (`agent/driver.py`) builds them; `run_episode` (`agent/runner.py`) is its
one-episode case. An episode ends by the environment (answered, step or token limit, media failure:
`end_reason` is the environment's), or by the driver: `END_ERROR` (the video could not be opened, the
policy failed, the environment raised; `EpisodeResult.error` says what) or `END_CANCELLED`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from omniagent_jax.agent import rewards
from omniagent_jax.agent.actions import ANSWER, Turn, action_to_dict
from omniagent_jax.agent.environment import END_ANSWERED, StepResult, VideoEnvironment
from omniagent_jax.agent.messages import MediaRecord, Message
from omniagent_jax.processing.policy_contract import PolicyMetrics

INVALID_ACTION_TYPE = "invalid"
END_ERROR = "error"
END_CANCELLED = "cancelled"


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
    scored: bool  # False: no ground truth, FF without a judge, or ended by the driver (error, cancelled)
    end_reason: str | None
    error_code: str | None  # the last step's error code, if any
    max_steps: int
    wall_seconds: float
    seed: int | None = None
    error: str | None = None  # why the driver ended it (END_ERROR): "<exception type>: <message>"

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


def episode_result(records: list[StepRecord], env: VideoEnvironment | None, messages: list[Message], *, seed: int | None,
                   wall_seconds: float, end_reason: str | None = None, error: str | None = None) -> EpisodeResult:
    """The result of an episode that played `records`. Without `end_reason` it ended by the environment;
    with one (`END_ERROR`, `END_CANCELLED`) the driver ended it: nothing is scored. `messages` is the final
    history (`env.messages` once the environment is idle)."""
    last = records[-1].result if records else None
    answered = end_reason is None and last is not None and last.end_reason == END_ANSWERED
    final_answer = ""
    if answered and last.turn is not None and last.turn.action.type == ANSWER:
        final_answer = last.turn.action.content  # type: ignore[union-attr]
    if end_reason is not None:
        scored = False
    else:
        # An answered episode carries its answer's score status; one that ended otherwise scores a
        # real 0 whenever an answer could have been scored.
        scored = last.scored if answered else env is not None and env.scorable
    return EpisodeResult(
        steps=records,
        messages=messages,
        final_answer=final_answer,
        total_reward=sum(r.result.reward for r in records),
        won=bool(end_reason is None and last is not None and last.won),
        scored=scored,
        end_reason=end_reason if end_reason is not None else (env.end_reason if env is not None else None),
        error_code=last.error_code.value if last is not None and last.error_code is not None else None,
        max_steps=env.max_steps if env is not None else 0,
        wall_seconds=wall_seconds,
        seed=seed,
        error=error,
    )
