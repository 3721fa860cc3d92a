"""Reading decoded toy media (docs/toy.md §2): what is in a frame, what is in a piece of audio.

The expert policy sees the world only through these functions applied to the media the environment
returned; the split checker applies them to frames and audio decoded from the written file. Nothing
here knows a task.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from omniagent_jax.toy.world import AUDIO_RATE, CELLS, COLOURS, DOT_SIZE, PITCHES, SIZES

SATURATION = 80  # max-min channel spread above which a pixel is "coloured" (the background stays < 45)
MIN_PIXELS = 4  # fewer coloured pixels in a cell is noise
ENVELOPE_S = 0.01  # audio envelope frame
SOUND_RMS = 0.06  # envelope RMS above which a frame is "sounding" (tones ~0.21, hiss ~0.01)
MIN_GAP_S = 0.05  # silences shorter than this do not split a sound


@dataclasses.dataclass(frozen=True)
class Seen:
    """Something colourful in one cell: a lit square of ``size`` px, or the remnant dot (``size`` 0)."""

    colour: str
    cell: int
    size: int

    @property
    def lit(self) -> bool:
        return self.size > 0


@dataclasses.dataclass(frozen=True)
class Sound:
    """A run of tone in an audio piece: ``start``/``end`` seconds from the piece's start, its pitch name."""

    start: float
    end: float
    pitch: str


def look(frame: np.ndarray) -> list[Seen]:
    """Coloured things in a decoded ``[H, W, 3]`` uint8 frame, one per cell at most, in cell order."""
    img = np.asarray(frame, dtype=np.int16)
    spread = img.max(axis=-1) - img.min(axis=-1)
    h, w = img.shape[:2]
    out = []
    for cell, (r, c) in enumerate(CELLS):
        rows = slice(max(0, (r - 14) * h // 56), (r + 14) * h // 56)
        cols = slice(max(0, (c - 14) * w // 56), (c + 14) * w // 56)
        mask = spread[rows, cols] > SATURATION
        count = int(mask.sum())
        if count < MIN_PIXELS:
            continue
        mean = img[rows, cols][mask].mean(axis=0)
        colour = min(COLOURS, key=lambda name: float(np.sum((np.array(COLOURS[name]) - mean) ** 2)))
        side = float(np.sqrt(count)) * 56 / max(h, w)
        size = 0 if side < (DOT_SIZE + SIZES[0]) / 2 else min(SIZES, key=lambda z: abs(z - side))
        out.append(Seen(colour, cell, size))
    return out


def listen(wave: np.ndarray, rate: int = AUDIO_RATE) -> list[Sound]:
    """The tone runs in a mono float wave, in time order, with their pitch (nearest of the world's pitches)."""
    wave = np.asarray(wave, dtype=np.float64)
    hop = max(1, int(ENVELOPE_S * rate))
    frames = len(wave) // hop
    if frames == 0:
        return []
    rms = np.sqrt(np.mean(wave[: frames * hop].reshape(frames, hop) ** 2, axis=1))
    on = rms > SOUND_RMS
    runs: list[list[int]] = []
    for i in np.flatnonzero(on):
        if runs and i - runs[-1][1] <= int(MIN_GAP_S / ENVELOPE_S):
            runs[-1][1] = i
        else:
            runs.append([i, i])
    sounds = []
    for a, b in runs:
        piece = wave[a * hop : (b + 1) * hop]
        spectrum = np.abs(np.fft.rfft(piece * np.hanning(len(piece))))
        freq = float(np.fft.rfftfreq(len(piece), 1.0 / rate)[int(np.argmax(spectrum))])
        pitch = min(PITCHES, key=lambda name: abs(np.log(PITCHES[name] / max(freq, 1.0))))
        sounds.append(Sound(a * ENVELOPE_S, (b + 1) * ENVELOPE_S, pitch))
    return sounds
