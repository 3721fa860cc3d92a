"""Host-side batch assembly: media embeddings from the frozen towers, TMRoPE positions, padding to
the group's length, and the `[K, B, …]` micro-batch layout of the train step.

Media tokens are encoded here, outside the differentiated step: the towers are frozen, so their
outputs are constants of the loss and the step only scatters them over the placeholder positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from omniagent_jax.model import Thinker
from omniagent_jax.processing.media_inputs import MediaInputs
from omniagent_jax.train.labels import IGNORE


def has_media(sample: dict[str, Any]) -> bool:
    return not MediaInputs.from_processor_output(sample).empty


def prepare(model: Thinker, sample: dict[str, Any]) -> dict[str, np.ndarray]:
    """One encoded sample → input_ids, labels, positions `[3, T]` and (with media) media embeddings
    `[T, D]` plus their mask. Uses only the model's config and its (frozen) towers, through the same
    `rope_index` and `media_embeddings` as the full forward and the engine."""
    ids = np.asarray(sample["input_ids"])[None]
    media = MediaInputs.from_processor_output(sample)
    positions, _ = model.rope_index(ids, None, media)
    out = {"input_ids": ids[0], "labels": np.asarray(sample["labels"]), "positions": np.asarray(positions)[:, 0]}
    if not media.empty:
        slots, rows = model.media_embeddings(ids, media)
        embeds = np.zeros((ids.shape[1], model.config.text.hidden_size), np.float32)
        mask = np.zeros(ids.shape[1], bool)
        embeds[slots] = np.asarray(rows, np.float32)
        mask[slots] = True
        out["media_embeds"], out["media_mask"] = embeds, mask
    return out


def collate(
    prepared: Sequence[dict[str, np.ndarray]], grad_accum: int, length: int, hidden: int, dtype=np.float32
) -> dict[str, np.ndarray]:
    """Right-pads every sample to `length` (the group's bucket, `pipeline.Group.length`) and stacks
    them as `[K, B, L]` (positions `[K, 3, B, L]`); media arrays are present only when some sample
    has media."""
    n = len(prepared)
    if n % grad_accum:
        raise ValueError(f"{n} samples do not split into {grad_accum} micro-batches")
    b = n // grad_accum
    longest = max(len(p["input_ids"]) for p in prepared)
    if longest > length:
        raise ValueError(f"a {longest}-token sample does not fit the padded length {length}")
    ids = np.zeros((n, length), np.int32)
    mask = np.zeros((n, length), np.int32)
    labels = np.full((n, length), IGNORE, np.int32)
    positions = np.ones((3, n, length), np.int32)
    any_media = any("media_embeds" in p for p in prepared)
    media = np.zeros((n, length, hidden), dtype) if any_media else None
    media_mask = np.zeros((n, length), bool) if any_media else None
    for i, p in enumerate(prepared):
        t = len(p["input_ids"])
        ids[i, :t], mask[i, :t], labels[i, :t] = p["input_ids"], 1, p["labels"]
        positions[:, i, :t] = p["positions"]
        if "media_embeds" in p:
            media[i, :t], media_mask[i, :t] = p["media_embeds"], p["media_mask"]
    out = {
        "input_ids": ids.reshape(grad_accum, b, length),
        "attention_mask": mask.reshape(grad_accum, b, length),
        "labels": labels.reshape(grad_accum, b, length),
        "positions": positions.reshape(3, grad_accum, b, length).transpose(1, 0, 2, 3),
    }
    if any_media:
        out["media_embeds"] = media.reshape(grad_accum, b, length, hidden)
        out["media_mask"] = media_mask.reshape(grad_accum, b, length)
    return out
