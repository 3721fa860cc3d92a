"""The Qwen2.5-Omni thinker: token and media embeddings → decoder → logits (docs/model.md §2).

The full forward takes the HF processor's inputs. Media bookkeeping (window order, audio chunks,
placeholder positions, TMRoPE) is numpy on the host from concrete ids and grids; the towers and the
decoder run jitted. The engine uses the seams instead: `embed_media`, `rope_index`, `decode`, `logits`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omniagent_jax.model.audio import AudioTower, audio_layout
from omniagent_jax.model.config import ThinkerConfig
from omniagent_jax.model.decoder import TextDecoder, text_positions
from omniagent_jax.model.kv_cache import KVCache, NoCache
from omniagent_jax.model.layers import linear
from omniagent_jax.model.loading import load_params
from omniagent_jax.model.segments import bucket
from omniagent_jax.model.tmrope import get_rope_index
from omniagent_jax.model.vision import VisionTower, vision_layout
from omniagent_jax.processing.layout import audio_token_count, vision_token_count


class Thinker(nnx.Module):
    """`Qwen2_5OmniThinkerForConditionalGeneration` in Flax NNX.

    Attribute names follow the checkpoint keys: `model` is the text decoder, `lm_head` the untied
    head, `visual` the vision tower, `audio_tower` the audio tower.
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
            self.visual = VisionTower(config.vision, dtype=dtype, rngs=rngs)
            self.audio_tower = AudioTower(config.audio, dtype=dtype, rngs=rngs)

    # ------------------------------------------------------------------ seams for the engine

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        return self.model.embed_tokens(input_ids)

    def encode_images(self, pixel_values: np.ndarray, image_grid_thw: np.ndarray) -> jax.Array:
        """Pixel rows + grids of one or more images → their tokens `[Σ t·h·w/4, D]`, in order.

        Rows are padded to a shape bucket so the tower compiles once per bucket, not per image size.
        """
        unit = self.config.vision.spatial_merge_size**2
        n = len(pixel_values)
        rows = bucket(n, minimum=4 * unit) // unit * unit
        padded = np.zeros((rows, np.shape(pixel_values)[1]), np.asarray(pixel_values).dtype)
        padded[:n] = pixel_values
        layout = vision_layout(image_grid_thw, self.config.vision, padded_rows=rows)
        return _run_vision(self.visual, jnp.asarray(padded), layout)[: n // unit]

    encode_videos = encode_images  # the same tower; videos differ only in their grids and placeholders

    def encode_audios(self, input_features: np.ndarray, feature_attention_mask: np.ndarray) -> jax.Array:
        """Padded mel features `[B, 128, T]` + frame mask → the tokens of every audio `[Σ N, D]`, in order."""
        layout = audio_layout(input_features, feature_attention_mask, self.config.audio, padded=True)
        n_tokens = sum(audio_token_count(int(n)) for n in np.asarray(feature_attention_mask).sum(axis=-1))
        return _run_audio(self.audio_tower, layout)[:n_tokens]

    def embed_media(
        self,
        input_ids: np.ndarray,
        *,
        pixel_values: np.ndarray | None = None,
        image_grid_thw: np.ndarray | None = None,
        pixel_values_videos: np.ndarray | None = None,
        video_grid_thw: np.ndarray | None = None,
        input_features: np.ndarray | None = None,
        feature_attention_mask: np.ndarray | None = None,
    ) -> jax.Array:
        """Token embeddings with every placeholder replaced by its media token, in sequence order."""
        ids = _concrete(input_ids, "input_ids")
        embeds = self.embed_tokens(jnp.asarray(ids))
        flat = embeds.reshape(-1, embeds.shape[-1])
        media = []
        if input_features is not None:
            fmask = _required(feature_attention_mask, "feature_attention_mask", "input_features")
            media.append(("audio", self.config.audio_token_id, lambda: self.encode_audios(input_features, fmask)))
        if pixel_values is not None:
            igrid = _required(image_grid_thw, "image_grid_thw", "pixel_values")
            media.append(("image", self.config.image_token_id, lambda: self.encode_images(pixel_values, igrid)))
        if pixel_values_videos is not None:
            vgrid = _required(video_grid_thw, "video_grid_thw", "pixel_values_videos")
            media.append(("video", self.config.video_token_id, lambda: self.encode_videos(pixel_values_videos, vgrid)))
        expected = _expected_media_tokens(
            self.config,
            image_grid_thw if pixel_values is not None else None,
            video_grid_thw if pixel_values_videos is not None else None,
            feature_attention_mask if input_features is not None else None,
        )
        for kind, token_id, encode in media:
            slots = np.flatnonzero(ids.reshape(-1) == token_id)
            if len(slots) != expected[kind]:
                raise ValueError(
                    f"{kind} placeholder/feature mismatch: input_ids hold {len(slots)} {kind} placeholder tokens "
                    f"but the {kind} inputs produce {expected[kind]} tokens"
                )
            flat = flat.at[jnp.asarray(slots)].set(encode().astype(flat.dtype))
        return flat.reshape(embeds.shape)

    def rope_index(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        *,
        image_grid_thw: np.ndarray | None = None,
        video_grid_thw: np.ndarray | None = None,
        video_second_per_grid: np.ndarray | None = None,
        feature_attention_mask: np.ndarray | None = None,
        use_audio_in_video: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """TMRoPE positions `[3, B, S]` and rope deltas `[B]`; decode positions are `cumsum(mask) − 1 + delta`."""
        audio_seqlens = None if feature_attention_mask is None else np.asarray(feature_attention_mask).sum(axis=-1)
        return get_rope_index(
            _concrete(input_ids, "input_ids"),
            None if attention_mask is None else _concrete(attention_mask, "attention_mask"),
            self.config,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            video_second_per_grid=video_second_per_grid,
            audio_seqlens=audio_seqlens,
            use_audio_in_video=use_audio_in_video,
        )

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
        pixel_values: np.ndarray | None = None,
        image_grid_thw: np.ndarray | None = None,
        pixel_values_videos: np.ndarray | None = None,
        video_grid_thw: np.ndarray | None = None,
        video_second_per_grid: np.ndarray | None = None,
        input_features: np.ndarray | None = None,
        feature_attention_mask: np.ndarray | None = None,
        use_audio_in_video: bool = False,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        """Logits `[B, T, vocab]` for a (left-padded) batch. Inputs use the HF processor's names.

        Text-only calls are traceable (wrap them in `jax.jit`); calls with media need concrete ids and
        grids because the media layout is computed on the host.
        """
        has_media = any(x is not None for x in (pixel_values, pixel_values_videos, input_features))
        if attention_mask is None:
            attention_mask = jnp.ones_like(jnp.asarray(input_ids))
        if not has_media:
            if positions is None:
                positions = text_positions(jnp.asarray(attention_mask))
            embeds = self.embed_tokens(jnp.asarray(input_ids))
        else:
            embeds = self.embed_media(
                input_ids,
                pixel_values=pixel_values,
                image_grid_thw=image_grid_thw,
                pixel_values_videos=pixel_values_videos,
                video_grid_thw=video_grid_thw,
                input_features=input_features,
                feature_attention_mask=feature_attention_mask,
            )
        if positions is None:
            positions, _ = self.rope_index(
                input_ids,
                attention_mask,
                image_grid_thw=image_grid_thw if pixel_values is not None else None,
                video_grid_thw=video_grid_thw if pixel_values_videos is not None else None,
                video_second_per_grid=video_second_per_grid,
                feature_attention_mask=feature_attention_mask if input_features is not None else None,
                use_audio_in_video=use_audio_in_video,
            )
        mask = jnp.asarray(attention_mask)
        if has_media:
            return _run_decoder(self, embeds, jnp.asarray(positions), mask)
        hidden, _ = self.decode(embeds, jnp.asarray(positions), NoCache(mask))
        return self.logits(hidden)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype=None) -> Thinker:
        """Loads an HF checkpoint directory (safetensors) or a converted JAX (orbax) checkpoint directory."""
        return load_thinker(path, dtype=dtype)

    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(self, nnx.Param)))


@jax.jit
def _run_vision(tower: VisionTower, pixel_values: jax.Array, layout) -> jax.Array:
    return tower(pixel_values, layout)


@jax.jit
def _run_audio(tower: AudioTower, layout) -> jax.Array:
    return tower(layout)


@jax.jit
def _run_decoder(model: Thinker, embeds: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
    hidden, _ = model.decode(embeds, positions, NoCache(mask))
    return model.logits(hidden)


def _concrete(x, name: str) -> np.ndarray:
    try:
        return np.asarray(x)
    except jax.errors.TracerArrayConversionError:
        raise TypeError(
            f"{name} must be concrete for media inputs: the media layout is computed on the host. "
            "Jit the parts instead (embed_media outside, decode/logits inside)."
        ) from None


def _required(x, name: str, given: str):
    if x is None:
        raise ValueError(f"{name} is required with {given}")
    return x


def _expected_media_tokens(cfg: ThinkerConfig, image_grid_thw, video_grid_thw, feature_attention_mask) -> dict[str, int]:
    merge = cfg.vision.spatial_merge_size

    def visual(grid) -> int:
        return 0 if grid is None else sum(vision_token_count(g, merge) for g in np.asarray(grid).reshape(-1, 3))

    audio = 0
    if feature_attention_mask is not None:
        audio = sum(audio_token_count(int(n)) for n in np.asarray(feature_attention_mask).sum(axis=-1))
    return {"image": visual(image_grid_thw), "video": visual(video_grid_thw), "audio": audio}


def abstract_thinker(config: ThinkerConfig, dtype=jnp.bfloat16) -> Thinker:
    """A Thinker whose parameters are `ShapeDtypeStruct`s: no memory is allocated."""
    return nnx.eval_shape(lambda: Thinker(config, dtype=dtype, rngs=nnx.Rngs(0)))


def load_thinker(path: str | os.PathLike, dtype=None, mesh: jax.sharding.Mesh | None = None) -> Thinker:
    """A `Thinker` with the weights of an HF directory or a converted JAX checkpoint, each tensor read
    once and placed on the default device, or with `mesh` straight onto its shards (`loading.load_params`)."""
    return load_params(path, abstract_thinker, dtype=dtype, mesh=mesh)
