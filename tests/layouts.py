"""Token layouts for media tests, built with the reference's own chunk scanner (never ours), so
that tests of our TMRoPE / processor / thinker are checked against an independent construction.

A sample is a list of segments: ("text", n), ("audio", mel_len), ("image", grid_h, grid_w),
("video", t, grid_h, grid_w, second_per_grid[, mel_len]) — the mel length is used with audio-in-video.
"""

from __future__ import annotations

import numpy as np
import torch

from omniagent_jax.processing import tokens

TEXT = 9707  # an ordinary token standing for text


def audio_tokens(mel: int) -> int:
    # Written out here rather than imported so the tests stay independent of processing.layout.
    return ((mel - 1) // 2 + 1 - 2) // 2 + 1


def expand(segments, ref, use_audio_in_video):
    """Token ids for a list of segments, plus the grids/lengths the rope index needs."""
    ids, image_grids, video_grids, spgs, audio_lens = [], [], [], [], []
    for seg in segments:
        kind = seg[0]
        if kind == "text":
            ids += [TEXT] * seg[1]
        elif kind == "audio":
            audio_lens.append(seg[1])
            ids += [tokens.AUDIO_BOS_ID] + [tokens.AUDIO_ID] * audio_tokens(seg[1]) + [tokens.AUDIO_EOS_ID]
        elif kind == "image":
            _, h, w = seg
            image_grids.append([1, h, w])
            ids += [tokens.VISION_BOS_ID] + [tokens.IMAGE_ID] * (h * w // 4) + [tokens.VISION_EOS_ID]
        elif kind == "video" and not use_audio_in_video:
            _, t, h, w, spg = seg[:5]
            video_grids.append([t, h, w])
            spgs.append(spg)
            ids += [tokens.VISION_BOS_ID] + [tokens.VIDEO_ID] * (t * h * w // 4) + [tokens.VISION_EOS_ID]
        else:
            _, t, h, w, spg, mel = seg
            video_grids.append([t, h, w])
            spgs.append(spg)
            audio_lens.append(mel)
            per_t = h * w // 4
            t_index = (torch.arange(t) * torch.tensor(spg, dtype=torch.float32) * 25).long()
            video_values = t_index.repeat_interleave(per_t)
            audio_values = torch.arange(audio_tokens(mel))
            v_chunks = ref.model.get_chunked_index(video_values, 50, 0)
            a_chunks = ref.model.get_chunked_index(audio_values, 50, 0)
            ids += [tokens.VISION_BOS_ID, tokens.AUDIO_BOS_ID]
            for j in range(max(len(v_chunks), len(a_chunks))):
                if j < len(v_chunks):
                    ids += [tokens.VIDEO_ID] * (v_chunks[j][1] - v_chunks[j][0])
                if j < len(a_chunks):
                    ids += [tokens.AUDIO_ID] * (a_chunks[j][1] - a_chunks[j][0])
            ids += [tokens.AUDIO_EOS_ID, tokens.VISION_EOS_ID]
    return ids, image_grids, video_grids, spgs, audio_lens



def batch(samples, ref, use_audio_in_video):
    """Left-padded ids/mask for several samples plus the batch's grids, second_per_grid and mel lengths."""
    expanded = [expand(s, ref, use_audio_in_video) for s in samples]
    length = max(len(e[0]) for e in expanded)
    ids = np.full((len(samples), length), tokens.PAD_ID, np.int64)
    mask = np.zeros_like(ids)
    for b, e in enumerate(expanded):
        ids[b, length - len(e[0]) :] = e[0]
        mask[b, length - len(e[0]) :] = 1
    image = [g for e in expanded for g in e[1]] or None
    video = [g for e in expanded for g in e[2]] or None
    spg = [s for e in expanded for s in e[3]] or None
    audio = [a for e in expanded for a in e[4]] or None
    return ids, mask, image, video, spg, audio
