"""The one attention seam of the model (docs/model.md §8): every attention — the decoder (causal +
left or right padding), the vision windows / full-frame segments, the audio chunks — calls
`attention(q, k, v, mask, impl)`, and the implementation is chosen by platform and config:

* `dense`: the parity reference — `[.., T, S]` scores, masked logits at the dtype's minimum, fp32
  softmax cast back before `@ V` (the reference's eager path).
* `blockwise`: pure JAX online softmax over key/value blocks within query blocks (flash attention's
  recurrence), never the full score matrix, with a recomputing custom VJP (memory O(T) in the
  backward pass too). Runs everywhere; the CPU default for long inputs.
* `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (GPU, bf16/fp16).
* `splash`: Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`, TPU).

The mask is structured, never a `[T, S]` array: `allowed(b, i, j) = key_valid[b, j] ∧ (¬causal ∨
key_pos[b, j] ≤ query_pos[b, i]) ∧ query_segment[b, i] = key_segment[b, j]`. A query row with no
allowed key (a padding row) gets, as in the reference, the mean of all values (the dense path's
uniform softmax over minimum logits); its output is never read by a real token.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from omniagent_jax.model import attention_kernels
from omniagent_jax.model.attention_mask import AttentionMask

__all__ = ["DEFAULT", "AttentionImpl", "AttentionMask", "attention", "blockwise_attention", "choose", "dense_attention",
           "use_attention"]

KINDS = ("auto", "dense", "blockwise", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class AttentionImpl:
    """Which implementation, and its block sizes. Hashable: modules keep it as a static attribute, so a
    jitted function retraces when it changes. `auto` picks cuDNN on GPU and splash on TPU when the mask
    allows, else blockwise when `T·S > dense_max_scores`, else dense."""

    kind: str = "auto"
    block_q: int = 512
    block_k: int = 512
    dense_max_scores: int = 1 << 20

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"attention implementation {self.kind!r} is not one of {KINDS}")
        if self.block_q < 1 or self.block_k < 1:
            raise ValueError(f"attention block sizes must be >= 1, got {self.block_q}, {self.block_k}")


DEFAULT = AttentionImpl()


# ---------------------------------------------------------------------------------------- selection


def choose(impl: AttentionImpl, platform: str, q: jax.Array, k: jax.Array, mask: AttentionMask) -> str:
    """The implementation `impl` resolves to for these shapes on `platform` ("cpu", "gpu", "tpu");
    ValueError when a fused kernel is asked for where it cannot run."""
    t, s = q.shape[1], k.shape[1]
    if impl.kind == "cudnn" and not cudnn_supported(platform, q):
        raise ValueError(f"cudnn attention needs a GPU and bf16/fp16 with head_dim % 8 == 0 <= 128 (platform {platform}, "
                         f"{q.dtype}, head_dim {q.shape[-1]})")
    if impl.kind == "splash" and not splash_supported(platform, q, k, mask):
        raise ValueError(f"splash attention needs a TPU, T and S multiples of 128 and a full-sequence mask (platform {platform}, "
                         f"T {t}, S {s})")
    if impl.kind != "auto":
        return impl.kind
    if cudnn_supported(platform, q) and t > 1:
        return "cudnn"
    if splash_supported(platform, q, k, mask):
        return "splash"
    return "blockwise" if t * s > impl.dense_max_scores else "dense"


def cudnn_supported(platform: str, q: jax.Array) -> bool:
    return platform == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16) and q.shape[-1] % 8 == 0 and q.shape[-1] <= 128


def splash_supported(platform: str, q: jax.Array, k: jax.Array, mask: AttentionMask) -> bool:
    return platform == "tpu" and q.shape[1] % 128 == 0 and k.shape[1] % 128 == 0 and mask.aligned


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, impl: AttentionImpl = DEFAULT) -> jax.Array:
    """q `[B, T, H, D]`, k/v `[B, S, KV, D]` (H a multiple of KV) → `[B, T, H, D]`."""
    kind = choose(impl, jax.default_backend(), q, k, mask)
    if kind == "dense":
        return dense_attention(q, k, v, mask.dense(q.shape[1], k.shape[1]))
    if kind == "blockwise":
        return blockwise_attention(q, k, v, mask, block_q=impl.block_q, block_k=impl.block_k)
    if kind == "cudnn":
        return attention_kernels.cudnn_attention(q, k, v, mask)
    return attention_kernels.splash_attention(q, k, v, mask, block_q=impl.block_q, block_k=impl.block_k)


# ---------------------------------------------------------------------------------------- dense


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """The parity reference: q `[B, T, H, D]`, k/v `[B, S, KV, D]`, mask `[B, T, S]` (True = may attend).
    Masked logits get the dtype's minimum, so fully masked (padding) rows stay finite."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k) * jnp.asarray(d**-0.5, q.dtype)
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(scores.dtype).min)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


# ---------------------------------------------------------------------------------------- blockwise


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask, *, block_q: int = 512,
                        block_k: int = 512) -> jax.Array:
    """Online-softmax attention over `[block_q, block_k]` tiles; equals `dense_attention` (fp32: ≤ 1e-5)."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    bq, bk = min(block_q, t), min(block_k, k.shape[1])
    out = _blockwise(q.reshape(b, t, kv, h // kv, d), k, v, mask, bq, bk)
    return out.reshape(b, t, h, d)


def _pad_to(x: jax.Array, axis: int, block: int) -> jax.Array:
    pad = (-x.shape[axis]) % block
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths)


def _tiles(q, k, v, mask: AttentionMask, bq: int, bk: int):
    """Shared by the forward and both backward passes: padded inputs, tile counts and the tile function
    `scores(qi, kj)` → fp32 scaled logits `[B, KV, G, bq, bk]`, disallowed pairs at -inf."""
    t, s, d = q.shape[1], k.shape[1], q.shape[-1]
    qp, kp, vp = _pad_to(q, 1, bq), _pad_to(k, 1, bk), _pad_to(v, 1, bk)
    scale = jnp.asarray(d**-0.5, q.dtype)

    def scores(qi, kj):
        q_blk = jax.lax.dynamic_slice_in_dim(qp, qi * bq, bq, axis=1)
        k_blk = jax.lax.dynamic_slice_in_dim(kp, kj * bk, bk, axis=1)
        allowed = mask.block(qi * bq, bq, kj * bk, bk, t, s)
        logits = (jnp.einsum("bqkgd,bskd->bkgqs", q_blk, k_blk) * scale).astype(jnp.float32)
        return jnp.where(allowed[:, None, None], logits, -jnp.inf)

    return qp, kp, vp, qp.shape[1] // bq, kp.shape[1] // bk, scores


def _forward(q, k, v, mask: AttentionMask, bq: int, bk: int):
    """→ output `[B, T, KV, G, D]` (input dtype) and the fp32 log-sum-exp `[B, KV, G, T]` (+inf on rows with no allowed key)."""
    b, t, kvh, g, d = q.shape
    qp, kp, vp, nq, nk, scores = _tiles(q, k, v, mask, bq, bk)

    def q_tile(qi):
        def kv_tile(carry, kj):
            def update(carry):
                m, total, acc = carry
                logits = scores(qi, kj)
                m_new = jnp.maximum(m, logits.max(-1))
                m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
                p = jnp.exp(logits - m_safe[..., None])
                corr = jnp.exp(m - m_safe)
                v_blk = jax.lax.dynamic_slice_in_dim(vp, kj * bk, bk, axis=1)
                pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), v_blk, preferred_element_type=jnp.float32)
                return m_new, total * corr + p.sum(-1), acc * corr[..., None] + pv

            # Tiles with no allowed pair (above the causal diagonal, across segments, all padding) are skipped.
            live = jnp.any(mask.block(qi * bq, bq, kj * bk, bk, t, k.shape[1]))
            return jax.lax.cond(live, update, lambda c: c, carry), None

        init = (jnp.full((b, kvh, g, bq), -jnp.inf, jnp.float32), jnp.zeros((b, kvh, g, bq), jnp.float32),
                jnp.zeros((b, kvh, g, bq, d), jnp.float32))
        (m, total, acc), _ = jax.lax.scan(kv_tile, init, jnp.arange(nk))
        empty = total == 0
        out = acc / jnp.where(empty, 1.0, total)[..., None]
        lse = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, total)))
        return out, lse, empty

    out, lse, empty = jax.lax.map(q_tile, jnp.arange(nq))  # [nq, B, KV, G, bq, (D)]
    out = jnp.moveaxis(out, 0, 3).reshape(b, kvh, g, nq * bq, d)[:, :, :, :t]
    lse = jnp.moveaxis(lse, 0, 3).reshape(b, kvh, g, nq * bq)[..., :t]
    empty = jnp.moveaxis(empty, 0, 3).reshape(b, kvh, g, nq * bq)[..., :t]
    # Rows with no allowed key: the mean of all values, as the dense path's uniform softmax over minimum logits.
    mean_v = v.astype(jnp.float32).mean(axis=1)  # [B, KV, D]
    out = jnp.where(empty[..., None], mean_v[:, :, None, None, :], out)
    return jnp.moveaxis(out, 3, 1).astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blockwise(q, k, v, mask, bq, bk):
    return _forward(q, k, v, mask, bq, bk)[0]


def _blockwise_fwd(q, k, v, mask, bq, bk):
    out, lse = _forward(q, k, v, mask, bq, bk)
    return out, (q, k, v, mask, out, lse)


def _blockwise_bwd(bq, bk, res, d_out):
    """Flash attention's backward: probabilities recomputed tile by tile from the saved log-sum-exp."""
    q, k, v, mask, out, lse = res
    b, t, kvh, g, d = q.shape
    s = k.shape[1]
    scale = d**-0.5
    qp, kp, vp, nq, nk, scores = _tiles(q, k, v, mask, bq, bk)
    do = _pad_to(jnp.moveaxis(d_out.astype(jnp.float32), 1, 3), 3, bq)  # [B, KV, G, Tp, D]
    delta = _pad_to((jnp.moveaxis(d_out.astype(jnp.float32) * out.astype(jnp.float32), 1, 3)).sum(-1), 3, bq)
    lse_p = _pad_to(lse, 3, bq)

    def probs(qi, kj):
        logits = scores(qi, kj)
        lse_blk = jax.lax.dynamic_slice_in_dim(lse_p, qi * bq, bq, axis=3)
        p = jnp.exp(logits - lse_blk[..., None])
        do_blk = jax.lax.dynamic_slice_in_dim(do, qi * bq, bq, axis=3)
        v_blk = jax.lax.dynamic_slice_in_dim(vp, kj * bk, bk, axis=1).astype(jnp.float32)
        dp = jnp.einsum("bkgqd,bskd->bkgqs", do_blk, v_blk)
        ds = p * (dp - jax.lax.dynamic_slice_in_dim(delta, qi * bq, bq, axis=3)[..., None])
        return p, ds, do_blk

    def dq_tile(qi):
        def step(acc, kj):
            def add(acc):
                _, ds, _ = probs(qi, kj)
                k_blk = jax.lax.dynamic_slice_in_dim(kp, kj * bk, bk, axis=1).astype(jnp.float32)
                return acc + jnp.einsum("bkgqs,bskd->bqkgd", ds, k_blk) * scale

            live = jnp.any(mask.block(qi * bq, bq, kj * bk, bk, t, s))
            return jax.lax.cond(live, add, lambda a: a, acc), None

        return jax.lax.scan(step, jnp.zeros((b, bq, kvh, g, d), jnp.float32), jnp.arange(nk))[0]

    def dkv_tile(kj):
        def step(acc, qi):
            def add(acc):
                dk, dv = acc
                p, ds, do_blk = probs(qi, kj)
                q_blk = jax.lax.dynamic_slice_in_dim(qp, qi * bq, bq, axis=1).astype(jnp.float32)
                return (dk + jnp.einsum("bkgqs,bqkgd->bskd", ds, q_blk) * scale,
                        dv + jnp.einsum("bkgqs,bkgqd->bskd", p, do_blk))

            live = jnp.any(mask.block(qi * bq, bq, kj * bk, bk, t, s))
            return jax.lax.cond(live, add, lambda a: a, acc), None

        zeros = jnp.zeros((b, bk, kvh, d), jnp.float32)
        return jax.lax.scan(step, (zeros, zeros), jnp.arange(nq))[0]

    dq = jnp.moveaxis(jax.lax.map(dq_tile, jnp.arange(nq)), 0, 1).reshape(b, nq * bq, kvh, g, d)[:, :t]
    dk, dv = jax.lax.map(dkv_tile, jnp.arange(nk))
    dk = jnp.moveaxis(dk, 0, 1).reshape(b, nk * bk, kvh, d)[:, :s]
    dv = jnp.moveaxis(dv, 0, 1).reshape(b, nk * bk, kvh, d)[:, :s]
    # Rows with no allowed key took the mean of all values: each value gets 1/S of their output gradient.
    empty = jnp.isinf(lse)  # [B, KV, G, T]
    d_mean = jnp.where(empty[..., None], jnp.moveaxis(d_out.astype(jnp.float32), 1, 3), 0.0).sum(axis=(2, 3)) / s
    dv = dv + d_mean[:, None]
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


# ---------------------------------------------------------------------------------------- modules


def use_attention(model, impl: AttentionImpl | str) -> None:
    """Sets the attention implementation of every attention module in `model` (a static attribute:
    jitted functions taking the model retrace)."""
    impl = AttentionImpl(impl) if isinstance(impl, str) else impl
    from flax import nnx

    for _, module in nnx.iter_modules(model):
        if hasattr(module, "attention_impl"):
            module.attention_impl = impl
