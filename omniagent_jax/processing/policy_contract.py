"""The policy contract: what every policy returns, the metrics it reports, and the sampling defaults.

Both the agent's policies (`omniagent_jax.agent.policy`: scripted, OpenAI-compatible endpoint) and the
JAX engine's `JaxPolicy` return a :class:`PolicyOutput` with :class:`PolicyMetrics`, so episode records,
eval and RL read one set of names whatever produced the turn. Seeds travel with each call
(`generate(..., seed=...)`); :func:`turn_seed` derives a turn's seed from its episode's, so a policy
object holds no per-episode state and many episodes can share it; :func:`episode_seed` derives an episode's
from (run seed, sample index, rollout index). :func:`turn_key` names a turn for a concurrent policy.
Pure Python: no JAX, no numpy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers

# Sampling defaults for eval and the demo: those the released checkpoints were evaluated with
# (docs/protocol.md §8). The engine's `SamplingParams` keeps its own neutral field defaults; its
# `DEFAULT_SAMPLING` is built from these.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 20
DEFAULT_MAX_NEW_TOKENS = 4096

# Every seed the engine accepts: it keys each request's random stream by a uint32 seed.
SEED_RANGE = 2**32
# Seeds stay below 2**31: the engine keeps them as uint32 and OpenAI-compatible servers take an int64.
SEED_LIMIT = 2**31


def is_integer(x: object) -> bool:
    """An integer value that is not a bool (JSON and numpy integers included)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def sampling_problem(*, temperature: object, top_p: object, top_k: object, max_new_tokens: object, seed: object,
                     vocab_size: int | None = None) -> tuple[str, str] | None:
    """The first sampling value out of the range every policy takes (the engine's and the OpenAI API's), as
    (field name, "must be ..., got X"), or None when all are fine. `top_k` is bounded by `vocab_size` when
    given. The one check behind the CLIs' flags and the engine's `submit`."""
    if not is_integer(seed) or not 0 <= seed < SEED_RANGE:
        return "seed", f"must be an integer in [0, 2**32), got {seed!r}"
    if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature < 0:
        return "temperature", f"must be a finite number >= 0, got {temperature!r}"
    if not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1:
        return "top_p", f"must be in (0, 1], got {top_p!r}"
    if not is_integer(top_k) or top_k < 0 or (vocab_size is not None and top_k > vocab_size):
        bound = ">= 0" if vocab_size is None else f"in [0, {vocab_size}]"
        return "top_k", f"must be an integer {bound} (0: off), got {top_k!r}"
    if not is_integer(max_new_tokens) or max_new_tokens < 1:
        return "max_new_tokens", f"must be an integer >= 1, got {max_new_tokens!r}"
    return None


class PolicyError(RuntimeError):
    """The policy could not produce a turn (endpoint down, script exhausted, prompt refused, engine failure...)."""


@dataclasses.dataclass(frozen=True)
class PolicyMetrics:
    """One turn's measurements; a field a policy cannot know stays None.

    Token counts are of the prompt as the model saw it (media placeholders expanded).
    `cached_prompt_tokens` is the part whose KV came from the prefix cache, `prefilled_tokens` what the
    engine actually ran through prefill for this turn (it can exceed the uncached part when pages are
    recomputed). `prep_seconds` is building the request (chat template and media features for the JAX
    policy, media encoding for an endpoint); `generation_seconds` is waiting for the model.
    `prefix_caching` says whether the serving side reuses prefix KV across requests (None: unknown).
    """

    prompt_tokens: int | None = None
    cached_prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prefilled_tokens: int | None = None
    prep_seconds: float | None = None
    generation_seconds: float | None = None
    prefix_caching: bool | None = None

    def to_json(self) -> dict[str, int | float | bool | None]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PolicyOutput:
    """One generated assistant turn.

    `token_ids` are the generated ids (stop token included) when the policy sees them; `logprobs` and
    `entropies` are per generated token, of the model's raw distribution, when requested.
    `finish_reason` is "stop" or "length" when known. `prompt` is what the model was given for the turn
    (the JAX policy's engine `Request`: prompt ids and media) when the policy was asked to keep it (RL rows).
    """

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    entropies: list[float] | None = None
    finish_reason: str | None = None
    metrics: PolicyMetrics = dataclasses.field(default_factory=PolicyMetrics)
    prompt: object | None = None


def turn_seed(episode_seed: int, turn: int) -> int:
    """The sampling seed of turn `turn` (1-based) of the episode seeded `episode_seed`.

    A hash rather than `episode_seed + turn`, so episodes with neighbouring seeds do not share
    streams one turn apart (RL draws groups of episodes with consecutive seeds).
    """
    digest = hashlib.blake2b(f"{int(episode_seed)}:{int(turn)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % SEED_LIMIT


def episode_seed(run_seed: int, sample: int, rollout: int = 0) -> int:
    """The seed of rollout `rollout` of sample `sample` in the run seeded `run_seed`.

    A pure function of the three, so an episode plays the same whichever order and company a driver
    runs it in (an RL group is `rollout = 0..N-1` of one sample); its turns then use `turn_seed`.
    """
    digest = hashlib.blake2b(f"episode:{int(run_seed)}:{int(sample)}:{int(rollout)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % SEED_LIMIT


# A concurrent policy's turn keys are opaque to it, but the episode driver names them
# `<episode key>#<turn>`, so a policy that keeps per-episode state (a scripted one) can find the episode.
TURN_KEY_SEPARATOR = "#"


def turn_key(episode: str, turn: int) -> str:
    """The key the driver submits turn `turn` (1-based) of episode `episode` under."""
    return f"{episode}{TURN_KEY_SEPARATOR}{int(turn)}"


def episode_of(key: str) -> str:
    """The episode key inside a turn key made by :func:`turn_key` (the whole key if it has no turn part)."""
    episode, sep, turn = key.rpartition(TURN_KEY_SEPARATOR)
    return episode if sep and turn.isdigit() else key
