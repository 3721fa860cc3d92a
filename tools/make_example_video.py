"""Writes `assets/example.mp4`: the short video `make run` asks about (H.264 + AAC, deterministic).

12 s at 320×240, 10 fps. A square moves left to right; its colour is red for 0–4 s, green for
4–8 s and blue for 8–12 s; a 440 Hz tone plays during 2–3 s and an 880 Hz tone during 9–10 s. The
built-in question ("What colour is the square when the high tone plays?", answer C = blue) needs
both looking and listening.

    python tools/make_example_video.py [--out assets/example.mp4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from fractions import Fraction

import av
import numpy as np

DURATION_S, FPS, WIDTH, HEIGHT, SAMPLE_RATE = 12, 10, 320, 240, 16_000
COLOURS = [(220, 40, 40), (40, 200, 60), (40, 80, 230)]  # red, green, blue: 4 s each
TONES = [(2.0, 3.0, 440.0), (9.0, 10.0, 880.0)]

QUESTION = {
    "question": "What colour is the square when the high-pitched tone plays?",
    "question_type": "MCQ",
    "options": ["A. Red", "B. Green", "C. Blue", "D. Yellow"],
    "answer": "C",
}


def frame(i: int) -> np.ndarray:
    t = i / FPS
    img = np.full((HEIGHT, WIDTH, 3), 235, np.uint8)
    img[200:, :] = 120  # a floor, so frames are not flat
    x = int((WIDTH - 60) * t / DURATION_S)
    img[90:150, x : x + 60] = COLOURS[min(int(t // 4), 2)]
    return img


def audio() -> np.ndarray:
    t = np.arange(DURATION_S * SAMPLE_RATE) / SAMPLE_RATE
    wave = np.zeros_like(t)
    for start, end, freq in TONES:
        on = (t >= start) & (t < end)
        wave[on] = 0.4 * np.sin(2 * np.pi * freq * t[on])
    return wave.astype(np.float32)


def write(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        with av.open(tmp, "w") as out:
            video = out.add_stream("libx264", rate=FPS)
            video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            video.options = {"crf": "28", "g": "20"}
            sound = out.add_stream("aac", rate=SAMPLE_RATE)
            sound.layout = "mono"
            for i in range(DURATION_S * FPS):
                for packet in video.encode(av.VideoFrame.from_ndarray(frame(i), format="rgb24")):
                    out.mux(packet)
            for packet in video.encode():
                out.mux(packet)
            samples = audio()
            step = 1024
            for start in range(0, len(samples), step):
                chunk = av.AudioFrame.from_ndarray(samples[None, start : start + step], format="flt", layout="mono")
                chunk.sample_rate = SAMPLE_RATE
                chunk.pts = start
                chunk.time_base = Fraction(1, SAMPLE_RATE)
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "assets", "example.mp4"))
    args = parser.parse_args()
    write(args.out)
    print(f"wrote {os.path.abspath(args.out)} ({os.path.getsize(args.out) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
