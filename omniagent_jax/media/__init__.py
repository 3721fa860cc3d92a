"""In-process media extraction with PyAV: probe, frames at timestamps, audio ranges at 16 kHz, clips.

Numpy + PyAV only (it runs in data-loader workers; it never imports JAX or model code). Every
request seeks to the keyframe before it and decodes forward only as far as needed; nothing is
written to disk; failures raise :class:`MediaError` with a ``kind`` and a message saying what and
where. Frames come back upright: the display-matrix rotation of phone videos is applied.
"""

from omniagent_jax.media.constants import (
    AUDIO_SAMPLE_RATE,
    CLIP_FPS,
    CLIP_FRAME_FACTOR,
    CLIP_MAX_FRAMES,
    CLIP_MIN_FRAMES,
    FRAME_END_MARGIN,
    FRAME_TIME_EPS,
    TIME_TOLERANCE,
)
from omniagent_jax.media.errors import ERROR_KINDS, MediaError, MediaErrorKind
from omniagent_jax.media.info import Clip, VideoInfo, clip_frame_indices, clip_num_frames
from omniagent_jax.media.reader import VideoReader, open_video, probe, read_audio, read_clip, read_frames

__all__ = [
    "AUDIO_SAMPLE_RATE",
    "CLIP_FPS",
    "CLIP_FRAME_FACTOR",
    "CLIP_MAX_FRAMES",
    "CLIP_MIN_FRAMES",
    "ERROR_KINDS",
    "FRAME_END_MARGIN",
    "FRAME_TIME_EPS",
    "TIME_TOLERANCE",
    "Clip",
    "MediaError",
    "MediaErrorKind",
    "VideoInfo",
    "VideoReader",
    "clip_frame_indices",
    "clip_num_frames",
    "open_video",
    "probe",
    "read_audio",
    "read_clip",
    "read_frames",
]
