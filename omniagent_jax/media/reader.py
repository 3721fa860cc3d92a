"""`VideoReader` (one open container per episode) and the one-shot `probe` / `read_*` functions."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from omniagent_jax.media._audio import read_audio_range
from omniagent_jax.media._open import Opened, open_media
from omniagent_jax.media._video import FrameDecoder
from omniagent_jax.media.constants import CLIP_FPS, FRAME_END_MARGIN, TIME_TOLERANCE
from omniagent_jax.media.errors import MediaError
from omniagent_jax.media.info import Clip, VideoInfo, clip_frame_indices, clip_num_frames

PathLike = str | os.PathLike[str]


class VideoReader:
    """An open video: probe once, then serve frames, audio and clips from the same container.

    Every request seeks, so requests may come in any order; nothing decoded is kept between
    requests. Use as a context manager or call :meth:`close`. Not thread-safe (one per worker).
    """

    def __init__(self, path: PathLike) -> None:
        self._opened: Opened | None = open_media(path)
        self.info: VideoInfo = self._opened.info
        self.path: str = self._opened.path
        self._decoder: FrameDecoder | None = None

    # ------------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        if self._opened is not None:
            self._opened.container.close()
            self._opened = None
            self._decoder = None

    @property
    def closed(self) -> bool:
        return self._opened is None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"VideoReader({self.path!r}, {self.info.duration:.2f}s, {self.info.fps:.2f} fps, {state})"

    # ------------------------------------------------------------------------------ requests
    def frames(self, timestamps: Sequence[float] | np.ndarray) -> np.ndarray:
        """uint8 ``[N, H, W, 3]``: for each time (s), the first frame whose presentation time is at
        or after it, in the order asked (``ffmpeg -ss t``). Times within ``[0, duration]`` are
        clamped to ``[0, duration - 0.2]`` as the reference does; times outside raise
        ``MediaError("out_of_range")``. Frames are upright (rotation applied) and RGB."""
        times = np.asarray(timestamps, dtype=np.float64)
        if times.ndim != 1:
            raise ValueError(f"timestamps must be a 1-D sequence, got shape {times.shape}")
        decoder = self._frame_decoder()
        if times.size == 0:
            return np.zeros((0, self.info.height, self.info.width, 3), np.uint8)
        for t in times:
            self._check_time(float(t), "frame time")
        clamped = np.clip(times, 0.0, max(self.info.duration - FRAME_END_MARGIN, 0.0))
        unique, inverse = np.unique(clamped, return_inverse=True)
        pixels = np.stack([p for _, p in decoder.frames_at(unique.tolist())])
        return pixels[inverse.reshape(-1)]

    def audio(self, start: float, end: float) -> np.ndarray:
        """float32 mono 16 kHz samples ``round(start·16000)`` .. ``round(end·16000)`` (end excluded)."""
        opened = self._require_open()
        if opened.audio is None:
            raise MediaError(self.path, "no_audio", "no audio stream")
        start, end = self._check_range(start, end, "audio range")
        return read_audio_range(opened, start, end)

    def clip(self, start: float, end: float) -> Clip:
        """The range ``[start, end)`` as the model sees a clip: frames sampled at 2 fps by the
        reference's frame-count rule (:func:`clip_num_frames`) among the source frames whose
        presentation time falls in the range, at source resolution, plus the range's audio."""
        decoder = self._frame_decoder()
        start, end = self._check_range(start, end, "clip range")
        source_times = decoder.frame_times(start, end)
        if source_times.size == 0:
            # A range shorter than one frame interval: the frame on screen at `start`, twice.
            (t, pixels), = decoder.frames_at([start])
            timestamps, frames = np.array([t, t]), np.stack([pixels, pixels])
        else:
            n = clip_num_frames(len(source_times), self.info.fps)
            wanted = source_times[clip_frame_indices(len(source_times), n)]
            unique, inverse = np.unique(wanted, return_inverse=True)
            chosen = decoder.frames_at(unique.tolist())
            timestamps = np.array([t for t, _ in chosen], np.float64)[inverse]
            frames = np.stack([p for _, p in chosen])[inverse]
        audio = self.audio(start, end) if self.info.has_audio else None
        return Clip(frames=frames, timestamps=timestamps.astype(np.float64), fps=CLIP_FPS, audio=audio)

    # ------------------------------------------------------------------------------ helpers
    def _require_open(self) -> Opened:
        if self._opened is None:
            raise ValueError(f"VideoReader({self.path!r}) is closed")
        return self._opened

    def _frame_decoder(self) -> FrameDecoder:
        opened = self._require_open()
        if self._decoder is None:
            if opened.video is None:
                raise MediaError(self.path, "no_video", f"no video stream (an {self.info.audio_codec} audio-only file)")
            self._decoder = FrameDecoder(opened)
        return self._decoder

    def _check_time(self, t: float, what: str) -> None:
        if not math.isfinite(t) or t < -TIME_TOLERANCE or t > self.info.duration + TIME_TOLERANCE:
            raise MediaError(
                self.path, "out_of_range", f"{what} {t:.3f}s is outside the media [0, {self.info.duration:.3f}]s"
            )

    def _check_range(self, start: float, end: float, what: str) -> tuple[float, float]:
        start, end = float(start), float(end)
        self._check_time(start, f"{what} start")
        self._check_time(end, f"{what} end")
        start, end = max(start, 0.0), min(end, self.info.duration)
        if not end > start:
            raise MediaError(self.path, "out_of_range", f"{what} [{start:.3f}, {end:.3f}]s is empty or reversed")
        return start, end


def open_video(path: PathLike) -> VideoReader:
    """Open ``path`` for the requests of one episode (probes it; raises `MediaError`)."""
    return VideoReader(path)


def probe(path: PathLike) -> VideoInfo:
    """Duration, fps, frame count, audio presence, size, rotation and codecs of ``path``."""
    with VideoReader(path) as reader:
        return reader.info


def read_frames(path: PathLike, timestamps: Sequence[float] | np.ndarray) -> np.ndarray:
    """One-shot :meth:`VideoReader.frames`."""
    with VideoReader(path) as reader:
        return reader.frames(timestamps)


def read_audio(path: PathLike, start: float, end: float) -> np.ndarray:
    """One-shot :meth:`VideoReader.audio`."""
    with VideoReader(path) as reader:
        return reader.audio(start, end)


def read_clip(path: PathLike, start: float, end: float) -> Clip:
    """One-shot :meth:`VideoReader.clip`."""
    with VideoReader(path) as reader:
        return reader.clip(start, end)
