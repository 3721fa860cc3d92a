"""Sampling: greedy, temperature, top-k, top-p with per-request seeds; log-probs and entropies in fp32.

Each request's randomness is `fold_in(PRNGKey(seed), step)`, so a request samples the same tokens
whatever else shares its batch. Log-probs and entropies are of the model's raw distribution
(temperature 1, no truncation): what RL's importance ratios and TAURA's turn entropy need.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from omniagent_jax.processing.policy_contract import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] | None = None  # None: the model's (`Engine.stop_token_ids`, from its checkpoint)
    seed: int = 0
    logprobs: bool = False  # also return per-token log-probs and entropies

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")


GREEDY = SamplingParams(temperature=0.0)
# The eval/demo defaults every policy shares (omniagent_jax.processing.policy_contract).
DEFAULT_SAMPLING = SamplingParams(temperature=DEFAULT_TEMPERATURE, top_p=DEFAULT_TOP_P, top_k=DEFAULT_TOP_K,
                                  max_new_tokens=DEFAULT_MAX_NEW_TOKENS)

# Rows with 0 < top_k <= this draw from `lax.top_k` of this many logits instead of a full-vocabulary
# sort (≈ 20× cheaper on CPU at a 152k vocabulary); larger top_k, or top-p alone, sorts everything.
TOP_K_CAP = 64


def _first_best(x: jax.Array, nan: jax.Array) -> jax.Array:
    """Index of the first maximum along the last axis, or of the first True in `nan` where any is."""
    best = jnp.max(x, axis=-1, keepdims=True)
    hit = jnp.where(jnp.any(nan, axis=-1, keepdims=True), nan, x == best)
    return jnp.min(jnp.where(hit, jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape[-1]), axis=-1)


def greedy_tokens(logits: jax.Array, block: int = 128) -> jax.Array:
    """`np.argmax(logits, -1)` for `[B, V]` logits: the first maximum, or the first NaN of a NaN row.

    XLA:CPU lowers argmax's variadic reduce to a scalar loop (≈ 5 ms over a 152k vocabulary at batch
    16); instead: block maxima in one vectorised pass, the first best block, the first best inside it.
    """
    b, v = logits.shape
    if v % block:
        logits = jnp.pad(logits, ((0, 0), (0, block - v % block)), constant_values=-jnp.inf)
    blocks = logits.reshape(b, -1, block)
    nan = jnp.isnan(blocks)  # XLA's max need not propagate NaN, so NaNs are tracked explicitly
    first_block = _first_best(jnp.max(blocks, axis=-1), jnp.any(nan, axis=-1))
    pick = first_block[:, None, None]
    return first_block * block + _first_best(
        jnp.take_along_axis(blocks, pick, axis=1)[:, 0], jnp.take_along_axis(nan, pick, axis=1)[:, 0]
    )


def choose_tokens(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array, seeds: jax.Array,
                  steps: jax.Array, *, with_stats: bool = True):
    """logits `[B, V]` and per-row parameters → (token `[B]`, log-prob `[B]`, entropy `[B]`); traceable.

    Without `with_stats` the full-vocabulary log-softmax is skipped and log-probs/entropies are NaN.
    """
    logits = logits.astype(jnp.float32)
    greedy = greedy_tokens(logits)
    scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
    keys = jax.vmap(lambda seed, step: jax.random.fold_in(jax.random.PRNGKey(seed), step))(seeds, steps)

    def plain(_):
        return jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)

    def truncated(sorted_logits, order):
        # top-k, then top-p over the sorted, tempered distribution; the most likely token always stays.
        rank = jnp.arange(sorted_logits.shape[-1])[None, :]
        keep = jnp.where(top_k[:, None] > 0, rank < top_k[:, None], True)
        probs = jax.nn.softmax(jnp.where(keep, sorted_logits, -jnp.inf), axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        keep = keep & (before < top_p[:, None])
        choice = jax.vmap(jax.random.categorical)(keys, jnp.where(keep, sorted_logits, -jnp.inf))
        return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)

    def top_k_only(_):
        values, order = jax.lax.top_k(scaled, min(TOP_K_CAP, scaled.shape[-1]))  # ties: lower index first, as the stable sort
        return truncated(values, order)

    def full_sort(_):
        order = jnp.argsort(-scaled, axis=-1)
        return truncated(jnp.take_along_axis(scaled, order, axis=-1), order)

    def sampled(_):
        # A row's path depends only on its own parameters, so its draw never depends on its batch mates.
        truncates = (temperature > 0) & ((top_k > 0) | (top_p < 1.0))
        short = truncates & (top_k > 0) & (top_k <= TOP_K_CAP)
        long = truncates & ~short
        out = greedy
        # Each path runs only if some row needs it.
        for rows, draw in (((temperature > 0) & ~truncates, plain), (short, top_k_only), (long, full_sort)):
            out = jax.lax.cond(jnp.any(rows), lambda o, rows=rows, draw=draw: jnp.where(rows, draw(None), o), lambda o: o, out)
        return out

    # All-greedy batches skip sampling; the sort paths run only for rows that truncate.
    drawn = jax.lax.cond(jnp.any(temperature > 0), sampled, lambda _: greedy, None)
    token = jnp.where(temperature > 0, drawn, greedy)
    if not with_stats:
        nan = jnp.full(token.shape, jnp.nan, jnp.float32)
        return token, nan, nan
    logp = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0], entropy


sample_tokens = jax.jit(choose_tokens, static_argnames="with_stats")


def sampling_arrays(params: list[SamplingParams], steps: list[int]) -> tuple[np.ndarray, ...]:
    return (
        np.array([p.temperature for p in params], np.float32),
        np.array([p.top_k for p in params], np.int32),
        np.array([p.top_p for p in params], np.float32),
        np.array([p.seed for p in params], np.uint32),
        np.array(steps, np.int32),
    )
