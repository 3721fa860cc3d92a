"""The attention seam (`model.attention`): blockwise equals dense (fp32 ≤ 1e-5) for every mask kind, forward
and gradient; the implementation choice by platform; the fused kernels' mask handling (splash in the Pallas
interpreter, the cuDNN call's masks through XLA); and the memory bound from XLA's compiled memory analysis."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omniagent_jax.model import attention_kernels
from omniagent_jax.model.attention import AttentionImpl, AttentionMask, blockwise_attention, choose, dense_attention

B, T, H, KV, D = 2, 37, 4, 2, 8  # T not a multiple of the tiles: padded tiles are exercised


def _qkv(seed: int = 0, t: int = T, s: int = T, d: int = D):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((B, t, H, d)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((B, s, KV, d)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((B, s, KV, d)), jnp.float32)
    return q, k, v


def _masks() -> dict[str, tuple[AttentionMask, int]]:
    """Every mask kind the model uses → (mask, key length)."""
    left = np.ones((B, T), bool)
    left[1, :30] = False  # row 1: 30 left-padding tokens, each a query with no allowed key
    right = np.ones((B, T), bool)
    right[0, 20:] = False
    segments = np.repeat(np.arange(5), 8)[:T][None].repeat(B, 0)  # packed windows of 8 rows (block-diagonal)
    chunk_valid = np.ones((B, T), bool)
    chunk_valid[0, 25:] = False  # a short last chunk
    chunk_valid[1, :] = False  # a bucket-padding chunk: no valid key at all
    s = 45  # a KV cache longer than the queries, at an offset
    cache_valid = np.ones((B, s), bool)
    cache_valid[0, :3] = False
    return {
        "causal_left_padding": (AttentionMask.causal_padding(left), T),
        "causal_right_padding": (AttentionMask.causal_padding(right), T),
        "block_diagonal_segments": (AttentionMask(query_segment=segments, key_segment=segments), T),
        "chunk_local": (AttentionMask(key_valid=chunk_valid), T),
        "causal_cache_offset": (AttentionMask(key_valid=cache_valid, query_pos=(4 + jnp.arange(T))[None],
                                              key_pos=jnp.arange(s)[None], causal=True), s),
    }


MASKS = _masks()


@pytest.mark.parametrize("name", sorted(MASKS))
def test_blockwise_equals_dense_forward_and_gradient(name):
    mask, s = MASKS[name]
    q, k, v = _qkv(t=T, s=s)
    weights = jnp.asarray(np.random.default_rng(1).standard_normal((B, T, H, D)), jnp.float32)
    dense = jax.jit(lambda q, k, v: dense_attention(q, k, v, mask.dense(T, s)))
    block = jax.jit(lambda q, k, v: blockwise_attention(q, k, v, mask, block_q=8, block_k=16))
    np.testing.assert_allclose(np.asarray(block(q, k, v)), np.asarray(dense(q, k, v)), atol=1e-5, rtol=0)
    grads = [jax.jit(jax.grad(lambda q, k, v, f=f: (f(q, k, v) * weights).sum(), argnums=(0, 1, 2)))(q, k, v)
             for f in (dense, block)]
    for got, want, what in zip(grads[1], grads[0], "qkv"):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0, err_msg=f"d{what}")
    if name in ("causal_left_padding", "chunk_local"):  # rows with no allowed key: the mean of the values, as dense
        assert not np.asarray(mask.dense(T, s)).any(-1).all()


def test_choice_by_platform_and_config():
    q, k, _ = _qkv()
    mask = AttentionMask.causal_padding(np.ones((B, T)))
    auto = AttentionImpl()
    assert choose(auto, "cpu", q, k, mask) == "dense"  # short: the dense path is cheaper
    assert choose(AttentionImpl(dense_max_scores=T * T - 1), "cpu", q, k, mask) == "blockwise"
    assert choose(auto, "gpu", q.astype(jnp.bfloat16), k, mask) == "cudnn"
    assert choose(auto, "gpu", q, k, mask) == "dense"  # cuDNN flash has no fp32
    long_q, long_k, _ = _qkv(t=256, s=256)
    assert choose(auto, "tpu", long_q, long_k, AttentionMask.causal_padding(np.ones((B, 256)))) == "splash"
    assert choose(auto, "tpu", q, k, mask) == "dense"  # T not a multiple of 128
    offset = MASKS["causal_cache_offset"][0]
    assert choose(AttentionImpl(dense_max_scores=0), "tpu", long_q, long_k, offset) == "blockwise"  # splash: full sequences only
    assert choose(AttentionImpl("blockwise"), "tpu", q, k, mask) == "blockwise"
    with pytest.raises(ValueError, match="cudnn attention needs a GPU"):
        choose(AttentionImpl("cudnn"), "cpu", q, k, mask)
    with pytest.raises(ValueError, match="splash attention needs a TPU"):
        choose(AttentionImpl("splash"), "cpu", long_q, long_k, mask)
    with pytest.raises(ValueError, match="not one of"):
        AttentionImpl("flash")
    with pytest.raises(ValueError, match="block sizes"):
        AttentionImpl("blockwise", block_q=0)


def test_splash_kernel_in_the_pallas_interpreter_matches_dense():
    t = 256
    q, k, v = _qkv(t=t, s=t, d=128)
    left = np.ones((B, t), bool)
    left[1, :100] = False
    mask = AttentionMask.causal_padding(left)
    got = attention_kernels.splash_attention(q, k, v, mask, block_q=128, block_k=128, interpret=True)
    want = dense_attention(q, k, v, mask.dense(t, t))
    real = np.asarray(mask.dense(t, t)).any(-1)  # padding rows differ by design (finite, never read)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)
    assert np.isfinite(np.asarray(got)).all()


@pytest.mark.parametrize("name", ["causal_left_padding", "block_diagonal_segments", "chunk_local"])
def test_cudnn_call_masks_through_xla_match_dense(name):
    mask, s = MASKS[name]
    q, k, v = _qkv(t=T, s=s)
    got = attention_kernels.cudnn_attention(q, k, v, mask, implementation="xla")
    dense_mask = np.asarray(mask.dense(T, s))
    want = dense_attention(q, k, v, dense_mask)
    real = np.broadcast_to(dense_mask.any(-1), (B, T))
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got)[~real], 0)
    plain = AttentionMask(causal=True)
    np.testing.assert_allclose(np.asarray(attention_kernels.cudnn_attention(q, k[:, :T], v[:, :T], plain, implementation="xla")),
                               np.asarray(dense_attention(q, k[:, :T], v[:, :T], plain.dense(T, T))), atol=1e-5)


def _decoder_train_temp_bytes(length: int) -> int:
    """Temporaries XLA allocates for the tiny thinker decoder's forward + backward over one `length`-token row."""
    from flax import nnx

    from omniagent_jax.model import abstract_thinker
    from omniagent_jax.model.config import load_config
    from omniagent_jax.model.decoder import text_positions
    from omniagent_jax.model.kv_cache import NoCache

    decoder = abstract_thinker(load_config("tiny"), jnp.float32).model
    graphdef, state = nnx.split(decoder)

    def loss(state, embeds, mask):
        hidden, _ = nnx.merge(graphdef, state)(embeds, text_positions(mask), NoCache(mask))
        return hidden.sum()

    embeds = jax.ShapeDtypeStruct((1, length, decoder.cfg.hidden_size), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, length), jnp.int32)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(state, embeds, mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_decoder_training_memory_is_bounded_and_linear():
    heads = 4  # the tiny config's
    temps = {t: _decoder_train_temp_bytes(t) for t in (4096, 8192, 16384)}
    one_layer_scores = heads * 16384 * 16384 * 4
    assert temps[16384] <= one_layer_scores / 10, temps
    assert temps[8192] <= 2.5 * temps[4096], temps
