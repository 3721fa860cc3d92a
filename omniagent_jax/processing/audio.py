"""16 kHz waveforms → Whisper log-mel features (docs/model.md §4.2), numpy only.

The reference (`WhisperFeatureExtractor`, `padding="max_length"`) zero-pads every audio to 300 s,
runs a centred STFT with reflect padding, and clamps each utterance at (its max over all 30000
frames) − 8. Here only the frames that can see the signal are computed: the frames past
`(n − 1 + 200) // 160` are all-zero windows whose log is −10 and can never set the max, so the
result is the same without materialising 300 s. Audio longer than 300 s is truncated, as there.

Precision: the spectrum is computed in float64, as the extractor's numpy path does (the two agree
to ~1e-7). Its torch path, used whenever torch is installed, runs the STFT in float32 and so differs
from both by up to a few 1e-5 in low-power bins; that is float32 FFT rounding, not a recipe change.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from omniagent_jax.processing import budgets

_LOG_FLOOR = 1e-10  # power clamp before log10
_DYNAMIC_RANGE = 8.0  # log10 units kept below the utterance max
_FRAMES_PER_BLOCK = 4096


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, np.float64)
    linear = 3.0 * hz / 200.0
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) * (27.0 / np.log(6.4))
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    linear = 200.0 * mel / 3.0
    log_part = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


def mel_filter_bank(
    n_freqs: int = budgets.N_FFT // 2 + 1,
    n_mels: int = budgets.N_MELS,
    fmin: float = budgets.MEL_FMIN,
    fmax: float = budgets.MEL_FMAX,
    sampling_rate: int = budgets.SAMPLING_RATE,
) -> np.ndarray:
    """Triangular mel filters `[n_freqs, n_mels]` (float64), slaney scale, slaney (area) norm.

    Filter i rises from mel point i to i+1 and falls to i+2 over `n_mels + 2` points evenly spaced
    in mel between fmin and fmax; each is scaled by 2 / (its width in Hz) so all have equal area.
    """
    fft_freqs = np.linspace(0.0, sampling_rate / 2, n_freqs)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    offsets = edges[None, :] - fft_freqs[:, None]  # [n_freqs, n_mels + 2]
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


@lru_cache(maxsize=1)
def _default_filters() -> np.ndarray:
    return mel_filter_bank()


@lru_cache(maxsize=1)
def _hann_window() -> np.ndarray:
    # Periodic Hann, as torch.hann_window(400) (the STFT window of the reference).
    n = budgets.N_FFT
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def mel_frame_count(num_samples: int) -> int:
    """Valid mel frames of an audio of `num_samples` samples: `ceil(n / 160)`, capped at 30000 (300 s)."""
    return min(-(-num_samples // budgets.HOP_LENGTH), budgets.MAX_MEL_FRAMES)


def _check_waveform(waveform: np.ndarray, index: int) -> np.ndarray:
    if not isinstance(waveform, np.ndarray):
        raise TypeError(f"audio {index}: expected a numpy float waveform, got {type(waveform).__name__}")
    if not np.issubdtype(waveform.dtype, np.floating):
        # Integer PCM would be off by a factor of 32768: make the caller convert it explicitly.
        raise TypeError(f"audio {index}: waveform must be float (−1..1 at 16 kHz), got {waveform.dtype}")
    if waveform.ndim != 1:
        raise ValueError(f"audio {index}: waveform must be mono 1-D, got shape {waveform.shape}")
    if waveform.size == 0:
        raise ValueError(f"audio {index}: waveform is empty")
    # The reference feeds float32 to the STFT.
    waveform = waveform.astype(np.float32)
    if not np.all(np.isfinite(waveform)):
        raise ValueError(f"audio {index}: waveform contains NaN or infinite samples")
    return waveform


def log_mel(waveform: np.ndarray) -> np.ndarray:
    """Log-mel features `[128, ceil(n/160)]` (float32) of one 16 kHz float waveform (≤ 300 s kept)."""
    frames, valid, _ = _log_mel(_check_waveform(waveform, 0))
    return frames[:, :valid]


def _log_mel(wave: np.ndarray) -> tuple[np.ndarray, int, float]:
    """Every signal-touching frame `[128, F]` (the valid ones, then the one or two past the end that
    still see the signal), the valid count `ceil(n/160)`, and the floor value `((max − 8) + 4) / 4`
    that the reference holds in all later frames."""
    n_fft, hop, full = budgets.N_FFT, budgets.HOP_LENGTH, budgets.MAX_AUDIO_SAMPLES
    half = n_fft // 2
    wave = wave[:full]
    n = wave.size
    # The reference's padded signal is `full` samples long; keep only what the signal-touching frames
    # read: `n` samples plus zeros (`n + n_fft` covers them), unless that reaches `full`.
    kept = min(full, n + n_fft)
    signal = np.zeros(kept, np.float64)
    signal[:n] = wave
    left = signal[1 : half + 1][::-1]  # reflect padding of the centred STFT
    right = signal[-half - 1 : -1][::-1] if kept == full else np.zeros(0)
    padded = np.concatenate([left, signal, right])
    # Frames whose window [160 f − 200, 160 f + 200) overlaps the signal; the reference drops frame 30000.
    n_frames = min((n - 1 + half) // hop + 1, budgets.MAX_MEL_FRAMES)
    mel = np.empty((n_frames, budgets.N_MELS), np.float64)
    # Blocks of frames bound the memory of the [frames, 400] window matrix for long audio.
    for first in range(0, n_frames, _FRAMES_PER_BLOCK):
        starts = np.arange(first, min(first + _FRAMES_PER_BLOCK, n_frames)) * hop
        frames = padded[starts[:, None] + np.arange(n_fft)[None, :]] * _hann_window()
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # [frames, 201]
        mel[first : first + len(starts)] = power @ _default_filters()
    log_spec = np.log10(np.maximum(mel, _LOG_FLOOR))
    floor = log_spec.max() - _DYNAMIC_RANGE
    log_spec = np.maximum(log_spec, floor)
    features = (log_spec.T + 4.0) / 4.0
    return features.astype(np.float32), mel_frame_count(n), float((floor + 4.0) / 4.0)


def extract_features(waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """16 kHz mono float waveforms → `(input_features [B, 128, Lmax] float32, feature_attention_mask
    [B, Lmax] int32)`, padded to the longest audio of the batch with a frame-level mask.

    Padded frames (masked out; the model drops them) hold what the reference's 300-s padding holds
    there: the one or two frames past the end that still see the signal, then the clamp floor. So
    `input_features` equals the reference's features cut to `Lmax` frames.
    """
    if len(waveforms) == 0:
        raise ValueError("extract_features needs at least one waveform")
    results = [_log_mel(_check_waveform(w, i)) for i, w in enumerate(waveforms)]
    longest = max(valid for _, valid, _ in results)
    features = np.empty((len(results), budgets.N_MELS, longest), np.float32)
    mask = np.zeros((len(results), longest), np.int32)
    for b, (feats, valid, floor) in enumerate(results):
        kept = min(feats.shape[1], longest)
        features[b, :, :kept] = feats[:, :kept]
        features[b, :, kept:] = floor
        mask[b, :valid] = 1
    return features, mask
