"""The Qwen2.5-Omni thinker: token and media embeddings → decoder → logits (docs/model.md §2).

The full forward takes the HF processor's inputs. Media bookkeeping (window order, audio chunks,
placeholder positions, TMRoPE) is numpy on the host from concrete ids and grids; the towers and the
decoder run jitted. Media arrive as a `processing.media_inputs.MediaInputs` (or its HF-named fields);
`media_embeddings` is the one path from ids + media to placeholder slots and embedding rows, and
`rope_index` the one path to positions: the full forward, the engine and training all use them. The
engine drives the other seams itself: `embed_inputs`, `decode`, `logits`.
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
from omniagent_jax.processing.layout import audio_token_count
from omniagent_jax.processing.media_inputs import KINDS, MediaInputs, MediaItem


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

    def placeholder_slots(self, input_ids: np.ndarray, media: MediaInputs) -> list[tuple[MediaItem, np.ndarray]]:
        """Each media item with the indices (into the flattened, concrete `input_ids`) of the placeholders it fills;
        raises on a placeholder/feature count mismatch of any kind."""
        cfg = self.config
        ids = {"audio": cfg.audio_token_id, "image": cfg.image_token_id, "video": cfg.video_token_id}
        return media.placeholder_slots(_concrete(input_ids, "input_ids"), ids, cfg.vision.spatial_merge_size)

    def media_embeddings(
        self, input_ids: np.ndarray, media: MediaInputs, start: int = 0, end: int | None = None
    ) -> tuple[np.ndarray, jax.Array]:
        """Placeholder slots (indices into the flattened `input_ids`) in `[start, end)` and their media
        embeddings `[len(slots), D]`, row k filling slot k. Only items with a placeholder in the range
        are encoded, all items of a kind in one tower call. The one place ids + media become embeddings:
        the full forward, the engine (per prefill chunk) and training's batch preparation use it."""
        placed = self.placeholder_slots(input_ids, media)
        end = np.asarray(input_ids).size if end is None else end
        slots, rows = [], []
        for kind in KINDS:
            chosen = [(item, pos, (pos >= start) & (pos < end)) for item, pos in placed if item.kind == kind]
            chosen = [(item, pos, inside) for item, pos, inside in chosen if inside.any()]
            if not chosen:
                continue
            encode = self.encode_audios if kind == "audio" else self.encode_images
            feats = encode(*media.select(kind, [item.index for item, _, _ in chosen]))
            taken = np.concatenate([inside for _, _, inside in chosen])  # over the encoded items' tokens, in order
            rows.append(feats if taken.all() else feats[np.flatnonzero(taken)])
            slots += [pos[inside] for _, pos, inside in chosen]
        if not slots:
            return np.zeros(0, np.int64), jnp.zeros((0, self.config.text.hidden_size), self.dtype)
        return np.concatenate(slots), jnp.concatenate(rows).astype(self.dtype)

    def embed_media(self, input_ids: np.ndarray, media: MediaInputs | None = None, **fields) -> jax.Array:
        """Token embeddings with every placeholder replaced by its media token. Media come as a
        `MediaInputs` or as its HF-named fields (`pixel_values=...`, ...)."""
        media = _media(media, fields)
        ids = _concrete(input_ids, "input_ids")
        slots, rows = self.media_embeddings(ids, media)
        embeds = self.embed_tokens(jnp.asarray(ids))
        flat = embeds.reshape(-1, embeds.shape[-1])
        if len(slots):
            flat = flat.at[jnp.asarray(slots)].set(rows.astype(flat.dtype))
        return flat.reshape(embeds.shape)

    def embed_inputs(
        self, input_ids: jax.Array, media_rows: jax.Array | None = None, media_mask: jax.Array | None = None
    ) -> jax.Array:
        """Traceable: token embeddings with `media_rows[..., t, :]` wherever `media_mask[..., t]` (dense
        `media_embeddings` output, laid out on the host). The engine's and the train step's input layer."""
        embeds = self.embed_tokens(input_ids)
        if media_rows is None:
            return embeds
        return jnp.where(media_mask[..., None], media_rows.astype(embeds.dtype), embeds)

    def rope_index(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None,
                   media: MediaInputs | None = None) -> tuple[np.ndarray, np.ndarray]:
        """TMRoPE positions `[3, B, S]` and rope deltas `[B]`; decode positions are `cumsum(mask) − 1 + delta`."""
        media = MediaInputs() if media is None else media
        return get_rope_index(
            _concrete(input_ids, "input_ids"),
            None if attention_mask is None else _concrete(attention_mask, "attention_mask"),
            self.config,
            image_grid_thw=media.image_grid_thw,
            video_grid_thw=media.video_grid_thw,
            video_second_per_grid=media.video_second_per_grid,
            audio_seqlens=media.audio_lengths(),
            use_audio_in_video=media.use_audio_in_video,
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
        media = MediaInputs(
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            video_second_per_grid=video_second_per_grid,
            input_features=input_features,
            feature_attention_mask=feature_attention_mask,
            use_audio_in_video=use_audio_in_video,
        )
        has_media = not media.empty
        if attention_mask is None:
            attention_mask = jnp.ones_like(jnp.asarray(input_ids))
        if not has_media:
            if positions is None:
                positions = text_positions(jnp.asarray(attention_mask))
            embeds = self.embed_tokens(jnp.asarray(input_ids))
        else:
            embeds = self.embed_media(input_ids, media)
        if positions is None:
            positions, _ = self.rope_index(input_ids, attention_mask, media)
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


def _media(media: MediaInputs | None, fields: dict) -> MediaInputs:
    if media is not None and fields:
        raise TypeError(f"pass media as a MediaInputs or as fields, not both (got fields {sorted(fields)})")
    return MediaInputs(**fields) if media is None else media


def abstract_thinker(config: ThinkerConfig, dtype=jnp.bfloat16) -> Thinker:
    """A Thinker whose parameters are `ShapeDtypeStruct`s: no memory is allocated."""
    return nnx.eval_shape(lambda: Thinker(config, dtype=dtype, rngs=nnx.Rngs(0)))


def load_thinker(path: str | os.PathLike, dtype=None, mesh: jax.sharding.Mesh | None = None) -> Thinker:
    """A `Thinker` with the weights of an HF directory or a converted JAX checkpoint, each tensor read
    once and placed on the default device, or with `mesh` straight onto its shards (`loading.load_params`)."""
    return load_params(path, abstract_thinker, dtype=dtype, mesh=mesh)
