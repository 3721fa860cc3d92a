"""The OTA protocol: prompts, action parser, video environment, memory consolidation, step budget,
rewards, policies, the episode driver and runner, and records. Pure Python + numpy: imports no JAX and no Flax.
"""

from omniagent_jax.agent.actions import Answer, GetAudio, GetClip, GetFrames, Turn, parse_action
from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import DataError, Sample, load_samples
from omniagent_jax.agent.driver import Episode, EpisodeDriver
from omniagent_jax.agent.environment import EnvConfig, StepResult, VideoEnvironment
from omniagent_jax.agent.errors import ActionError, ErrorCode
from omniagent_jax.agent.limits import EpisodeLimits
from omniagent_jax.agent.messages import MediaRecord, Message
from omniagent_jax.agent.policy import ConcurrentPolicy, OpenAIPolicy, Policy, PolicyError, PolicyOutput, ScriptedPolicy
from omniagent_jax.agent.rewards import ScoreResult, score
from omniagent_jax.agent.runner import EpisodeResult, StepRecord, run_episode

__all__ = [
    "ActionError",
    "Answer",
    "ConcurrentPolicy",
    "DataError",
    "EnvConfig",
    "Episode",
    "EpisodeDriver",
    "EpisodeLimits",
    "EpisodeResult",
    "ErrorCode",
    "GetAudio",
    "GetClip",
    "GetFrames",
    "MediaRecord",
    "Message",
    "OpenAIPolicy",
    "Policy",
    "PolicyError",
    "PolicyOutput",
    "Sample",
    "ScoreResult",
    "ScriptedPolicy",
    "StepBudget",
    "StepRecord",
    "StepResult",
    "Turn",
    "VideoEnvironment",
    "load_samples",
    "parse_action",
    "run_episode",
    "score",
]
