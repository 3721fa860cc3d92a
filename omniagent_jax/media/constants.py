"""Media constants: the one place these numbers live (docs/protocol.md §8, docs/model.md §4.4)."""

from __future__ import annotations

# Audio handed to the model: mono float32 at this rate (the Whisper extractor's rate).
AUDIO_SAMPLE_RATE = 16_000
# Clips are sampled at this many frames per second (qwen-omni-utils' FPS).
CLIP_FPS = 2.0
# Clip frame counts are multiples of this (the temporal patch size).
CLIP_FRAME_FACTOR = 2
# The reference's own copy of qwen-vl-utils uses 2 (upstream qwen-omni-utils 0.0.9 says 4).
CLIP_MIN_FRAMES = 2
CLIP_MAX_FRAMES = 768
# get_frames times are clamped to [0, duration - FRAME_END_MARGIN], as the reference does before
# it runs `ffmpeg -ss t`.
FRAME_END_MARGIN = 0.2
# Requested times this little outside [0, duration] are clamped rather than rejected.
TIME_TOLERANCE = 1e-3
# A frame at time f "is at or after" t when f >= t - FRAME_TIME_EPS: ffmpeg parses `-ss` to
# microseconds, and this keeps linspace round-off (2.2 -> 2.1999999999999997) from skipping a frame.
FRAME_TIME_EPS = 1e-6
