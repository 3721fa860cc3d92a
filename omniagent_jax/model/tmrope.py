"""TMRoPE: the thinker's time-aligned 3-D position ids (`get_rope_index`, docs/model.md §2.1).

Host-side numpy over concrete token ids. The walk replicates the reference literally, including its
quirks: every segment starts at (max of the *previous segment*) + 1, both bos (and both eos)
tokens of an audio-in-video block share a position, video temporal ids are
`floor(t · second_per_grid · 25)`, and audio/video are interleaved by the single-step chunk scanner
that the processor uses too (`processing.layout.chunked_index`: one copy).
"""

from __future__ import annotations

import numpy as np

from omniagent_jax.model.config import ThinkerConfig
from omniagent_jax.processing.layout import audio_token_count, chunked_index


def text_rope_index(attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Text-only (or audio-only) input: `cumsum(mask) − 1` on all axes, pads at 1; deltas `max + 1 − len`."""
    mask = np.asarray(attention_mask).astype(np.int64)
    pos = np.where(mask == 1, np.cumsum(mask, axis=-1) - 1, 1)
    deltas = pos.max(axis=-1) + 1 - mask.sum(axis=-1)
    return np.broadcast_to(pos[None], (3, *pos.shape)).copy(), deltas


def _vision_positions(start: int, t_index: np.ndarray, grid_h: int, grid_w: int, merge: int) -> np.ndarray:
    """`[3, t·h·w]` positions of one image/video's merged tokens in raster order (t, row, col)."""
    gh, gw = grid_h // merge, grid_w // merge
    t = np.repeat(t_index, gh * gw)
    h = np.tile(np.repeat(np.arange(gh), gw), len(t_index))
    w = np.tile(np.arange(gw), len(t_index) * gh)
    return np.stack([t, h, w]) + start


def _run(n: int, start: int) -> np.ndarray:
    return np.broadcast_to(np.arange(n)[None] + start, (3, n))


def get_rope_index(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    cfg: ThinkerConfig,
    *,
    image_grid_thw: np.ndarray | None = None,
    video_grid_thw: np.ndarray | None = None,
    video_second_per_grid: np.ndarray | None = None,
    audio_seqlens: np.ndarray | None = None,
    use_audio_in_video: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions `[3, B, S]` (int64; padded slots hold 1) and per-sample rope deltas `[B]`.

    `audio_seqlens` are the mel lengths of every audio of the batch in order — with
    `use_audio_in_video` this includes each video's own audio where it appears in the conversation.
    """
    input_ids = np.asarray(input_ids)
    if attention_mask is None:
        attention_mask = np.ones_like(input_ids)
    attention_mask = np.asarray(attention_mask)
    if image_grid_thw is None and video_grid_thw is None:
        return text_rope_index(attention_mask)

    merge = cfg.vision.spatial_merge_size
    per_second = cfg.position_id_per_seconds
    chunk_units = int(per_second * cfg.seconds_per_chunk)
    image_grid = np.asarray(image_grid_thw if image_grid_thw is not None else np.zeros((0, 3)), np.int64).reshape(-1, 3)
    video_grid = np.asarray(video_grid_thw if video_grid_thw is not None else np.zeros((0, 3)), np.int64).reshape(-1, 3)
    if video_second_per_grid is None:
        video_second_per_grid = np.ones(len(video_grid))
    second_per_grid = np.asarray(video_second_per_grid, np.float32).reshape(-1)
    audio_lens = np.asarray(audio_seqlens if audio_seqlens is not None else [], np.int64).reshape(-1)

    positions = np.ones((3, *input_ids.shape), np.int64)
    deltas = np.zeros(input_ids.shape[0], np.int64)
    image_idx = video_idx = audio_idx = 0

    def temporal_index(video: int) -> np.ndarray:
        # The reference multiplies in float32 and truncates with .long().
        steps = np.arange(video_grid[video, 0], dtype=np.float32) * second_per_grid[video] * np.float32(per_second)
        return steps.astype(np.int64)

    for b in range(input_ids.shape[0]):
        tokens = input_ids[b][attention_mask[b] == 1].tolist()
        segments: list[np.ndarray] = []

        def next_start() -> int:
            return int(segments[-1].max()) + 1 if segments else 0

        def add_text(n: int) -> None:
            if n:
                segments.append(_run(n, next_start()))

        st = 0
        while True:
            # Each media block begins at the first placeholder after `st`; None when none is left.
            candidates = {
                kind: _index(tokens, tid, st)
                for kind, tid in (("audio", cfg.audio_token_id), ("image", cfg.image_token_id), ("video", cfg.video_token_id))
            }
            found = {k: v for k, v in candidates.items() if v is not None}
            if not found:
                break
            # Ties cannot happen (distinct tokens); order audio, image, video as the reference checks them.
            kind = min(found, key=lambda k: (found[k], ("audio", "image", "video").index(k)))
            first = found[kind]
            if kind == "audio":
                add_text(first - st - 1)
                segments.append(_run(1, next_start()))
                n_audio = audio_token_count(int(audio_lens[audio_idx]))
                segments.append(_run(n_audio, next_start()))
                segments.append(_run(1, next_start()))
                st = first + n_audio + 1
                audio_idx += 1
            elif kind == "image":
                add_text(first - st - 1)
                segments.append(_run(1, next_start()))
                t, h, w = image_grid[image_idx]
                segments.append(_vision_positions(next_start(), np.arange(t) * per_second, h, w, merge))
                segments.append(_run(1, next_start()))
                st = first + int(t * h * w) // merge**2 + 1
                image_idx += 1
            elif not use_audio_in_video:
                add_text(first - st - 1)
                segments.append(_run(1, next_start()))
                t, h, w = video_grid[video_idx]
                segments.append(_vision_positions(next_start(), temporal_index(video_idx), h, w, merge))
                segments.append(_run(1, next_start()))
                st = first + int(t * h * w) // merge**2 + 1
                video_idx += 1
            else:
                add_text(first - st - 2)  # <|vision_bos|><|audio_bos|> precede the first VIDEO token
                bos = _run(1, next_start())
                segments.extend([bos, bos])
                start = next_start()
                n_audio = audio_token_count(int(audio_lens[audio_idx]))
                audio_pos = _run(n_audio, start)
                t, h, w = video_grid[video_idx]
                video_pos = _vision_positions(start, temporal_index(video_idx), h, w, merge)
                video_chunks = chunked_index(video_pos[0] - start, chunk_units)
                audio_chunks = chunked_index(audio_pos[0] - start, chunk_units)
                for j in range(max(len(video_chunks), len(audio_chunks))):
                    if j < len(video_chunks):
                        segments.append(video_pos[:, video_chunks[j][0] : video_chunks[j][1]])
                    if j < len(audio_chunks):
                        segments.append(audio_pos[:, audio_chunks[j][0] : audio_chunks[j][1]])
                eos = _run(1, next_start())
                segments.extend([eos, eos])
                st = first + n_audio + int(t * h * w) // merge**2 + 2
                audio_idx += 1
                video_idx += 1
        if st < len(tokens):
            add_text(len(tokens) - st)
        sample = np.concatenate(segments, axis=1) if segments else np.zeros((3, 0), np.int64)
        positions[:, b, attention_mask[b] == 1] = sample
        deltas[b] = sample.max() + 1 - len(tokens) if sample.size else 0
    return positions, deltas


def _index(tokens: list[int], token: int, start: int) -> int | None:
    try:
        return tokens.index(token, start)
    except ValueError:
        return None
