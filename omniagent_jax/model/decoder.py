"""The thinker's text decoder (Qwen2.5-7B): GQA attention with q/k/v bias and M-RoPE, SwiGLU MLP,
RMSNorm. Module and attribute names mirror the checkpoint keys (`model.layers.N.self_attn.q_proj`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from omniagent_jax.model.attention import DEFAULT
from omniagent_jax.model.config import TextConfig
from omniagent_jax.model.kv_cache import KVCache
from omniagent_jax.model.layers import RMSNorm, SwiGLU, linear
from omniagent_jax.model.rope import apply_rotary, mrope_cos_sin


class Attention(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        d, q_dim, kv_dim = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        self.q_proj = linear(d, q_dim, ("embed", "heads"), use_bias=True, dtype=dtype, rngs=rngs)
        self.k_proj = linear(d, kv_dim, ("embed", "kv_heads"), use_bias=True, dtype=dtype, rngs=rngs)
        self.v_proj = linear(d, kv_dim, ("embed", "kv_heads"), use_bias=True, dtype=dtype, rngs=rngs)
        self.o_proj = linear(q_dim, d, ("heads", "embed"), use_bias=False, dtype=dtype, rngs=rngs)
        self.attention_impl = DEFAULT  # static: `model.attention.use_attention` switches it

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, layer: int, cache: KVCache) -> tuple[jax.Array, KVCache]:
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out, cache = cache.attend(layer, q, k, v, self.attention_impl)
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), cache


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, layer: int, cache: KVCache) -> tuple[jax.Array, KVCache]:
        attn_out, cache = self.self_attn(self.input_layernorm(x), cos, sin, layer, cache)
        x = x + attn_out
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class TextDecoder(nnx.Module):
    """Embeddings, N decoder layers and the final norm (`thinker.model.*`)."""

    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=dtype,
            param_dtype=dtype,
            embedding_init=nnx.initializers.normal(0.02),
            embedding_metadata={"out_sharding": ("vocab", "embed")},
            rngs=rngs,
        )
        self.layers = nnx.List([DecoderLayer(cfg, dtype=dtype, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype)

    def __call__(self, inputs_embeds: jax.Array, positions: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """inputs_embeds `[B, T, D]`, positions `[3, B, T]` → final-normed hidden states `[B, T, D]`."""
        cos, sin = mrope_cos_sin(
            positions,
            head_dim=self.cfg.head_dim,
            theta=self.cfg.rope_theta,
            mrope_section=self.cfg.mrope_section,
            dtype=inputs_embeds.dtype,
        )
        x = inputs_embeds
        for i, layer in enumerate(self.layers):
            with jax.named_scope(f"layer_{i}"):
                x, cache = layer(x, cos, sin, i, cache)
        return self.norm(x), cache.advance(inputs_embeds.shape[1])


def text_positions(attention_mask: jax.Array) -> jax.Array:
    """3-D positions for text-only input: `cumsum(mask) − 1` on all three axes, padded slots set to 1
    (what the reference writes there; their values never reach a real token)."""
    mask = jnp.asarray(attention_mask).astype(jnp.int32)
    pos = jnp.where(mask == 1, jnp.cumsum(mask, axis=-1) - 1, 1)
    return jnp.broadcast_to(pos[None], (3, *pos.shape))
