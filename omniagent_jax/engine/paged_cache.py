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
from omniagent_jax.model.attention import DEFAULT, AttentionImpl


def paged_attention(
    q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, page_table: jax.Array, query_pos: jax.Array, kv_len: jax.Array
) -> jax.Array:
    """q `[B, T, H, D]`; k/v pages `[KV, P, S, D]`; page_table `[B, M]`; query_pos `[B, T]` absolute
    positions of the queries in their sequence; kv_len `[B]` tokens stored (incl. this step's).

    Pages are stored KV-head-major so gathering a batch's pages gives `[KV, B, M·S, D]`, which the
    score and value contractions consume without a transpose of the gathered keys.
    """
    b, t, h, d = q.shape
    kv, _, page_size, _ = k_pages.shape
    group, length = h // kv, page_table.shape[1] * page_size
    keys = k_pages[:, page_table].reshape(kv, b, length, d)
    values = v_pages[:, page_table].reshape(kv, b, length, d)
    queries = q.reshape(b, t, kv, group, d).transpose(2, 0, 1, 3, 4).reshape(kv, b, t * group, d)
    scores = jnp.einsum("kbqd,kbsd->kbqs", queries, keys) * jnp.asarray(d**-0.5, q.dtype)
    key_pos = jnp.arange(length)
    mask = (key_pos[None, None, :] <= query_pos[:, :, None]) & (key_pos[None, None, :] < kv_len[:, None, None])  # [B, T, S]
    mask = jnp.broadcast_to(mask[None, :, :, None, :], (kv, b, t, group, length)).reshape(kv, b, t * group, length)
    # As `dot_product_attention`: masked logits get the dtype's minimum, softmax in fp32.
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(values.dtype)
    # Slots past a row's length (the null page, a reused page's stale tail) may hold anything, NaN from a
    # request that failed included, and 0 · NaN is NaN: they must not reach the value contraction.
    values = jnp.where((key_pos[None, :] < kv_len[:, None])[None, :, :, None], values, 0)
    out = jnp.einsum("kbqs,kbsd->kbqd", probs, values).reshape(kv, b, t, group, d)
    return out.transpose(1, 2, 0, 3, 4).reshape(b, t, h, d)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PagedKVCache:
    """One forward step over `T` new tokens per row (right-padded: row b has `num_new[b]` real ones)."""

    k_pages: jax.Array  # [L, KV, P, S, D]
    v_pages: jax.Array  # [L, KV, P, S, D]
    page_table: jax.Array  # int32 [B, M]
    context_len: jax.Array  # int32 [B] tokens already cached before this step
    num_new: jax.Array  # int32 [B] real new tokens this step

    @classmethod
    def allocate(
        cls, *, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int, dtype
    ) -> tuple[jax.Array, jax.Array]:
        shape = (num_layers, num_kv_heads, num_pages, page_size, head_dim)
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

    def _slots(self, t: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(page, offset) where each new token is written, and its absolute position."""
        page_size = self.k_pages.shape[3]
        pos = self.context_len[:, None] + jnp.arange(t)[None, :]  # [B, T]
        real = jnp.arange(t)[None, :] < self.num_new[:, None]
        column = jnp.clip(pos // page_size, 0, self.page_table.shape[1] - 1)
        page = jnp.where(real, jnp.take_along_axis(self.page_table, column, axis=1), NULL_PAGE)
        return page, pos % page_size, pos

    def attend(
        self, layer: int, q: jax.Array, k: jax.Array, v: jax.Array, impl: AttentionImpl = DEFAULT
    ) -> tuple[jax.Array, PagedKVCache]:
        # `impl` picks the model's dense attention implementations; pages have their own kernel seam (`paged_attention`).
        page, offset, pos = self._slots(q.shape[1])
        # One scatter into the whole buffer (in place under donation), then read this layer's pages.
        k_pages = self.k_pages.at[layer, :, page, offset].set(k.astype(self.k_pages.dtype))
        v_pages = self.v_pages.at[layer, :, page, offset].set(v.astype(self.v_pages.dtype))
        out = paged_attention(q, k_pages[layer], v_pages[layer], self.page_table, pos, self.context_len + self.num_new)
        return out, dataclasses.replace(self, k_pages=k_pages, v_pages=v_pages)

    def advance(self, num_tokens: int) -> PagedKVCache:
        return self  # the host scheduler owns the sequence lengths
