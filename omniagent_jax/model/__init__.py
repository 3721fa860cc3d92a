"""Flax NNX port of the Qwen2.5-Omni thinker."""

from omniagent_jax.model import config
from omniagent_jax.model.config import AudioConfig, TextConfig, ThinkerConfig, VisionConfig
from omniagent_jax.model.kv_cache import ContiguousKVCache, KVCache, NoCache
from omniagent_jax.model.thinker import Thinker, abstract_thinker, load_thinker

__all__ = [
    "AudioConfig",
    "ContiguousKVCache",
    "KVCache",
    "NoCache",
    "TextConfig",
    "Thinker",
    "ThinkerConfig",
    "VisionConfig",
    "abstract_thinker",
    "config",
    "load_thinker",
]
