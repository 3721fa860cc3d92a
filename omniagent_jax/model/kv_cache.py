"""How a decoder layer's attention sees keys and values.

Every decoder layer calls `cache.attend(layer, q, k, v)` and gets back the attention output and the
updated cache; after the last layer the decoder calls `cache.advance(num_new_tokens)`. Anything
that implements these two methods and is a JAX pytree can be passed to the decoder:

* `NoCache` — one full forward: causal + padding mask over the given tokens, nothing stored.
* `ContiguousKVCache` — a dense `[layers, batch, max_len, kv_heads, head_dim]` cache for simple
  incremental decoding (left-padded batches decode in lockstep).
* the engine's paged cache (page pool + page tables), added by the inference engine.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import jax
import jax.numpy as jnp


class KVCache(Protocol):
    def attend(self, layer: int, q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, KVCache]:
        """q `[B, T, H, D]`, k/v `[B, T, KV, D]` (rotated) → output `[B, T, H, D]` and the updated cache."""
        ...

    def advance(self, num_tokens: int) -> KVCache:
        """Called once after all layers have attended over `num_tokens` new tokens."""
        ...


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention with an fp32 softmax cast back to the activation dtype before `@ V`.

    q `[B, T, H, D]`, k/v `[B, S, KV, D]`, mask `[B, T, S]` (True = may attend). Masked logits get the
    dtype's minimum, as the reference's eager path does, so fully masked (padding) rows stay finite.
    """
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k) * jnp.asarray(d**-0.5, q.dtype)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


def causal_padding_mask(attention_mask: jax.Array) -> jax.Array:
    """`[B, T]` 0/1 padding mask → `[B, T, T]` causal mask that also hides padded keys."""
    t = attention_mask.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    return causal[None] & attention_mask.astype(bool)[:, None, :]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoCache:
    """A single full forward: causal attention over the given tokens with padded keys hidden."""

    attention_mask: jax.Array  # [B, T]

    def attend(self, layer: int, q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, NoCache]:
        return dot_product_attention(q, k, v, causal_padding_mask(self.attention_mask)), self

    def advance(self, num_tokens: int) -> NoCache:
        return self


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ContiguousKVCache:
    """Dense per-layer K/V buffers; the batch shares one write index (left padding keeps rows aligned).

    `valid[b, s]` says whether slot s of row b holds a real token. Before a forward over new tokens,
    call `with_new_tokens(mask)` to mark their slots; the decoder then advances the write index.
    """

    k: jax.Array  # [L, B, S, KV, D]
    v: jax.Array  # [L, B, S, KV, D]
    valid: jax.Array  # [B, S] bool
    index: jax.Array  # int32 scalar: first free slot

    @classmethod
    def create(cls, *, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype) -> ContiguousKVCache:
        shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
        return cls(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            valid=jnp.zeros((batch, max_len), bool),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def with_new_tokens(self, attention_mask: jax.Array) -> ContiguousKVCache:
        """Marks the slots the next `T = attention_mask.shape[1]` tokens will occupy."""
        valid = jax.lax.dynamic_update_slice(self.valid, attention_mask.astype(bool), (0, self.index))
        return dataclasses.replace(self, valid=valid)

    def attend(self, layer: int, q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, ContiguousKVCache]:
        start = (layer, 0, self.index, 0, 0)
        k_all = jax.lax.dynamic_update_slice(self.k, k[None].astype(self.k.dtype), start)
        v_all = jax.lax.dynamic_update_slice(self.v, v[None].astype(self.v.dtype), start)
        t = q.shape[1]
        query_slot = self.index + jnp.arange(t)
        causal = jnp.arange(self.max_len)[None, :] <= query_slot[:, None]  # [T, S]
        mask = causal[None] & self.valid[:, None, :]
        out = dot_product_attention(q, k_all[layer], v_all[layer], mask)
        return out, dataclasses.replace(self, k=k_all, v=v_all)

    def advance(self, num_tokens: int) -> ContiguousKVCache:
        return dataclasses.replace(self, index=self.index + num_tokens)
