"""The fused attention kernels behind `model.attention` (docs/model.md §8): cuDNN flash attention on GPU
and Pallas splash attention on TPU. Both are chosen by `attention.choose` only where they can run;
importing this module is safe everywhere (the Pallas TPU modules load lazily)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from omniagent_jax.model.attention_mask import AttentionMask


def cudnn_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, *, implementation: str = "cudnn"
) -> jax.Array:
    """`jax.nn.dot_product_attention(implementation="cudnn")`, GQA native. A plain causal mask goes in as
    `is_causal`; padding, positions or segments as a boolean mask (one byte per score, no fp32 scores).
    `implementation="xla"` runs the same call anywhere (how the tests check the mask handling on CPU)."""
    plain_causal = mask.causal and mask.aligned and mask.key_valid is None and mask.query_segment is None
    if plain_causal:
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
    allowed = mask.dense(q.shape[1], k.shape[1])  # [B, T, S]
    out = jax.nn.dot_product_attention(q, k, v, mask=allowed[:, None], implementation=implementation)
    # Rows with no allowed key are padding (never read by a real token): keep them finite.
    return jnp.where(jnp.any(allowed, axis=-1)[:, :, None, None], out, 0).astype(q.dtype)


def splash_segments(mask: AttentionMask, b: int, t: int, s: int) -> tuple[jax.Array, jax.Array]:
    """Segment ids `[B, T]`, `[B, S]` expressing padding (and segments) for splash: an invalid key gets an id
    no query has; a row with no valid key at all keeps its keys in the queries' segment (a finite padding row)."""
    q_seg = jnp.zeros((b, t), jnp.int32) if mask.query_segment is None else jnp.broadcast_to(mask.query_segment, (b, t))
    k_seg = jnp.zeros((b, s), jnp.int32) if mask.key_segment is None else jnp.broadcast_to(mask.key_segment, (b, s))
    q_seg, k_seg = q_seg.astype(jnp.int32) + 1, k_seg.astype(jnp.int32) + 1
    if mask.key_valid is not None:
        valid = jnp.broadcast_to(mask.key_valid, (b, s))
        any_valid = jnp.any(valid, axis=1, keepdims=True)
        k_seg = jnp.where(valid | ~any_valid, k_seg, -1)
    return q_seg, k_seg


@functools.lru_cache(maxsize=16)
def _splash_kernel(t: int, s: int, heads: int, causal: bool, block_q: int, block_k: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    one = masks.CausalMask((t, s)) if causal else masks.FullMask((t, s))
    sizes = kernel.BlockSizes(block_q=min(block_q, t), block_kv=min(block_k, s), block_kv_compute=min(block_k, s),
                              block_q_dkv=min(block_q, t), block_kv_dkv=min(block_k, s), block_kv_dkv_compute=min(block_k, s),
                              block_q_dq=min(block_q, t), block_kv_dq=min(block_k, s))
    return kernel.make_splash_mha(masks.MultiHeadMask([one] * heads), head_shards=1, q_seq_shards=1, block_sizes=sizes,
                                  interpret=interpret)


def splash_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, *, block_q: int = 512, block_k: int = 512,
    interpret: bool = False,
) -> jax.Array:
    """Pallas splash attention (MaxText's TPU path): q pre-scaled, heads-major, vmapped over the batch;
    GQA by repeating key/value heads; padding and segments as segment ids. `interpret` runs the kernel
    in the Pallas interpreter (any platform: how the tests check it on CPU)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel

    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    run = _splash_kernel(t, s, h, mask.causal, block_q, block_k, interpret)
    qh = jnp.swapaxes(q * jnp.asarray(d**-0.5, q.dtype), 1, 2)  # [B, H, T, D]
    kh = jnp.repeat(jnp.swapaxes(k, 1, 2), h // kv, axis=1)
    vh = jnp.repeat(jnp.swapaxes(v, 1, 2), h // kv, axis=1)
    q_seg, k_seg = splash_segments(mask, b, t, s)
    one = lambda qq, kk, vv, qs, ks: run(qq, kk, vv, segment_ids=kernel.SegmentIds(q=qs, kv=ks))  # noqa: E731
    out = jax.vmap(one)(qh, kh, vh, q_seg, k_seg)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)
