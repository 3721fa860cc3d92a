"""Pixel budgets and feature-extractor settings: the one place these numbers live.

Images and clip frames are resized by Qwen's `smart_resize` to a multiple of `FACTOR` pixels per
side, with an area between a min and a max (docs/protocol.md §8, docs/model.md §4.3/§4.4). Audio settings are
the Whisper extractor's of the released `preprocessor_config.json` (docs/model.md §4.2).
"""

from __future__ import annotations

from omniagent_jax.media.constants import AUDIO_SAMPLE_RATE, CLIP_FPS

# --- vision tower geometry (preprocessor_config: patch 14, merge 2, temporal 2) ---
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: one merged token covers 28×28 pixels
MAX_ASPECT_RATIO = 200
# OpenAI-CLIP normalisation of the Qwen2-VL image/video processors.
IMAGE_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# --- still images: the get_frames budget the OmniAgent checkpoints saw (docs/protocol.md §8) ---
IMAGE_MIN_PIXELS = 4 * FACTOR * FACTOR  # 3,136
IMAGE_MAX_PIXELS = 1024 * FACTOR * FACTOR  # 802,816

# The HF image processor's own budget (released preprocessor_config.json). It runs after the
# get_frames resize above and is a no-op for it, since 4·28² ≥ 3136 and 1024·28² ≤ 16384·28².
PROCESSOR_IMAGE_MIN_PIXELS = 3136
PROCESSOR_IMAGE_MAX_PIXELS = 12_845_056

# --- clips (qwen-omni-utils fetch_video, docs/model.md §4.4) ---
VIDEO_MIN_PIXELS = 128 * FACTOR * FACTOR  # 100,352
VIDEO_MAX_PIXELS = 768 * FACTOR * FACTOR  # 602,112
MODEL_SEQ_LEN = 128_000  # qwen-omni-utils' MODEL_SEQ_LEN default
VIDEO_TOTAL_PIXELS = int(MODEL_SEQ_LEN * FACTOR * FACTOR * 0.9)  # 90,316,800
# The processor assumes this frame rate for every clip (docs/model.md §4.1): second_per_grid = 2 / 2.0 = 1.0.
VIDEO_FPS = CLIP_FPS


def video_frame_max_pixels(num_frames: int) -> float:
    """Per-frame max area of a clip of `num_frames` frames: `max(min(768·28², total/n·2), 1.05·min)`.

    A float, as in qwen-omni-utils; only more than 300 frames make it smaller than 768·28².
    """
    if num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_frames}")
    return max(min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / num_frames * TEMPORAL_PATCH_SIZE), VIDEO_MIN_PIXELS * 1.05)


# --- audio: WhisperFeatureExtractor of the release (feature_size 128, 300-s chunk) ---
SAMPLING_RATE = AUDIO_SAMPLE_RATE
N_MELS = 128
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH_S = 300  # longer audio is truncated to this many seconds
MAX_AUDIO_SAMPLES = CHUNK_LENGTH_S * SAMPLING_RATE  # 4,800,000
MAX_MEL_FRAMES = MAX_AUDIO_SAMPLES // HOP_LENGTH  # 30,000
MEL_FMIN = 0.0
MEL_FMAX = 8000.0

# --- TMRoPE time grid used by the audio-in-video interleave (docs/model.md §2.1) ---
POSITION_ID_PER_SECONDS = 25
SECONDS_PER_CHUNK = 2.0
