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

from omniagent_jax.model.attention import DEFAULT, AttentionImpl, AttentionMask, attention


class KVCache(Protocol):
    def attend(
        self, layer: int, q: jax.Array, k: jax.Array, v: jax.Array, impl: AttentionImpl = DEFAULT
    ) -> tuple[jax.Array, KVCache]:
        """q `[B, T, H, D]`, k/v `[B, T, KV, D]` (rotated) → output `[B, T, H, D]` and the updated cache;
        `impl` is the attention implementation the layer asks for (`model.attention`)."""
        ...

    def advance(self, num_tokens: int) -> KVCache:
        """Called once after all layers have attended over `num_tokens` new tokens."""
        ...


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NoCache:
    """A single full forward: causal attention over the given tokens with padded keys hidden."""

    attention_mask: jax.Array  # [B, T]

    def attend(
        self, layer: int, q: jax.Array, k: jax.Array, v: jax.Array, impl: AttentionImpl = DEFAULT
    ) -> tuple[jax.Array, NoCache]:
        return attention(q, k, v, AttentionMask.causal_padding(self.attention_mask), impl), self

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

    def attend(
        self, layer: int, q: jax.Array, k: jax.Array, v: jax.Array, impl: AttentionImpl = DEFAULT
    ) -> tuple[jax.Array, ContiguousKVCache]:
        start = (layer, 0, self.index, 0, 0)
        k_all = jax.lax.dynamic_update_slice(self.k, k[None].astype(self.k.dtype), start)
        v_all = jax.lax.dynamic_update_slice(self.v, v[None].astype(self.v.dtype), start)
        mask = AttentionMask(
            key_valid=self.valid, query_pos=(self.index + jnp.arange(q.shape[1]))[None], key_pos=jnp.arange(self.max_len)[None],
            causal=True,
        )
        out = attention(q, k_all[layer], v_all[layer], mask, impl)
        return out, dataclasses.replace(self, k=k_all, v=v_all)

    def advance(self, num_tokens: int) -> ContiguousKVCache:
        return dataclasses.replace(self, index=self.index + num_tokens)
