"""Token-layout arithmetic shared by the processor and the model (one copy): media token counts and
the audio-in-video chunk scanner (model.md §2.1, §2.5, §4.5). numpy/pure Python only."""

from __future__ import annotations

from collections.abc import Sequence


def audio_token_count(mel_len: int) -> int:
    """Audio tokens for `mel_len` valid mel frames: conv stride 2, then pooling by 2 (25 tokens/s)."""
    return ((mel_len - 1) // 2 + 1 - 2) // 2 + 1


def chunked_index(values: Sequence[int], tokens_per_chunk: int) -> list[tuple[int, int]]:
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
