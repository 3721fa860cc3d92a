"""The media one turn fetched, written as browser-playable files: JPEG frames, a WAV, an H.264 clip.

The demo shows next to each step card exactly what the agent received (the decoded payloads of the
turn's media message, not a re-cut), and the export ZIP carries these files and nothing else from
the video. Frames are scaled down for display (the model saw them at full size).
"""

from __future__ import annotations

import pathlib
from fractions import Fraction
from typing import Any

import numpy as np

from omniagent_jax.agent.messages import MEDIA_KEY, MediaRecord, Message
from omniagent_jax.media import AUDIO_SAMPLE_RATE
from omniagent_jax.processing.content_codec import wav_bytes

DISPLAY_WIDTH = 320  # frames and clips are shown at most this wide


def turn_payloads(messages: list[Message], record: MediaRecord) -> list[dict[str, Any]]:
    """The media parts of the message carrying `record` (the newest one; [] if consolidated away)."""
    for message in reversed(messages):
        if message.get(MEDIA_KEY) is record:
            return [p for p in message.get("content", []) if isinstance(p, dict) and p.get("type") in ("image", "audio", "video")]
    return []


def _small(frame: np.ndarray) -> np.ndarray:
    from PIL import Image

    h, w = frame.shape[:2]
    if w <= DISPLAY_WIDTH:
        return frame
    size = (DISPLAY_WIDTH, max(2, round(h * DISPLAY_WIDTH / w)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))


def write_jpeg(path: pathlib.Path, frame: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(_small(np.asarray(frame, np.uint8))).save(path, format="JPEG", quality=85)


def write_clip(path: pathlib.Path, frames: np.ndarray, fps: float, audio: np.ndarray | None) -> None:
    """H.264 (+ AAC when the clip has sound) at the clip's sampling rate; even sizes for yuv420p."""
    import av

    small = [_small(np.asarray(f, np.uint8)) for f in frames]
    h, w = (s - s % 2 for s in small[0].shape[:2])
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"crf": "26"}
        sound = None
        if audio is not None and len(audio):
            sound = out.add_stream("aac", rate=AUDIO_SAMPLE_RATE)
            sound.layout = "mono"
        for frame in small:
            for packet in video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:h, :w]), format="rgb24")):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            samples = np.asarray(audio, np.float32)
            for start in range(0, len(samples), 1024):
                chunk = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format="flt", layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = AUDIO_SAMPLE_RATE, start, Fraction(1, AUDIO_SAMPLE_RATE)
                for packet in sound.encode(chunk):
                    out.mux(packet)
            for packet in sound.encode():
                out.mux(packet)


def write_turn_media(folder: pathlib.Path, step: int, record: MediaRecord, parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Writes the parts under `folder` (created) as step-numbered files; their descriptions, paths relative
    to `folder`'s parent: ``{"kind": "image"|"audio"|"video", "file", "t"?}``."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Any]] = []
    images = [p["image"] for p in parts if p["type"] == "image"]
    for i, (frame, t) in enumerate(zip(images, record.timestamps)):
        name = f"step{step:02d}_frame{i:02d}.jpg"
        write_jpeg(folder / name, frame)
        files.append({"kind": "image", "file": f"{folder.name}/{name}", "t": float(t)})
    for p in parts:
        if p["type"] == "audio":
            name = f"step{step:02d}_audio.wav"
            (folder / name).write_bytes(wav_bytes(p["audio"]))
            files.append({"kind": "audio", "file": f"{folder.name}/{name}"})
        elif p["type"] == "video":
            clip = p["video"]
            name = f"step{step:02d}_clip.mp4"
            write_clip(folder / name, clip.frames, clip.fps, clip.audio)
            files.append({"kind": "video", "file": f"{folder.name}/{name}"})
    return files
