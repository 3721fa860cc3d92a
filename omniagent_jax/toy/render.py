"""Pictures, sound and the MP4 of a toy task (docs/toy.md §1), with PyAV: H.264 4:4:4 + mono AAC.

The background is a smooth grey whose tint drifts over minutes (low saturation, so only the squares
and dots are colourful); a faint seeded hiss sits under the tones. 4:4:4 chroma keeps the 3-pixel dots
their colour after compression.
"""

from __future__ import annotations

import pathlib
from fractions import Fraction

import av
import numpy as np

from omniagent_jax.toy.world import AUDIO_RATE, BEEP_ON, BEEP_PERIOD, CELLS, COLOURS, DOT_SIZE, FPS, FRAME_SIZE, PITCHES, Task

TONE_AMPLITUDE = 0.3
HISS_AMPLITUDE = 0.01
FADE_S = 0.01  # tone ramps: no clicks at the edges
GOP = 8  # keyframe every 4 s: seeks decode few frames
AUDIO_BITRATE = 24_000  # tones and beeps survive it; the default (~73 kb/s) makes the audio 95 % of the file


def background(task: Task, t: float) -> np.ndarray:
    """uint8 ``[H, W, 3]`` background at time ``t``: grey 95..135 with a +-12 tint drifting over minutes
    and a soft vertical gradient."""
    rng = np.random.default_rng(task.seed)
    periods = rng.uniform(90.0, 400.0, size=4)
    phases = rng.uniform(0.0, 2 * np.pi, size=4)
    grey = 115 + 20 * np.sin(2 * np.pi * t / periods[0] + phases[0])
    tint = 12 * np.sin(2 * np.pi * t / periods[1:] + phases[1:])
    rows = np.linspace(-8.0, 8.0, FRAME_SIZE)[:, None, None]
    img = grey + tint[None, None, :] + rows
    return np.clip(np.broadcast_to(img, (FRAME_SIZE, FRAME_SIZE, 3)), 0, 255).astype(np.uint8)


def frame(task: Task, index: int) -> np.ndarray:
    """Frame ``index`` (at ``index / FPS`` s): the background, each event's square while lit, its dot after."""
    t = index / FPS
    img = background(task, t).copy()
    for ev in task.events:
        if t < ev.start:
            continue
        side = ev.size if t < ev.end else DOT_SIZE
        r, c = CELLS[ev.cell]
        top, left = r - side // 2, c - side // 2
        img[top : top + side, left : left + side] = COLOURS[ev.colour]
    return img


def audio(task: Task) -> np.ndarray:
    """float32 mono ``AUDIO_RATE`` Hz track of the whole video: hiss, plus each event's tone or beeps."""
    n = int(round(task.duration * AUDIO_RATE))
    wave = HISS_AMPLITUDE * np.random.default_rng(task.seed + 1).standard_normal(n)
    for ev in task.events:
        bursts = [(ev.start, ev.end)] if not ev.beeps else [
            (ev.start + k * BEEP_PERIOD, ev.start + k * BEEP_PERIOD + BEEP_ON) for k in range(ev.beeps)]
        for s, e in bursts:
            i0, i1 = int(round(s * AUDIO_RATE)), int(round(e * AUDIO_RATE))
            t = np.arange(i1 - i0) / AUDIO_RATE
            ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / FADE_S)
            wave[i0:i1] += TONE_AMPLITUDE * ramp * np.sin(2 * np.pi * PITCHES[ev.pitch] * t)
    return wave.astype(np.float32)


def write_video(task: Task, path: str | pathlib.Path) -> pathlib.Path:
    """Encode ``task``'s video to ``path`` (MP4: H.264 yuv444p at ``FPS``, AAC mono 16 kHz)."""
    path = pathlib.Path(path)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=Fraction(FPS))
        vs.width = vs.height = FRAME_SIZE
        vs.pix_fmt = "yuv444p"
        vs.codec_context.time_base = Fraction(1, FPS)
        vs.codec_context.options = {"preset": "veryfast", "crf": "12", "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0"}
        vs.thread_count = 1  # one thread: the same bytes on every machine
        astream = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        astream.bit_rate = AUDIO_BITRATE
        for i in range(task.frame_count):
            vf = av.VideoFrame.from_ndarray(frame(task, i), format="rgb24")
            vf.pts = i
            vf.time_base = Fraction(1, FPS)
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        _write_audio(out, astream, audio(task))
    return path


def _write_audio(out: av.container.OutputContainer, stream: av.AudioStream, wave: np.ndarray) -> None:
    chunk = stream.codec_context.frame_size or 1024
    fmt = stream.codec_context.format.name if stream.codec_context.format else "fltp"
    for start in range(0, len(wave), chunk):
        part = np.ascontiguousarray(wave[start : start + chunk][None, :], dtype=np.float32)
        af = av.AudioFrame.from_ndarray(part, format=fmt, layout="mono")
        af.sample_rate = AUDIO_RATE
        af.pts = start
        af.time_base = Fraction(1, AUDIO_RATE)
        out.mux(stream.encode(af))
    out.mux(stream.encode(None))
