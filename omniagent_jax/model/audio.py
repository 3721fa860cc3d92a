"""The Whisper-style audio tower of the thinker (`thinker.audio_tower.*`, docs/model.md §2.5).

Each audio's valid mel frames are cut into 2-s chunks (2·n_window frames), zero-padded to the
longest chunk, and run through the conv frontend with sinusoid positions restarting per chunk; the
pre-LN layers attend within each chunk only; then the valid rows of each audio are average-pooled
in pairs, normalised and projected to the LLM width. The chunk bookkeeping is numpy on the host.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omniagent_jax.model.attention import DEFAULT, AttentionMask, attention
from omniagent_jax.model.config import AudioConfig
from omniagent_jax.model.layers import linear
from omniagent_jax.model.segments import bucket
from omniagent_jax.processing.layout import audio_token_count


def conv_out_len(length: np.ndarray | int) -> np.ndarray | int:
    """Length after the stride-2 conv2: `(L − 1)//2 + 1`."""
    return (length - 1) // 2 + 1


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AudioLayout:
    """Host-side chunking of a batch of audios: padded chunks, their masks and the pooling table."""

    chunks: jax.Array  # float [C, Lc, mel] padded mel chunks, time-major
    chunk_mask: jax.Array  # bool [C, Lc] valid mel frames
    key_valid: jax.Array  # bool [C, Lc_out] valid post-conv rows; attention stays inside a chunk
    pool_first: jax.Array  # int32 [Σ tokens] flat post-conv row of the first element of each pooled pair


def audio_layout(
    input_features: np.ndarray, feature_attention_mask: np.ndarray, cfg: AudioConfig, *, padded: bool = False
) -> AudioLayout:
    """input_features `[B, mel, T]` + frame mask `[B, T]` → the chunked layout of all valid frames.

    With `padded`, chunks are zero-padded to the full 2-s window and the chunk count and token count
    are rounded up to shape buckets (extra tokens come after the real ones), so the tower compiles
    once per bucket. Zero columns after a chunk's end are exactly what the reference pads with."""
    feats = np.asarray(input_features)
    mask = np.asarray(feature_attention_mask).astype(bool)
    if feats.ndim != 3 or feats.shape[1] != cfg.num_mel_bins or mask.shape != (feats.shape[0], feats.shape[2]):
        raise ValueError(
            f"input_features must be [B, {cfg.num_mel_bins}, T] with feature_attention_mask [B, T]; "
            f"got {feats.shape} and {mask.shape}"
        )
    window = 2 * cfg.n_window
    chunks, lengths, pool_first = [], [], []
    audio_chunk_ranges = []
    for b in range(feats.shape[0]):
        valid = feats[b][:, mask[b]]  # [mel, L]
        total = valid.shape[1]
        if total == 0:
            raise ValueError(f"audio {b} has no valid mel frames")
        first = len(chunks)
        for start in range(0, total, window):
            piece = valid[:, start : start + window]
            chunks.append(piece.T)
            lengths.append(piece.shape[1])
        audio_chunk_ranges.append((first, len(chunks)))
    lengths_arr = np.asarray(lengths)
    max_len = window if padded else int(lengths_arr.max())
    num_chunks = bucket(len(chunks)) if padded else len(chunks)
    lengths_arr = np.concatenate([lengths_arr, np.zeros(num_chunks - len(chunks), lengths_arr.dtype)])
    max_out = int(conv_out_len(max_len))
    chunk_array = np.zeros((num_chunks, max_len, cfg.num_mel_bins), feats.dtype)
    for i, c in enumerate(chunks):
        chunk_array[i, : c.shape[0]] = c
    out_lens = conv_out_len(lengths_arr)
    # Pooling runs over each audio's post-conv rows in order, across its chunks.
    for first, last in audio_chunk_ranges:
        rows = np.concatenate([i * max_out + np.arange(out_lens[i]) for i in range(first, last)])
        n_tokens = audio_token_count(int(lengths_arr[first:last].sum()))
        pool_first.append(rows[0 : 2 * n_tokens : 2])
    pool = np.concatenate(pool_first)
    if padded:
        pool = np.concatenate([pool, np.zeros(bucket(len(pool)) - len(pool), pool.dtype)])
    return AudioLayout(
        chunks=chunk_array,
        chunk_mask=np.arange(max_len)[None, :] < lengths_arr[:, None],
        key_valid=np.arange(max_out)[None, :] < out_lens[:, None],
        pool_first=np.asarray(pool, np.int32),
    )


def sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> np.ndarray:
    """Whisper's sinusoid table `cat(sin(p·inv), cos(p·inv))`, fp32."""
    increment = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(np.float32(-increment) * np.arange(channels // 2, dtype=np.float32))
    scaled = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


class LayerNorm(nnx.Module):
    """`nn.LayerNorm` with weight and bias (eps 1e-5), statistics in fp32."""

    def __init__(self, dim: int, *, dtype, eps: float = 1e-5):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), dtype), out_sharding=("norm",))
        self.bias = nnx.Param(jnp.zeros((dim,), dtype), out_sharding=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = ((x32 - mean) ** 2).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.weight[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(x.dtype)


class Conv1d(nnx.Module):
    """A 1-D convolution over time-major input `[C, L, in]`; kernel `[k, in, out]`, padding 1."""

    def __init__(self, in_dim: int, out_dim: int, *, stride: int, dtype, rngs: nnx.Rngs, kernel_size: int = 3):
        self.stride = stride
        self.kernel = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (kernel_size, in_dim, out_dim), dtype),
            out_sharding=(None, None, "embed"),
        )
        self.bias = nnx.Param(jnp.zeros((out_dim,), dtype), out_sharding=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.lax.conv_general_dilated(
            x, self.kernel[...], window_strides=(self.stride,), padding=((1, 1),), dimension_numbers=("NWC", "WIO", "NWC")
        )
        return y + self.bias[...]


class AudioAttention(nnx.Module):
    def __init__(self, cfg: AudioConfig, *, dtype, rngs: nnx.Rngs):
        d = cfg.d_model
        self.num_heads = cfg.encoder_attention_heads
        self.q_proj = linear(d, d, ("embed", "heads"), use_bias=True, dtype=dtype, rngs=rngs)
        self.k_proj = linear(d, d, ("embed", "heads"), use_bias=False, dtype=dtype, rngs=rngs)  # no bias, as released
        self.v_proj = linear(d, d, ("embed", "heads"), use_bias=True, dtype=dtype, rngs=rngs)
        self.out_proj = linear(d, d, ("heads", "embed"), use_bias=True, dtype=dtype, rngs=rngs)
        self.attention_impl = DEFAULT  # static: `model.attention.use_attention` switches it

    def __call__(self, x: jax.Array, key_valid: jax.Array) -> jax.Array:
        """x `[C, L, d]`: attention inside each chunk, over its valid rows."""
        c, length, d = x.shape
        q, k, v = (f(x).reshape(c, length, self.num_heads, -1) for f in (self.q_proj, self.k_proj, self.v_proj))
        out = attention(q, k, v, AttentionMask(key_valid=key_valid), self.attention_impl)  # chunk-local: chunks are rows
        return self.out_proj(out.reshape(c, length, d))


class AudioEncoderLayer(nnx.Module):
    def __init__(self, cfg: AudioConfig, *, dtype, rngs: nnx.Rngs):
        self.self_attn_layer_norm = LayerNorm(cfg.d_model, dtype=dtype)
        self.self_attn = AudioAttention(cfg, dtype=dtype, rngs=rngs)
        self.final_layer_norm = LayerNorm(cfg.d_model, dtype=dtype)
        self.fc1 = linear(cfg.d_model, cfg.encoder_ffn_dim, ("embed", "mlp"), use_bias=True, dtype=dtype, rngs=rngs)
        self.fc2 = linear(cfg.encoder_ffn_dim, cfg.d_model, ("mlp", "embed"), use_bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, key_valid: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.self_attn_layer_norm(x), key_valid)
        h = self.fc2(jax.nn.gelu(self.fc1(self.final_layer_norm(x)), approximate=False))
        x = x + h
        if x.dtype == jnp.float16:  # the reference clamps in fp16 only
            bound = jnp.finfo(jnp.float16).max - 1000
            x = jnp.clip(x, -bound, bound)
        return x


class AudioTower(nnx.Module):
    def __init__(self, cfg: AudioConfig, *, dtype, rngs: nnx.Rngs):
        self.cfg = cfg
        self.conv1 = Conv1d(cfg.num_mel_bins, cfg.d_model, stride=1, dtype=dtype, rngs=rngs)
        self.conv2 = Conv1d(cfg.d_model, cfg.d_model, stride=2, dtype=dtype, rngs=rngs)
        # Loaded and exported with the checkpoint, never used in the forward pass (docs/model.md §2.5).
        self.audio_bos_eos_token = nnx.Param(jnp.zeros((2, cfg.output_dim), dtype), out_sharding=(None, "embed"))
        self.layers = nnx.List([AudioEncoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.encoder_layers)])
        self.ln_post = LayerNorm(cfg.d_model, dtype=dtype)
        self.proj = linear(cfg.d_model, cfg.output_dim, ("embed", "vocab_embed"), use_bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, layout: AudioLayout) -> jax.Array:
        """→ audio tokens `[Σ N_audio, output_dim]`, all audios of the batch concatenated in order."""
        dtype = self.conv1.kernel.dtype
        x = jnp.asarray(layout.chunks).astype(dtype)
        x = jax.nn.gelu(self.conv1(x), approximate=False) * jnp.asarray(layout.chunk_mask)[..., None].astype(dtype)
        x = jax.nn.gelu(self.conv2(x), approximate=False)
        x = x + jnp.asarray(sinusoids(x.shape[1], self.cfg.d_model)).astype(dtype)[None]
        key_valid = jnp.asarray(layout.key_valid)
        for i, layer in enumerate(self.layers):
            with jax.named_scope(f"audio_layer_{i}"):
                x = layer(x, key_valid)
        rows = x.reshape(-1, x.shape[-1])
        first = jnp.asarray(layout.pool_first)
        pooled = (rows[first] + rows[first + 1]) / 2
        return self.proj(self.ln_post(pooled))
