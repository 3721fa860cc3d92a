"""Test helpers for the agent: a fake media backend, turn builders, reference-trajectory loading,
a JSON HTTP handler base for stub endpoints."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np

from omniagent_jax.media.constants import AUDIO_SAMPLE_RATE as AUDIO_RATE
from omniagent_jax.media.constants import CLIP_FPS


class JsonHandler(BaseHTTPRequestHandler):
    """Base of the stub HTTP endpoints: JSON replies, no request logging."""

    def send_json(self, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


FAKE_FRAME_SIZE = 4  # fake frames are 4x4: the agent never looks at pixels


class FakeMediaError(Exception):
    """Stands in for ``omniagent_jax.media.MediaError`` in fake-backend tests."""

    def __init__(self, message: str, *, path: str = "", kind: str = "decode") -> None:
        super().__init__(message)
        self.path, self.kind = path, kind


@dataclasses.dataclass(frozen=True)
class FakeVideoInfo:
    path: str
    duration: float
    fps: float
    num_frames: int
    has_audio: bool
    width: int = FAKE_FRAME_SIZE
    height: int = FAKE_FRAME_SIZE
    rotation: int = 0
    video_codec: str = "fake"
    audio_codec: str | None = None
    audio_sample_rate: int | None = None


@dataclasses.dataclass
class FakeClip:
    frames: np.ndarray
    timestamps: np.ndarray
    fps: float
    audio: np.ndarray | None


class FakeReader:
    """Correctly-shaped media for any request inside the video; records every call."""

    def __init__(self, info: FakeVideoInfo, *, fail_on: str | None = None) -> None:
        self.info = info
        self.fail_on = fail_on  # "frames" | "audio" | "clip": that call raises FakeMediaError
        self.calls: list[tuple[str, Any]] = []
        self.closed = False

    def _check(self, kind: str) -> None:
        if self.fail_on == kind:
            raise FakeMediaError(f"injected {kind} failure", path=self.info.path)

    def frames(self, timestamps):
        self._check("frames")
        ts = [float(t) for t in timestamps]
        assert all(0 <= t <= self.info.duration for t in ts), ts
        self.calls.append(("frames", ts))
        return np.zeros((len(ts), FAKE_FRAME_SIZE, FAKE_FRAME_SIZE, 3), np.uint8)

    def audio(self, start: float, end: float):
        self._check("audio")
        assert self.info.has_audio and 0 <= start < end <= self.info.duration
        self.calls.append(("audio", (start, end)))
        return np.zeros(max(1, int(round((end - start) * AUDIO_RATE))), np.float32)

    def clip(self, start: float, end: float):
        self._check("clip")
        assert 0 <= start < end <= self.info.duration
        self.calls.append(("clip", (start, end)))
        ts = np.arange(start, end, 1.0 / CLIP_FPS)
        if len(ts) < 2:
            ts = np.array([start, end])
        audio = np.zeros(max(1, int(round((end - start) * AUDIO_RATE))), np.float32) if self.info.has_audio else None
        return FakeClip(np.zeros((len(ts), FAKE_FRAME_SIZE, FAKE_FRAME_SIZE, 3), np.uint8), ts, CLIP_FPS, audio)

    def close(self) -> None:
        self.closed = True


def fake_opener(duration: float, fps: float, has_audio: bool, *, fail_on: str | None = None, readers: list | None = None):
    """A ``media_opener`` that serves one fake video of the given facts for any path."""

    def open_video(path: str) -> FakeReader:
        info = FakeVideoInfo(path, float(duration), float(fps), int(duration * fps), bool(has_audio),
                             audio_codec="aac" if has_audio else None, audio_sample_rate=AUDIO_RATE if has_audio else None)
        reader = FakeReader(info, fail_on=fail_on)
        if readers is not None:
            readers.append(reader)
        return reader

    return open_video


FAKE_ENV_KW = {"media_errors": (FakeMediaError,)}


# ------------------------------------------------------------------------------------ turns
def turn(action: dict[str, Any], *, observation: str = "obs", think: str = "think", confidence: float = 0.5) -> str:
    return json.dumps({"observation": observation, "think": think, "confidence": confidence, "action": action})


def frames(start: float, end: float, num: int, **kw: Any) -> str:
    return turn({"type": "get_frames", "start": start, "end": end, "num": num}, **kw)


def audio(start: float, end: float, **kw: Any) -> str:
    return turn({"type": "get_audio", "start": start, "end": end}, **kw)


def clip(start: float, end: float, **kw: Any) -> str:
    return turn({"type": "get_clip", "start": start, "end": end}, **kw)


def answer(content: str, **kw: Any) -> str:
    return turn({"type": "answer", "content": content}, **kw)


# -------------------------------------------------------------------------- reference data
def load_reference_trajectories(path: pathlib.Path) -> list[list[dict[str, Any]]]:
    """The SFT step logs grouped by traj_id, steps in order."""
    by_traj: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            by_traj.setdefault(row["traj_id"], []).append(row)
    return [sorted(steps, key=lambda r: r["step"]) for steps in by_traj.values()]


def reference_limits(step_row: dict[str, Any]) -> tuple[int, float, float]:
    """(max_frames, max_audio, max_clip) of a reference episode, typed as its prompt printed them."""
    cfg = step_row["extra_info"]["env_config"]
    return int(cfg["actual_max_frames"]), cfg["actual_max_audio"], cfg["actual_max_clip"]


def templatize_reference_prompt(text: str, max_frames: int, max_audio: float, max_clip: float) -> str:
    """Turn the reference's rendered system prompt back into a template with our three slots."""
    swaps = [
        (f"(Max {max_frames} frames)", "(Max {max_frames} frames)"),
        (f"num={max_frames})", "num={max_frames})"),
        (f"(get_audio)**: (Max {max_audio}s)", "(get_audio)**: (Max {max_audio}s)"),
        (f"(get_clip)**: (Max {max_clip}s)", "(get_clip)**: (Max {max_clip}s)"),
    ]
    for rendered, slot in swaps:
        assert text.count(rendered) == 1, f"expected {rendered!r} once in the reference prompt"
        text = text.replace(rendered, slot)
    return text


def describe_message(msg: dict[str, Any]) -> str:
    """Readable one-message summary for assertion messages (media payloads elided)."""
    content = msg.get("content")
    if isinstance(content, str):
        return f"{msg.get('role')}: {content!r}"
    parts = []
    for p in content:
        if p.get("type") == "text":
            parts.append(repr(p["text"]))
        else:
            parts.append(f"<{p.get('type')}>")
    return f"{msg.get('role')}: [" + ", ".join(parts) + "]"


# ----------------------------------------------------------------------------- real test videos
def write_test_video(
    path: pathlib.Path,
    *,
    duration: float,
    fps: float,
    width: int = 32,
    height: int = 32,
    audio: bool = False,
    gop: int = 12,
) -> pathlib.Path:
    """A tiny H.264 (+ AAC 16 kHz mono) MP4 whose probed duration is the video's own:
    ``round(duration * fps)`` frames, and an audio track cut to whole AAC frames *inside* that
    duration. The replay needs this: META prints the duration floored to 0.01 s, and
    ``media_factory.make_video`` writes audio as long as the video, whose AAC padding lengthens the
    container (30.0698 s recorded → 30.07 probed instead of 30.06). ``fps`` may be a ``Fraction``."""
    from fractions import Fraction

    import av

    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    n_frames = int(round(duration * rate))
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"g": str(gop), "preset": "ultrafast", "tune": "zerolatency"}
        astream = None
        if audio:
            astream = out.add_stream("aac", rate=AUDIO_RATE)
            astream.layout = "mono"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), (i * 7) % 256, np.uint8), format="rgb24")
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if astream is not None:
            total = int(float(n_frames / rate) * AUDIO_RATE) // 1024 * 1024
            for pos in range(0, total, 1024):
                t = np.arange(pos, pos + 1024) / AUDIO_RATE
                samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
                af = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                af.sample_rate, af.pts = AUDIO_RATE, pos
                for packet in astream.encode(af):
                    out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)
    return path


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)
