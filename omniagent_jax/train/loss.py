"""Cross-entropy on target tokens only, with the logits computed in chunks.

`[batch, seq, vocab]` (vocab 152,064) never materialises: the flattened tokens are processed
`chunk` at a time, each chunk's fp32 logits are recomputed in the backward pass (`jax.checkpoint`)
instead of being stored, so the largest logits block is `[chunk, vocab]`. The loss comes back as
a token **sum** and a target **count**, so that gradient accumulation can divide by the target
count of the whole accumulated batch (docs/training.md §4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from omniagent_jax.train.labels import IGNORE


def token_chunks(hidden: jax.Array, targets: jax.Array, chunk: int, *, fill: int) -> tuple[jax.Array, jax.Array, int]:
    """hidden `[B, T, D]`, targets `[B, T]` flattened into `[N / c, c, D]` and `[N / c, c]` chunks of
    `c = min(chunk, B·T)` tokens (the tail padded with zeros and `fill`), and the real token count N."""
    d = hidden.shape[-1]
    h = hidden.reshape(-1, d)
    y = targets.reshape(-1)
    n = h.shape[0]
    chunk = min(chunk, n)
    pad = (-n) % chunk
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        y = jnp.pad(y, (0, pad), constant_values=fill)
    return h.reshape(-1, chunk, d), y.reshape(-1, chunk), n


def chunked_cross_entropy(
    hidden: jax.Array, lm_kernel: jax.Array, labels: jax.Array, *, chunk: int, skip_empty: bool = False
) -> tuple[jax.Array, jax.Array]:
    """hidden `[B, T, D]`, lm_kernel `[D, V]`, labels `[B, T]` (next-token ids, `IGNORE` elsewhere)
    → (sum of −log p(label) over labelled positions, number of labelled positions), both fp32.

    `skip_empty` skips the logits of chunks without a target (most of a long agent context) with a
    `lax.cond`. Single-device only: on a sharded batch each device would evaluate the predicate on
    its own rows and take different branches around the head's collectives (a deadlock)."""
    h, y, _ = token_chunks(hidden, labels, chunk, fill=IGNORE)

    @jax.checkpoint
    def one(h_c: jax.Array, y_c: jax.Array) -> jax.Array:
        logits = jnp.einsum("cd,dv->cv", h_c, lm_kernel, preferred_element_type=jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        valid = y_c != IGNORE
        picked = jnp.take_along_axis(logits, jnp.where(valid, y_c, 0)[:, None], axis=-1)[:, 0]
        return jnp.sum(jnp.where(valid, lse - picked, 0.0))

    def body(total, xs):
        h_c, y_c = xs
        if not skip_empty:
            return total + one(h_c, y_c), None
        return total + jax.lax.cond(jnp.any(y_c != IGNORE), one, lambda *_: jnp.zeros((), jnp.float32), h_c, y_c), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (h, y))
    count = jnp.sum(labels != IGNORE).astype(jnp.float32)
    return total, count
