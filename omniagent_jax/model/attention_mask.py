"""The structured attention mask of `model.attention` (docs/model.md §8): never a `[T, S]` array, but
what each implementation needs to build the tiles (or segment ids) it uses."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.tree_util.register_dataclass, data_fields=["key_valid", "query_pos", "key_pos", "query_segment",
                                                                   "key_segment"], meta_fields=["causal"])
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """A structured mask (broadcastable `[B or 1, T]` / `[B or 1, S]` arrays; None = no constraint).
    Causal masks without positions compare `arange(T)` with `arange(S)` (a full sequence, T = S)."""

    key_valid: jax.Array | None = None  # bool [B, S]
    query_pos: jax.Array | None = None  # int [B, T]
    key_pos: jax.Array | None = None  # int [B, S]
    query_segment: jax.Array | None = None  # int [B, T]
    key_segment: jax.Array | None = None  # int [B, S]
    causal: bool = False

    @classmethod
    def causal_padding(cls, attention_mask: jax.Array) -> AttentionMask:
        """Causal over a full sequence with padded keys (a `[B, T]` 0/1 mask, left or right padding) hidden."""
        return cls(key_valid=jnp.asarray(attention_mask).astype(bool), causal=True)

    @property
    def aligned(self) -> bool:
        """True when causal positions are the plain indices of a full sequence (what fused kernels take)."""
        return self.query_pos is None and self.key_pos is None

    def block(self, q0: jax.Array | int, bq: int, k0: jax.Array | int, bk: int, t: int, s: int) -> jax.Array:
        """Allowed `[B or 1, bq, bk]` for queries `q0:q0+bq` and keys `k0:k0+bk` (indices past T or S are not allowed)."""
        qi, kj = q0 + jnp.arange(bq), k0 + jnp.arange(bk)
        allowed = (kj < s)[None, None, :] & (qi < t)[None, :, None]
        if self.key_valid is not None:
            allowed = allowed & _take(self.key_valid, kj, s, False)[:, None, :]
        if self.causal:
            qp = qi[None] if self.query_pos is None else _take(self.query_pos, qi, t, 0)
            kp = kj[None] if self.key_pos is None else _take(self.key_pos, kj, s, 0)
            allowed = allowed & (kp[:, None, :] <= qp[:, :, None])
        if self.query_segment is not None:
            same = _take(self.query_segment, qi, t, -1)[:, :, None] == _take(self.key_segment, kj, s, -2)[:, None, :]
            allowed = allowed & same
        return allowed

    def dense(self, t: int, s: int) -> jax.Array:
        """The whole `[B or 1, T, S]` mask (the dense path and tests only)."""
        return self.block(0, t, 0, s, t, s)


def _take(x: jax.Array, idx: jax.Array, n: int, fill) -> jax.Array:
    """`x[:, idx]` with indices ≥ n (block padding) reading `fill`."""
    return jnp.where(idx < n, jnp.take(x, jnp.minimum(idx, n - 1), axis=1), fill)
