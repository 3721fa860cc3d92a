"""The paged KV cache as a `model.KVCache`: the decoder writes each step's keys/values into pages and
attends over the pages of each sequence's page table.

`paged_attention` is the pure-JAX reference (gather the sequence's pages, masked softmax); it runs
on CPU and is the seam where a Pallas / cuDNN paged-attention kernel plugs in on TPU/GPU.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from omniagent_jax.engine.pages import NULL_PAGE
from omniagent_jax.model.kv_cache import dot_product_attention


def paged_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, page_table: jax.Array, query_pos: jax.Array, kv_len: jax.Array) -> jax.Array:
    """q `[B, T, H, D]`; k/v pages `[P, S, KV, D]`; page_table `[B, M]`; query_pos `[B, T]` absolute
    positions of the queries in their sequence; kv_len `[B]` tokens stored (incl. this step's)."""
    b, m = page_table.shape
    page_size = k_pages.shape[1]
    keys = k_pages[page_table].reshape(b, m * page_size, *k_pages.shape[2:])
    values = v_pages[page_table].reshape(b, m * page_size, *v_pages.shape[2:])
    key_pos = jnp.arange(m * page_size)
    mask = (key_pos[None, None, :] <= query_pos[:, :, None]) & (key_pos[None, None, :] < kv_len[:, None, None])
    return dot_product_attention(q, keys, values, mask)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PagedKVCache:
    """One forward step over `T` new tokens per row (right-padded: row b has `num_new[b]` real ones)."""

    k_pages: jax.Array  # [L, P, S, KV, D]
    v_pages: jax.Array  # [L, P, S, KV, D]
    page_table: jax.Array  # int32 [B, M]
    context_len: jax.Array  # int32 [B] tokens already cached before this step
    num_new: jax.Array  # int32 [B] real new tokens this step

    @classmethod
    def allocate(cls, *, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, dtype) -> tuple[jax.Array, jax.Array]:
        shape = (num_layers, num_pages, page_size, num_kv_heads, head_dim)
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

    def _slots(self, t: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(page, offset) where each new token is written, and its absolute position."""
        page_size = self.k_pages.shape[2]
        pos = self.context_len[:, None] + jnp.arange(t)[None, :]  # [B, T]
        real = jnp.arange(t)[None, :] < self.num_new[:, None]
        column = jnp.clip(pos // page_size, 0, self.page_table.shape[1] - 1)
        page = jnp.where(real, jnp.take_along_axis(self.page_table, column, axis=1), NULL_PAGE)
        return page, pos % page_size, pos

    def attend(self, layer: int, q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, PagedKVCache]:
        page, offset, pos = self._slots(q.shape[1])
        # One scatter into the whole buffer (in place under donation), then read this layer's pages.
        k_pages = self.k_pages.at[layer, page, offset].set(k.astype(self.k_pages.dtype))
        v_pages = self.v_pages.at[layer, page, offset].set(v.astype(self.v_pages.dtype))
        out = paged_attention(q, k_pages[layer], v_pages[layer], self.page_table, pos, self.context_len + self.num_new)
        return out, dataclasses.replace(self, k_pages=k_pages, v_pages=v_pages)

    def advance(self, num_tokens: int) -> PagedKVCache:
        return self  # the host scheduler owns the sequence lengths
