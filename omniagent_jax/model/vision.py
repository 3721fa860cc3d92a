"""The Qwen2.5-VL-style vision tower of the thinker (`thinker.visual.*`, docs/model.md §2.4).

Host side (numpy, from `grid_thw`): 2-D rotary positions, the window order and the attention
segments. Device side: patch embed (the Conv3d as a matmul over 1176-wide rows), blocks with window
attention or full attention within each temporal patch, the 2×2 patch merger, and undoing the
window order so tokens come out in raster order (t, row, col).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omniagent_jax.model.attention import DEFAULT
from omniagent_jax.model.config import VisionConfig
from omniagent_jax.model.layers import RMSNorm, SwiGLU, linear
from omniagent_jax.model.rope import rotate_half
from omniagent_jax.model.segments import Segments, segment_attention, segments_from_cu_seqlens

# ---------------------------------------------------------------------------------------- host side


def patch_positions(grid_thw: np.ndarray, merge: int) -> np.ndarray:
    """(h, w) patch coordinates `[N, 2]` in merge-block order, repeated for every temporal patch."""
    out = []
    for t, h, w in np.asarray(grid_thw, np.int64):
        hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        block = (h // merge, merge, w // merge, merge)
        hh = hh.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        ww = ww.reshape(block).transpose(0, 2, 1, 3).reshape(-1)
        out.append(np.tile(np.stack([hh, ww], axis=-1), (t, 1)))
    return np.concatenate(out, axis=0)


def window_order(grid_thw: np.ndarray, merge: int, window_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Merged-token window order and the cumulative patch counts of the windows.

    Per item, the merged grid of each temporal patch is padded up to multiples of `window_tokens`
    — a full empty pad window when a side is already divisible, as the reference does — and cut
    into windows ordered t-major, then window row, then window col, raster inside a window.
    """
    order, cu = [], [0]
    offset = 0
    unit = merge * merge
    for t, h, w in np.asarray(grid_thw, np.int64):
        gh, gw = h // merge, w // merge
        index = np.arange(t * gh * gw).reshape(t, gh, gw)
        pad_h, pad_w = window_tokens - gh % window_tokens, window_tokens - gw % window_tokens
        nh, nw = (gh + pad_h) // window_tokens, (gw + pad_w) // window_tokens
        padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-1)
        windows = padded.reshape(t, nh, window_tokens, nw, window_tokens).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, -1)
        counts = (windows >= 0).sum(axis=1)
        order.append(windows[windows >= 0] + offset)
        cu.extend((np.cumsum(counts) * unit + cu[-1]).tolist())
        offset += t * gh * gw
    cu_arr = np.asarray(cu, np.int64)
    cu_arr = cu_arr[np.concatenate([[True], np.diff(cu_arr) != 0])]  # empty windows vanish
    return np.concatenate(order), cu_arr


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class VisionLayout:
    """Everything the device needs besides pixels, derived from `grid_thw` on the host."""

    positions: jax.Array  # int32 [N, 2] patch (h, w), already in window order
    patch_order: jax.Array  # int32 [N] rows → window order
    token_restore: jax.Array  # int32 [N/4] merged tokens in window order → raster order
    windows: Segments
    frames: Segments  # full attention within each temporal patch


def vision_layout(grid_thw: np.ndarray, cfg: VisionConfig, *, padded_rows: int | None = None) -> VisionLayout:
    """The layout of the items in `grid_thw`. With `padded_rows` (≥ the real patch count, a multiple of
    the merge unit) every array is padded to bucketed shapes: padding rows sit in no segment and come
    out as extra tokens after the real ones."""
    grid_thw = np.asarray(grid_thw, np.int64).reshape(-1, 3)
    merge, unit = cfg.spatial_merge_size, cfg.spatial_merge_size**2
    token_order, cu_windows = window_order(grid_thw, merge, cfg.window_size // merge // cfg.patch_size)
    n_tokens = len(token_order)
    if padded_rows is not None:
        if padded_rows % unit or padded_rows < n_tokens * unit:
            raise ValueError(f"padded_rows {padded_rows} must be a multiple of {unit} and >= {n_tokens * unit}")
        token_order = np.concatenate([token_order, np.arange(n_tokens, padded_rows // unit)])
    patch_order = (token_order[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)
    positions = patch_positions(grid_thw, merge)
    positions = np.concatenate([positions, np.zeros((len(patch_order) - len(positions), 2), positions.dtype)])
    per_frame = np.repeat(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0])
    padded = padded_rows is not None
    return VisionLayout(
        positions=np.asarray(positions[patch_order], np.int32),
        patch_order=np.asarray(patch_order, np.int32),
        token_restore=np.asarray(np.argsort(token_order), np.int32),
        windows=segments_from_cu_seqlens(cu_windows, padded=padded, min_segments=8),  # 64-row windows: cheap padding
        frames=segments_from_cu_seqlens(np.concatenate([[0], np.cumsum(per_frame)]), padded=padded),
    )


# ---------------------------------------------------------------------------------------- device side


def vision_rotary(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """fp32 cos/sin `[N, head_dim]`: `cat(h·inv, w·inv)` duplicated, `inv` over head_dim/4 frequencies."""
    spatial = head_dim // 2
    inv_freq = 1.0 / (theta ** (np.arange(0, spatial, 2, dtype=np.float32) / spatial))
    freqs = positions.astype(jnp.float32)[:, :, None] * jnp.asarray(inv_freq)  # [N, 2, head_dim/4]
    hw = jnp.concatenate([freqs[:, 0], freqs[:, 1]], axis=-1)
    emb = jnp.concatenate([hw, hw], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


class VisionAttention(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.num_heads = cfg.num_heads
        self.q = linear(d, d, ("embed", "heads"), use_bias=True, dtype=dtype, rngs=rngs)
        self.k = linear(d, d, ("embed", "heads"), use_bias=True, dtype=dtype, rngs=rngs)
        self.v = linear(d, d, ("embed", "heads"), use_bias=True, dtype=dtype, rngs=rngs)
        self.proj = linear(d, d, ("heads", "embed"), use_bias=True, dtype=dtype, rngs=rngs)
        self.attention_impl = DEFAULT  # static: `model.attention.use_attention` switches it

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segments: Segments) -> jax.Array:
        n, d = x.shape
        q, k, v = (f(x).reshape(n, self.num_heads, -1) for f in (self.q, self.k, self.v))
        # The vision rotary is applied in fp32 and cast back (docs/model.md §2.6).
        c, s = cos[:, None, :], sin[:, None, :]
        q = (q.astype(jnp.float32) * c + rotate_half(q.astype(jnp.float32)) * s).astype(x.dtype)
        k = (k.astype(jnp.float32) * c + rotate_half(k.astype(jnp.float32)) * s).astype(x.dtype)
        return self.proj(segment_attention(q, k, v, segments, impl=self.attention_impl).reshape(n, d))


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.norm2 = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.attn = VisionAttention(cfg, dtype=dtype, rngs=rngs)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, use_bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, segments: Segments) -> jax.Array:
        x = x + self.attn(self.norm1(x), cos, sin, segments)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """RMSNorm, then 2×2 neighbouring patches (4 consecutive rows) → one LLM-width token."""

    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        self.unit = cfg.spatial_merge_size**2
        wide = cfg.hidden_size * self.unit
        self.ln_q = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.fc1 = linear(wide, wide, ("mlp", "mlp"), use_bias=True, dtype=dtype, rngs=rngs)
        self.fc2 = linear(wide, cfg.out_hidden_size, ("mlp", "embed"), use_bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.ln_q(x).reshape(-1, x.shape[-1] * self.unit)
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTower(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        self.cfg = cfg
        self.patch_embed = linear(cfg.patch_dim, cfg.hidden_size, (None, "embed"), use_bias=False, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([VisionBlock(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
        self.merger = PatchMerger(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, pixel_values: jax.Array, layout: VisionLayout) -> jax.Array:
        """Pixel rows `[N, 1176]` (merge-block order) → tokens `[N/4, out_hidden]` in raster order."""
        x = self.patch_embed(pixel_values.astype(self.patch_embed.kernel.dtype))
        x = x[layout.patch_order]
        cos, sin = vision_rotary(layout.positions, self.cfg.head_dim, self.cfg.rope_theta)
        full = set(self.cfg.fullatt_block_indexes)
        for i, block in enumerate(self.blocks):
            with jax.named_scope(f"vision_block_{i}"):
                x = block(x, cos, sin, layout.frames if i in full else layout.windows)
        return self.merger(x)[layout.token_restore]
