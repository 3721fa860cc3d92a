"""The step budget of an episode (docs/protocol.md §5)."""

from __future__ import annotations

import dataclasses

from omniagent_jax.agent.limits import DEFAULT_MAX_STEPS, MIN_MAX_STEPS


@dataclasses.dataclass(frozen=True)
class StepBudget:
    """How many model turns an episode gets.

    ``dynamic``: ``min(min_max_steps + int(duration / max_clip), max_steps)`` (the reference's
    USE_DYNAMIC_STEP, on by default); otherwise ``max_steps``. ``forced_answer``: when the last
    step is not an answer, grant one extra turn in which only an answer counts (ours; off by
    default, where the episode ends with STEP_LIMIT_REACHED and reward 0 as in the reference).
    """

    max_steps: int = DEFAULT_MAX_STEPS
    dynamic: bool = True
    min_max_steps: int = MIN_MAX_STEPS
    forced_answer: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {self.max_steps!r}")
        if self.min_max_steps < 1:
            raise ValueError(f"min_max_steps must be >= 1, got {self.min_max_steps!r}")

    def effective_max_steps(self, duration: float, max_clip: float) -> int:
        """The episode's N; the dynamic rule uses the episode's own clip limit."""
        if not self.dynamic:
            return self.max_steps
        return min(self.min_max_steps + int(duration / max_clip), self.max_steps)
