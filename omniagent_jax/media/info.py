"""What the media layer returns: `VideoInfo`, `Clip`, and the clip frame-count rule (pure numpy)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from omniagent_jax.media.constants import CLIP_FPS, CLIP_FRAME_FACTOR, CLIP_MAX_FRAMES, CLIP_MIN_FRAMES


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a file.

    ``duration`` is the container's (seconds from the first timestamp of the file), else the
    streams' end, else ``num_frames / fps``. ``fps`` is the video stream's average rate (0.0 for an
    audio-only file) and ``num_frames`` its frame count (the index's count when the container has
    one, else ``round(duration · fps)``). ``width`` × ``height`` are those of the frames
    `read_frames` returns, i.e. **after** rotation: a portrait phone video stored as 1920×1080 with
    ``rotation`` 90 reports 1080×1920. ``rotation`` is the clockwise rotation (0, 90, 180 or 270)
    the display matrix asks for, which the readers apply (the legacy ``rotate`` tag's meaning;
    mirror flips in the matrix, which phones do not write, are not applied).
    """

    path: str
    duration: float
    fps: float
    num_frames: int
    has_audio: bool
    width: int
    height: int
    rotation: int
    video_codec: str | None
    audio_codec: str | None
    audio_sample_rate: int | None

    @property
    def has_video(self) -> bool:
        return self.video_codec is not None


# eq=False: field-wise == on numpy arrays is ambiguous; repr shows shapes, not megabytes of pixels.
@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Clip:
    """A clip as the model sees it: frames sampled at 2 fps plus the clip's audio.

    ``frames`` are uint8 ``[N, H, W, 3]`` at source resolution (upright); ``timestamps`` the
    presentation times (s) of those source frames; ``fps`` the nominal sampling rate
    (:data:`CLIP_FPS`, which the processor assumes); ``audio`` float32 mono 16 kHz over the clip's
    range, or None when the source has no audio stream.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    fps: float
    audio: np.ndarray | None

    def __repr__(self) -> str:
        span = f"{self.timestamps[0]:.2f}..{self.timestamps[-1]:.2f}s" if len(self.timestamps) else "empty"
        audio = "None" if self.audio is None else f"{self.audio.shape[0]} samples"
        return f"Clip(frames={tuple(self.frames.shape)} {self.frames.dtype}, timestamps={span}, fps={self.fps}, audio={audio})"


def _floor_by(x: float, factor: int) -> int:
    return int(math.floor(x / factor) * factor)


def _ceil_by(x: float, factor: int) -> int:
    return int(math.ceil(x / factor) * factor)


def clip_num_frames(total_frames: int, source_fps: float) -> int:
    """How many frames a clip of ``total_frames`` source frames at ``source_fps`` is sampled to.

    qwen-vl-utils' ``smart_nframes`` (docs/model.md §4.4) with the reference's ``min_frames`` 2:
    ``floor2(min(max(total / fps · 2, ceil2(2)), floor2(min(768, total)), total))``. The reference
    raises below 2 frames (a range holding a single source frame); we return 2 there, which
    repeats that frame, since the processor pads a clip to an even count with its last frame anyway.
    """
    if total_frames < 1:
        raise ValueError(f"a clip needs at least one source frame, got {total_frames}")
    if not source_fps > 0:
        raise ValueError(f"source fps must be positive, got {source_fps}")
    min_frames = _ceil_by(CLIP_MIN_FRAMES, CLIP_FRAME_FACTOR)
    max_frames = _floor_by(min(CLIP_MAX_FRAMES, total_frames), CLIP_FRAME_FACTOR)
    n = total_frames / source_fps * CLIP_FPS
    n = min(min(max(n, min_frames), max_frames), total_frames)
    return max(_floor_by(n, CLIP_FRAME_FACTOR), CLIP_FRAME_FACTOR)


def clip_frame_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """Indices of the sampled frames among a clip's source frames: ``linspace(0, total-1, n).round()``
    (round half to even, like torch's ``round``), as qwen-vl-utils samples a decoded clip."""
    return np.linspace(0, total_frames - 1, num_frames).round().astype(np.int64)
