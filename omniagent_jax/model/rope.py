"""Rotary embeddings of the text decoder: M-RoPE over 3-D (temporal, height, width) positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def mrope_cos_sin(
    positions: jax.Array, *, head_dim: int, theta: float, mrope_section: tuple[int, ...], dtype
) -> tuple[jax.Array, jax.Array]:
    """cos/sin `[B, T, head_dim]` for positions `[3, B, T]`.

    Frequency slot j takes the axis that `mrope_section` assigns to it (T for the first
    section, H for the second, W for the third); angles are fp32 and the result is cast to the
    activation dtype, as the reference does (docs/model.md §2.2).
    """
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))  # [D/2]
    axis_of_slot = np.repeat(np.arange(len(mrope_section)), mrope_section)  # [D/2]
    slot_positions = jnp.moveaxis(positions[axis_of_slot], 0, -1).astype(jnp.float32)  # [B, T, D/2]
    angles = slot_positions * jnp.asarray(inv_freq)
    emb = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """`x [B, T, H, D]` rotated by `cos/sin [B, T, D]` (non-interleaved halves)."""
    return x * cos[:, :, None, :] + rotate_half(x) * sin[:, :, None, :]
