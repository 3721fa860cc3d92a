"""JAX sampling over a paged KV cache with prefix reuse across turns and rollouts."""

from omniagent_jax.engine.engine import Completion, Engine, EngineStats, Request, RequestError
from omniagent_jax.engine.pages import OutOfPages, PagePool
from omniagent_jax.engine.sampling import GREEDY, SamplingParams

__all__ = ["GREEDY", "Completion", "Engine", "EngineStats", "OutOfPages", "PagePool", "Request", "RequestError", "SamplingParams"]
