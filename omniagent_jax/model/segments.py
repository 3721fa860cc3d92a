"""Variable-length (block-diagonal) attention as padded segments, for the vision and audio towers.

The towers attend within contiguous runs of rows (vision windows, temporal patches, 2-s audio
chunks). The host cuts the row range into segments and pads each to the longest one, giving a
`[segments, max_len]` gather table; the device gathers, attends per segment and scatters back.
Shapes depend only on (rows, segments, max_len), so `jit` compiles once per such bucket.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from omniagent_jax.model.attention import DEFAULT, AttentionImpl, AttentionMask, attention


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Segments:
    """`index[s, j]` = row of the j-th member of segment s (padding points at row 0); `valid[s, j]` marks real members."""

    index: jax.Array  # int32 [S, L]
    valid: jax.Array  # bool [S, L]


def bucket(n: int, minimum: int = 1) -> int:
    """`n` rounded up to a shape bucket: a multiple of a quarter of the next power of two (≤ 25 % padding),
    so a jitted function compiles once per bucket instead of once per size."""
    n = max(int(n), minimum)
    step = max(1, (1 << (n - 1).bit_length()) // 4)
    return -(-n // step) * step


def segments_from_cu_seqlens(cu_seqlens: np.ndarray, *, padded: bool = False, min_segments: int = 1) -> Segments:
    """Segments for contiguous runs `[cu[i], cu[i+1])`; empty runs are dropped. With `padded`, the
    segment count (at least `min_segments`) and length are rounded up to buckets by all-invalid entries.
    A padded segment still costs L² scores, so long segments should keep `min_segments` small."""
    cu = np.asarray(cu_seqlens, dtype=np.int64)
    lengths = np.diff(cu)
    starts = cu[:-1][lengths > 0]
    lengths = lengths[lengths > 0]
    max_len = int(lengths.max()) if len(lengths) else 1
    if padded:
        max_len = bucket(max_len)
        extra = bucket(len(lengths), minimum=min_segments) - len(lengths)
        starts = np.concatenate([starts, np.zeros(extra, np.int64)])
        lengths = np.concatenate([lengths, np.zeros(extra, np.int64)])
    offsets = np.arange(max_len)[None, :]
    valid = offsets < lengths[:, None]
    index = np.where(valid, starts[:, None] + offsets, 0)
    return Segments(index=np.asarray(index, np.int32), valid=valid)


# Upper bound on attention scores held at once (segments × heads × L × L); larger inputs are processed
# in groups of segments so a long clip's full-attention blocks never materialise together.
MAX_SCORES = 1 << 27


def segment_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, segments: Segments, max_scores: int = MAX_SCORES, impl: AttentionImpl = DEFAULT
) -> jax.Array:
    """Non-causal multi-head attention within each segment (block-diagonal attention).

    q, k, v `[N, H, D]` (rows packed) → `[N, H, D]`. Each group of segments is a batch of rows for the
    attention seam (`model.attention`, its implementation `impl`) with the padding members' keys hidden.
    Every row must belong to exactly one segment.
    """
    n, h, d = q.shape
    idx, valid = jnp.asarray(segments.index), jnp.asarray(segments.valid)
    num, length = idx.shape
    group = max(1, min(num, max_scores // (h * length * length)))
    pad = (-num) % group
    if pad:
        idx = jnp.concatenate([idx, jnp.zeros((pad, length), idx.dtype)])
        valid = jnp.concatenate([valid, jnp.zeros((pad, length), bool)])

    def attend(block):
        b_idx, b_valid = block
        return attention(q[b_idx], k[b_idx], v[b_idx], AttentionMask(key_valid=b_valid), impl)  # [G, L, H, D]

    groups = (idx.reshape(-1, group, length), valid.reshape(-1, group, length))
    out = jax.lax.map(attend, groups) if groups[0].shape[0] > 1 else attend((groups[0][0], groups[1][0]))[None]
    out = out.reshape(-1, length, h, d)
    flat_rows = jnp.where(valid, idx, n).reshape(-1)  # padding rows go to a dropped overflow row
    packed = jnp.zeros((n + 1, h, d), out.dtype).at[flat_rows].set(out.reshape(-1, h, d))
    return packed[:n]
