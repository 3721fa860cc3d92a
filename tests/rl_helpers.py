"""Shared set-up of the RL tests: the toy bandit task (train/rl/bandit.py) built once per test session."""

from __future__ import annotations

_CACHE: dict[str, object] = {}


def bandit_task(tmp_path_factory):
    """The built task (videos, RL rows, the warmed-up small-vocabulary thinker), once per session."""
    if "task" not in _CACHE:
        from omniagent_jax.train.rl import bandit

        _CACHE["task"] = bandit.build(tmp_path_factory.mktemp("rl_bandit") / "task")
    return _CACHE["task"]
