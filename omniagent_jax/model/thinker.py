"""The Qwen2.5-Omni thinker: token (and, with the towers, media) embeddings → decoder → logits."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omniagent_jax.model.config import ThinkerConfig
from omniagent_jax.model.decoder import TextDecoder, text_positions
from omniagent_jax.model.kv_cache import KVCache, NoCache
from omniagent_jax.model.layers import linear

_MEDIA_INPUTS = ("pixel_values", "pixel_values_videos", "input_features")


class Thinker(nnx.Module):
    """`Qwen2_5OmniThinkerForConditionalGeneration` in Flax NNX.

    Attribute names follow the checkpoint keys: `model` is the text decoder, `lm_head` the untied head.
    Parameters are created unsharded; each carries logical axis names (`nnx.get_partition_spec`)
    from which the training mesh derives its shardings.
    """

    def __init__(self, config: ThinkerConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = jnp.dtype(dtype)
        with nnx.use_eager_sharding(False):
            self.model = TextDecoder(config.text, dtype=dtype, rngs=rngs)
            self.lm_head = linear(
                config.text.hidden_size, config.text.vocab_size, ("embed", "vocab"), use_bias=False, dtype=dtype, rngs=rngs
            )

    # ------------------------------------------------------------------ seams for the engine

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        return self.model.embed_tokens(input_ids)

    def decode(self, inputs_embeds: jax.Array, positions: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """The decoder on embeddings + 3-D positions `[3, B, T]` with any `KVCache`; returns final hidden states."""
        return self.model(inputs_embeds, positions, cache)

    def logits(self, hidden: jax.Array) -> jax.Array:
        return self.lm_head(hidden)

    # ------------------------------------------------------------------ full forward

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        positions: jax.Array | None = None,
        **media: object,
    ) -> jax.Array:
        """Logits `[B, T, vocab]` for a (left-padded) batch. Inputs use the HF processor's names."""
        given = sorted(k for k, v in media.items() if v is not None and k in _MEDIA_INPUTS)
        if given:
            raise NotImplementedError(f"media inputs {given} need the vision/audio towers, which are not ported yet")
        unknown = sorted(k for k in media if k not in _MEDIA_INPUTS + _MEDIA_SIDE_INPUTS)
        if unknown:
            raise TypeError(f"unexpected inputs {unknown}")
        input_ids = jnp.asarray(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        attention_mask = jnp.asarray(attention_mask)
        if positions is None:
            positions = text_positions(attention_mask)
        hidden, _ = self.decode(self.embed_tokens(input_ids), positions, NoCache(attention_mask))
        return self.logits(hidden)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype=None) -> Thinker:
        """Loads an HF checkpoint directory (safetensors) or a converted JAX (orbax) checkpoint directory."""
        from omniagent_jax.model.params import load_thinker

        return load_thinker(path, dtype=dtype)

    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(self, nnx.Param)))


_MEDIA_SIDE_INPUTS = (
    "image_grid_thw",
    "video_grid_thw",
    "video_second_per_grid",
    "feature_attention_mask",
    "use_audio_in_video",
)


def abstract_thinker(config: ThinkerConfig, dtype=jnp.bfloat16) -> Thinker:
    """A Thinker whose parameters are `ShapeDtypeStruct`s: no memory is allocated."""
    return nnx.eval_shape(lambda: Thinker(config, dtype=dtype, rngs=nnx.Rngs(0)))
