"""Token-layout arithmetic shared by the processor and the model (one copy): media token counts and
the audio-in-video chunk scanner (docs/model.md §2.1, §2.5, §4.5). numpy/pure Python only."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omniagent_jax.processing import budgets


def audio_token_count(mel_len: int) -> int:
    """Audio tokens for `mel_len` valid mel frames: conv stride 2, then pooling by 2 (25 tokens/s)."""
    return ((mel_len - 1) // 2 + 1 - 2) // 2 + 1


def vision_token_count(grid_thw: Sequence[int] | np.ndarray, merge_size: int = budgets.MERGE_SIZE) -> int:
    """LLM tokens of one image or video with grid `(t, h, w)` in 14-px patches: `t·h·w / merge²`."""
    t, h, w = (int(v) for v in np.asarray(grid_thw).reshape(3))
    return t * h * w // (merge_size * merge_size)


def chunked_index(values: Sequence[float] | np.ndarray, tokens_per_chunk: int) -> list[tuple[int, int]]:
    """Splits increasing `values` into `(start, end)` slices, one per chunk of `tokens_per_chunk`.

    A literal single-step scan: the chunk counter advances by ONE each time a value reaches the next
    boundary, so values that jump more than one chunk (video at fps < 1) fall behind, as in the reference.
    """
    out, start, chunk = [], 0, 1
    for i, value in enumerate(values):
        if value >= chunk * tokens_per_chunk:
            out.append((start, i))
            start, chunk = i, chunk + 1
    out.append((start, len(values)))
    return out


def video_temporal_positions(
    grid_thw: Sequence[int] | np.ndarray,
    second_per_grid: float,
    merge_size: int = budgets.MERGE_SIZE,
    position_id_per_seconds: float = budgets.POSITION_ID_PER_SECONDS,
) -> np.ndarray:
    """Temporal position offset of every video token in raster order: `t · second_per_grid · 25` per
    temporal patch t, repeated for its `h·w/merge²` tokens (float64, untruncated, as the reference
    processor computes it; the integer chunk boundaries make truncation irrelevant to the split)."""
    t, h, w = (int(v) for v in np.asarray(grid_thw).reshape(3))
    per_t = (h // merge_size) * (w // merge_size)
    return np.repeat(np.arange(t) * float(second_per_grid) * position_id_per_seconds, per_t)


def audio_in_video_chunks(
    grid_thw: Sequence[int] | np.ndarray,
    second_per_grid: float,
    num_audio_tokens: int,
    merge_size: int = budgets.MERGE_SIZE,
    position_id_per_seconds: float = budgets.POSITION_ID_PER_SECONDS,
    seconds_per_chunk: float = budgets.SECONDS_PER_CHUNK,
) -> list[tuple[int, int]]:
    """The interleave of a video with its own audio: `(n_video, n_audio)` tokens per chunk, in order.

    Video and audio tokens are split independently by `chunked_index` on their temporal positions
    (video: `video_temporal_positions`; audio token k sits at k) with chunks of
    `position_id_per_seconds · seconds_per_chunk` (50) units; chunk j is the video slice j followed
    by the audio slice j, and when one modality runs out the remaining chunks hold only the other.
    """
    tokens_per_chunk = int(position_id_per_seconds * seconds_per_chunk)
    video = chunked_index(
        video_temporal_positions(grid_thw, second_per_grid, merge_size, position_id_per_seconds), tokens_per_chunk
    )
    audio = chunked_index(np.arange(num_audio_tokens), tokens_per_chunk)
    chunks = []
    for j in range(max(len(video), len(audio))):
        n_video = video[j][1] - video[j][0] if j < len(video) else 0
        n_audio = audio[j][1] - audio[j][0] if j < len(audio) else 0
        chunks.append((n_video, n_audio))
    return chunks
