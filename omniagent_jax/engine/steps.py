"""The engine's jitted model steps and the padded device arrays they take.

The weights travel as a flat list of leaves (flattening an NNX module on every step costs more host
time than a small model's whole decode step); `compiled` jits the steps once per model structure.
Shapes are bucketed to powers of two so each step compiles once per bucket.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omniagent_jax.engine.paged_cache import PagedKVCache
from omniagent_jax.engine.pages import NULL_PAGE
from omniagent_jax.engine.sampling import SamplingParams, choose_tokens, greedy_tokens, sampling_arrays
from omniagent_jax.model import Thinker

# Every new shape is a compile (seconds on a CPU, far more for a 7B) that the whole batch waits for. Below
# these sizes a step costs about what it costs at them (decoding reads all the weights whatever the rows;
# a short prefill is dominated by the same), so smaller shapes are not worth their compiles.
MIN_DECODE_ROWS = 4  # rows of a decode or sampling step (prefill rows are not padded: long chunks are compute)
MIN_PREFILL_TOKENS = 16  # tokens per row of a prefill step


def bucket(n: int, minimum: int = 1) -> int:
    """`n` rounded up to a power of two (at least `minimum`)."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def page_table(pages: Sequence[Sequence[int]], rows: int) -> np.ndarray:
    """`[rows, M]` page tables of sequences' pages (M bucketed; unused entries and padding rows point at the null page)."""
    table = np.full((rows, bucket(max(len(p) for p in pages))), NULL_PAGE, np.int32)
    for i, p in enumerate(pages):
        table[i, : len(p)] = p
    return table


def sampling_rows(params: Sequence[SamplingParams], steps: Sequence[int], rows: int) -> tuple[np.ndarray, ...]:
    """The sampling arrays of sequences (`steps`: tokens generated so far), padded to `rows` rows."""
    pad = rows - len(params)
    return sampling_arrays(list(params) + [params[0]] * pad, list(steps) + [0] * pad)


def _merge(graphdef, treedef, leaves) -> Thinker:
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))


def _pin(pages: jax.Array, sharding) -> jax.Array:
    """Keeps the KV pages in their sharding across a step (so the donated buffers are reused in place)."""
    return pages if sharding is None else jax.lax.with_sharding_constraint(pages, sharding)


def forward(graphdef, treedef, kv_sharding, leaves, k_pages, v_pages, page_table, context_len, num_new, ids, media_rows,
            media_mask, positions):
    """One step over `[B, T]` new tokens → logits at each row's last real token, their argmax (so greedy
    rows need no second dispatch), whether each row's logits are all finite, and the updated pages."""
    model = _merge(graphdef, treedef, leaves)
    embeds = model.embed_inputs(ids, media_rows, media_mask)
    cache = PagedKVCache(k_pages, v_pages, page_table, context_len, num_new)
    hidden, cache = model.decode(embeds, positions, cache)
    last = hidden[jnp.arange(ids.shape[0]), jnp.maximum(num_new - 1, 0)]
    logits = model.logits(last)
    finite = jnp.all(jnp.isfinite(logits), axis=-1)
    return logits, greedy_tokens(logits), finite, _pin(cache.k_pages, kv_sharding), _pin(cache.v_pages, kv_sharding)


def decode_loop(graphdef, treedef, kv_sharding, leaves, k_pages, v_pages, page_table, context_len, limit, ids, rope_delta,
                stop_ids, temperature, top_k, top_p, seeds, steps, *, num_steps: int, sample: bool, with_stats: bool):
    """`num_steps` decode steps in one dispatch. Row b feeds `ids[b]` at position `context_len[b]`, then
    its own sampled tokens; it runs while `i < limit[b]` and it has not sampled a stop id (later steps
    write to the null page and their tokens are dropped by the host). Returns `[num_steps, B]` tokens,
    log-probs, entropies, `[B]` flags of rows that met non-finite logits while active, and the updated pages."""
    model = _merge(graphdef, treedef, leaves)
    batch = ids.shape[0]

    def step(carry, i):
        k_pages, v_pages, ids, live, bad = carry
        active = live & (i < limit)
        position = context_len + i
        rope = jnp.broadcast_to((position + rope_delta)[None, :, None], (3, batch, 1))
        cache = PagedKVCache(k_pages, v_pages, page_table, position, active.astype(jnp.int32))
        hidden, cache = model.decode(model.embed_tokens(ids[:, None]), rope, cache)
        logits = model.logits(hidden[:, 0])
        if sample or with_stats:
            token, logp, entropy = choose_tokens(logits, temperature, top_k, top_p, seeds, steps + i, with_stats=with_stats)
        else:
            token = greedy_tokens(logits)
            logp = entropy = jnp.full((batch,), jnp.nan, jnp.float32)
        stopped = jnp.any(token[:, None] == stop_ids, axis=1)
        bad = bad | (active & ~jnp.all(jnp.isfinite(logits), axis=-1))
        pages = _pin(cache.k_pages, kv_sharding), _pin(cache.v_pages, kv_sharding)
        return (*pages, token, active & ~stopped, bad), (token, logp, entropy)

    (k_pages, v_pages, _, _, bad), (tokens, logps, entropies) = jax.lax.scan(
        step, (k_pages, v_pages, ids, jnp.ones(batch, bool), jnp.zeros(batch, bool)), jnp.arange(num_steps)
    )
    return tokens, logps, entropies, bad, k_pages, v_pages


@functools.lru_cache(maxsize=8)
def compiled(graphdef, treedef, kv_sharding=None):
    """The jitted model steps for one model structure and KV-page sharding (shared by every engine on equal ones)."""
    fwd = jax.jit(functools.partial(forward, graphdef, treedef, kv_sharding), donate_argnums=(1, 2))
    dec = jax.jit(functools.partial(decode_loop, graphdef, treedef, kv_sharding), donate_argnums=(1, 2),
                  static_argnames=("num_steps", "sample", "with_stats"))
    return fwd, dec


@functools.lru_cache(maxsize=4)
def _copier(shardings: tuple, donate: bool):
    # One compile per weight layout: `update_weights` is called every RL iteration.
    return jax.jit(
        lambda old, new: [jnp.copy(x) for x in new], donate_argnums=(0,) if donate else (), out_shardings=list(shardings)
    )


def copy_into(old: list[jax.Array], new: list[jax.Array], *, donate: bool = True) -> list[jax.Array]:
    """Fresh copies of `new` in `old`'s shardings, written into `old`'s buffers when `donate` (then no
    third copy of the weights is ever alive); the result aliases neither."""
    donate = donate and not any(a is b for a, b in zip(old, new))  # the same array cannot be donated and read
    return _copier(tuple(x.sharding for x in old), donate)(old, new)
