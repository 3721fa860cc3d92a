"""omniagent_jax.media: probe, frames at timestamps, audio ranges, clips and every bad-media case.

The reference for frames is the plain definition: decode the whole stream in order with PyAV and
take, for each time t, the first frame whose presentation time is >= t (``ffmpeg -ss t``). Synthetic
videos (tests/media_factory.py) also carry their frame index in their pixels and a known chirp as
audio, so results are checked against what was written, not only against another decode.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import time

import av
import media_factory as mf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniagent_jax import media
from omniagent_jax.media import (
    AUDIO_SAMPLE_RATE,
    CLIP_FPS,
    FRAME_END_MARGIN,
    FRAME_TIME_EPS,
    Clip,
    MediaError,
    VideoInfo,
    clip_frame_indices,
    clip_num_frames,
)

REAL_VIDEO = "demo_inference.mp4"

# name -> (file name, make_video kwargs). Tiny on purpose: the whole set is written in about a second.
VIDEOS: dict[str, tuple[str, dict]] = {
    # libx264 with B-frames and one GOP: frame reordering, AAC stereo 44.1 kHz.
    "h264_aac": ("h264_aac.mp4", dict(duration=3.0, fps=25, audio=True)),
    # Short GOPs so that requests cross keyframes and seeks pay off.
    "fps10": ("fps10.mp4", dict(duration=4.0, fps=10, gop=8)),
    # Mono 48 kHz audio, index at the front (faststart), 30 fps.
    "fps30": (
        "fps30.mp4",
        dict(duration=2.5, fps=30, gop=12, width=96, height=64, audio=True, audio_rate=48000, audio_channels=1, faststart=True),
    ),
    "vfr": ("vfr.mp4", dict(duration=3.0, fps=10, vfr=True, gop=6)),
    "portrait": ("portrait.mp4", dict(duration=2.0, fps=10, gop=5, rotation=90)),
    "rot180": ("rot180.mp4", dict(duration=1.0, fps=10, rotation=180)),
    "rot270": ("rot270.mp4", dict(duration=1.0, fps=10, rotation=270)),
    "one_frame": ("one_frame.mp4", dict(duration=0.04, fps=25)),
    # Other containers: Matroska (index built while reading), MPEG-TS (no index, non-zero start
    # time), VP9/WebM and MPEG-4 Part 2/AVI.
    "mkv": ("h264.mkv", dict(duration=3.0, fps=25, gop=10, audio=True)),
    "ts": ("h264.ts", dict(duration=3.0, fps=25, gop=10, audio=True)),
    "webm": ("vp9.webm", dict(duration=2.0, fps=25, gop=10, codec="libvpx-vp9")),
    "avi": ("mpeg4.avi", dict(duration=2.0, fps=25, gop=10, codec="mpeg4")),
}


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def videos(media_dir) -> dict[str, pathlib.Path]:
    return {name: mf.make_video(media_dir / fname, **kwargs) for name, (fname, kwargs) in VIDEOS.items()}


@pytest.fixture(scope="session")
def audio_files(media_dir) -> dict[str, pathlib.Path]:
    return {
        "m4a": mf.make_audio_only(media_dir / "audio_only.m4a", duration=2.0),
        "wav": mf.make_audio_only(media_dir / "audio_only.wav", duration=2.0, audio_rate=22050, audio_channels=1),
    }


@pytest.fixture(scope="session")
def real_video(reference_dir) -> pathlib.Path:
    return reference_dir / REAL_VIDEO


# ------------------------------------------------------------------------------ references
@functools.lru_cache(maxsize=None)
def sequential(path: str, until: float = float("inf")) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Every frame (time, upright RGB) decoded in order from the start, up to the first frame at or
    after ``until``; times relative to the container's start time, as ``ffmpeg -ss`` counts."""
    with av.open(path) as c:
        origin = (c.start_time or 0) / 1e6
        stream = c.streams.video[0]
        times, frames = [], []
        for frame in c.decode(stream):
            times.append(float(frame.pts * stream.time_base) - origin)
            # frame.rotation is counter-clockwise; np.rot90 with positive k turns counter-clockwise.
            frames.append(np.rot90(frame.to_ndarray(format="rgb24"), round(frame.rotation / 90)))
            if times[-1] >= until:
                break
    return np.array(times), tuple(frames)


def expected_index(times: np.ndarray, t: float, duration: float) -> int:
    """The reference's rule: clamp to [0, duration - 0.2], then the first frame at or after t."""
    t = min(max(t, 0.0), max(duration - FRAME_END_MARGIN, 0.0))
    after = np.nonzero(times >= t - FRAME_TIME_EPS)[0]
    return int(after[0]) if after.size else len(times) - 1


def assert_frames_match_sequential(path: pathlib.Path, timestamps, got: np.ndarray, duration: float) -> None:
    times, frames = sequential(str(path))
    assert got.shape[0] == len(timestamps)
    for k, t in enumerate(timestamps):
        j = expected_index(times, float(t), duration)
        assert np.array_equal(got[k], frames[j]), f"t={t}: expected frame {j} at {times[j]:.3f}s"


def chirp_lag(wave: np.ndarray, start: float, search: int = 800) -> int:
    """Offset in samples that best aligns ``wave`` with the factory's chirp starting at ``start``."""
    ref = mf.audio_signal(start + np.arange(-search, len(wave) + search) / AUDIO_SAMPLE_RATE)
    scores = [float(np.dot(wave, ref[search + lag : search + lag + len(wave)])) for lag in range(-search, search + 1)]
    return int(np.argmax(scores)) - search


# ----------------------------------------------------------------------------------- probe
PROBE_EXPECTED = {
    # name: (duration, fps, num_frames, has_audio, width, height, rotation, video_codec, audio_codec, rate)
    "h264_aac": (3.0, 25.0, 75, True, 64, 48, 0, "h264", "aac", 44100),
    "fps10": (4.0, 10.0, 40, False, 64, 48, 0, "h264", None, None),
    "fps30": (2.5, 30.0, 75, True, 96, 64, 0, "h264", "aac", 48000),
    "vfr": (3.0, 10.0, 30, False, 64, 48, 0, "h264", None, None),
    "portrait": (2.0, 10.0, 20, False, 48, 64, 90, "h264", None, None),
    "rot180": (1.0, 10.0, 10, False, 64, 48, 180, "h264", None, None),
    "rot270": (1.0, 10.0, 10, False, 48, 64, 270, "h264", None, None),
    "one_frame": (0.04, 25.0, 1, False, 64, 48, 0, "h264", None, None),
    "mkv": (3.0, 25.0, 75, True, 64, 48, 0, "h264", "aac", 44100),
    "ts": (3.0, 25.0, 75, True, 64, 48, 0, "h264", "aac", 44100),
    "webm": (2.0, 25.0, 50, False, 64, 48, 0, "vp9", None, None),
    "avi": (2.0, 25.0, 50, False, 64, 48, 0, "mpeg4", None, None),
}


@pytest.mark.parametrize("name", sorted(PROBE_EXPECTED))
def test_probe_variants(videos, name):
    duration, fps, num_frames, has_audio, width, height, rotation, vcodec, acodec, rate = PROBE_EXPECTED[name]
    info = media.probe(videos[name])
    assert isinstance(info, VideoInfo)
    assert info.path == str(videos[name])
    # Matroska/TS durations include the audio's last packet (AAC frames of 1024 samples).
    assert info.duration == pytest.approx(duration, abs=0.05 if name in ("mkv", "ts") else 1e-6)
    assert info.fps == pytest.approx(fps)
    # Containers without a frame count report round(duration * fps).
    assert abs(info.num_frames - num_frames) <= (1 if name in ("mkv", "ts", "webm") else 0)
    assert (info.has_audio, info.width, info.height, info.rotation) == (has_audio, width, height, rotation)
    assert (info.video_codec, info.audio_codec, info.audio_sample_rate) == (vcodec, acodec, rate)
    assert info.has_video


def test_probe_real_video(real_video):
    info = media.probe(real_video)
    assert (info.width, info.height, info.fps, info.num_frames) == (1920, 1080, 25.0, 438)
    assert info.duration == pytest.approx(17.52)
    assert (info.has_audio, info.rotation, info.video_codec, info.audio_codec) == (False, 0, "h264", None)


@pytest.mark.parametrize("kind", ["m4a", "wav"])
def test_probe_audio_only(audio_files, kind):
    info = media.probe(audio_files[kind])
    assert info.duration == pytest.approx(2.0, abs=1e-3)
    assert (info.has_audio, info.has_video, info.fps, info.num_frames, info.width, info.height) == (True, False, 0.0, 0, 0, 0)
    assert info.audio_codec == ("aac" if kind == "m4a" else "pcm_s16le")
    assert info.audio_sample_rate == (44100 if kind == "m4a" else 22050)


# ------------------------------------------------------------------------------ read_frames
def test_read_frames_real_video_matches_sequential(real_video):
    # Around both later keyframes (3.52 s, 13.52 s), exact frame times, duplicates, random order.
    timestamps = [13.52, 3.5, 0.0, 9.37, 3.52, 3.4999, 13.48, 3.5, 6.0, 13.5201, 0.02]
    got = media.read_frames(real_video, timestamps)
    assert got.shape == (len(timestamps), 1080, 1920, 3) and got.dtype == np.uint8
    times, frames = sequential(str(real_video), until=max(timestamps))
    for k, t in enumerate(timestamps):
        j = expected_index(times, t, 17.52)
        assert np.array_equal(got[k], frames[j]), f"t={t}: expected frame {j}"
    # Known frame numbers at 25 fps (frame i at i/25 s): the exact time picks the frame itself.
    assert [expected_index(times, t, 17.52) for t in (3.5, 3.52, 13.52, 0.02)] == [88, 88, 338, 1]


@pytest.mark.parametrize("name", ["h264_aac", "fps10", "fps30", "vfr", "mkv", "ts", "webm", "avi"])
def test_read_frames_known_indices(videos, name):
    path = videos[name]
    info = media.probe(path)
    rng = np.random.default_rng(len(name))
    written = mf.frame_times(VIDEOS[name][1]["duration"], VIDEOS[name][1]["fps"], VIDEOS[name][1].get("vfr", False))
    timestamps = np.concatenate([rng.uniform(0, info.duration, 12), rng.choice(written, 4), [0.0, info.duration]])
    timestamps = np.concatenate([timestamps, timestamps[:3]])  # duplicates
    rng.shuffle(timestamps)
    got = media.read_frames(path, timestamps)
    assert got.shape == (len(timestamps), info.height, info.width, 3) and got.dtype == np.uint8
    assert_frames_match_sequential(path, timestamps, got, info.duration)
    # The pixels say which frame was written there; `written` times are relative to the first
    # frame, and MPEG-TS starts its video a little after the container's time 0.
    first_video = sequential(str(path))[0][0]
    indices = [mf.frame_index(f) for f in got]
    expected = [expected_index(written + first_video, t, info.duration) for t in timestamps]
    assert indices == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_read_frames_any_order_property(videos, data):
    name = data.draw(st.sampled_from(["fps10", "vfr", "h264_aac"]))
    path = videos[name]
    info = media.probe(path)
    written = mf.frame_times(VIDEOS[name][1]["duration"], VIDEOS[name][1]["fps"], VIDEOS[name][1].get("vfr", False))
    near_frames = st.sampled_from(written).flatmap(
        lambda t: st.sampled_from([t, t - 1e-7, t + 1e-7, t - 0.01, t + 0.01, max(0.0, t - 1e-3)])
    )
    stamp = st.one_of(st.floats(0.0, info.duration), near_frames.filter(lambda t: 0 <= t <= info.duration))
    timestamps = data.draw(st.lists(stamp, min_size=1, max_size=10))
    got = media.read_frames(path, timestamps)
    assert_frames_match_sequential(path, timestamps, got, info.duration)


def test_read_frames_clamps_near_the_end(videos):
    path = videos["fps10"]  # 4.0 s, frames at i/10
    info = media.probe(path)
    got = media.read_frames(path, [4.0, 3.9, 3.8, 3.75, info.duration + 5e-4, -5e-4])
    # Everything after 3.8 is clamped to 3.8 (duration - 0.2): frame 38; -0.0005 is clamped to 0.
    assert [mf.frame_index(f) for f in got] == [38, 38, 38, 38, 38, 0]


def test_read_frames_order_duplicates_and_empty(videos):
    path = videos["fps10"]
    got = media.read_frames(path, [2.0, 0.5, 2.0, 0.05, 0.5])
    assert [mf.frame_index(f) for f in got] == [20, 5, 20, 1, 5]
    assert np.array_equal(got[0], got[2]) and got[0] is not got[2]
    empty = media.read_frames(path, [])
    assert empty.shape == (0, 48, 64, 3) and empty.dtype == np.uint8
    with pytest.raises(ValueError, match="1-D"):
        media.read_frames(path, [[0.1, 0.2]])


def test_read_frames_rgb_channel_order(videos):
    frame = media.read_frames(videos["fps10"], [0.0])[0]  # frame 0: every block "off" (dark blue)
    assert frame[..., 2].mean() > 90 and frame[..., 0].mean() < 20
    # Frame 38 = 0b100110: bit 2 is block 13 (row 3, col 1) -> red; bit 0 is block 15 -> dark blue.
    frame = media.read_frames(videos["fps10"], [3.9])[0]
    assert frame[42, 24, 0] > 200 and frame[42, 24, 2] < 50
    assert frame[42, 56, 0] < 20 and frame[42, 56, 2] > 90


@pytest.mark.parametrize("name,k", [("portrait", -1), ("rot180", 2), ("rot270", 1)])
def test_read_frames_applies_rotation(videos, name, k):
    path = videos[name]
    got = media.read_frames(path, [0.0, 0.55])
    info = media.probe(path)
    assert got.shape[1:3] == (info.height, info.width)
    # The display matrix asks for a clockwise turn: undo it and the stored frame reads back.
    assert [mf.frame_index(np.rot90(f, -k)) for f in got] == [0, 6]
    with av.open(str(path)) as c:
        raw = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert np.array_equal(got[1], np.rot90(raw[6], k))


def test_one_frame_video(videos):
    path = videos["one_frame"]
    got = media.read_frames(path, [0.0, 0.02, 0.04])
    assert [mf.frame_index(f) for f in got] == [0, 0, 0]
    clip = media.read_clip(path, 0.0, 0.04)
    assert clip.frames.shape == (2, 48, 64, 3)
    assert [mf.frame_index(f) for f in clip.frames] == [0, 0]
    assert clip.timestamps.tolist() == [0.0, 0.0]


def test_read_frames_seeks_and_reuses_the_decoder(videos, monkeypatch):
    """Times in one GOP are served by one forward pass; a far time past a keyframe gets a seek."""
    from omniagent_jax.media import _video

    targets: list[float] = []
    original = _video.FrameDecoder._decode_from

    def spy(self, target):
        targets.append(target)
        return original(self, target)

    monkeypatch.setattr(_video.FrameDecoder, "_decode_from", spy)
    path = videos["fps10"]  # keyframes every 8 frames: 0, 0.8, 1.6, 2.4, 3.2 s
    got = media.read_frames(path, [0.1, 0.3, 0.5, 0.7])
    assert [mf.frame_index(f) for f in got] == [1, 3, 5, 7] and len(targets) == 1
    targets.clear()
    got = media.read_frames(path, [0.1, 3.5])
    assert [mf.frame_index(f) for f in got] == [1, 35] and len(targets) == 2


# ------------------------------------------------------------------------------- read_audio
@pytest.mark.parametrize(
    "source,start,end",
    [
        ("h264_aac", 0.0, 1.0),
        ("h264_aac", 0.5, 1.7),
        ("h264_aac", 1.23456, 2.98765),
        ("h264_aac", 2.0, 3.0),  # up to the very end
        ("fps30", 0.3, 2.5),  # 48 kHz mono
        ("mkv", 1.1, 2.2),
        ("m4a", 0.25, 1.5),
        ("wav", 0.0, 2.0),  # 22.05 kHz mono PCM
    ],
)
def test_read_audio_count_timing_and_level(videos, audio_files, source, start, end):
    path = videos.get(source) or audio_files[source]
    wave = media.read_audio(path, start, end)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == round(end * AUDIO_SAMPLE_RATE) - round(start * AUDIO_SAMPLE_RATE)
    body = wave[400:-400]  # away from the resampler's edges and the final AAC frame
    expected = mf.audio_signal(start + (400 + np.arange(len(body))) / AUDIO_SAMPLE_RATE)
    # Matroska stores timestamps in milliseconds: up to half a millisecond (8 samples) of rounding.
    assert abs(chirp_lag(body, start + 400 / AUDIO_SAMPLE_RATE)) <= (8 if source == "mkv" else 1)
    if source != "mkv":
        assert np.corrcoef(body, expected)[0, 1] > 0.99
    # Mono is the mean of identical channels, so the level is the written one (0.5 peak).
    assert np.sqrt(np.mean(body**2)) == pytest.approx(mf.AUDIO_AMPLITUDE / np.sqrt(2), rel=0.05)


def test_read_audio_short_and_odd_ranges(videos):
    path = videos["h264_aac"]
    assert len(media.read_audio(path, 1.0, 1.1)) == 1600
    assert len(media.read_audio(path, 0.00003, 0.00009)) == 1  # samples round(0.48) = 0 .. round(1.44) = 1
    whole = media.read_audio(path, 0.0, 3.0)
    # A range cut from the middle holds the same samples as the whole file: the first input
    # sample is aligned to the 16 kHz grid, so there is no fractional-sample shift (the tolerance
    # is for float rounding in the decoder's overlap-add, which starts from the seek point).
    for start, end in [(1.5, 2.5), (1.23456, 2.0), (0.7, 0.71)]:
        part = media.read_audio(path, start, end)
        first = round(start * AUDIO_SAMPLE_RATE)
        np.testing.assert_allclose(part[20:-20], whole[first : first + len(part)][20:-20], atol=1e-6)


def test_read_audio_is_mono_mean_not_sum(media_dir):
    # Left = signal, right = silence would need a custom writer; identical channels already pin
    # the gain: FFmpeg's default stereo->mono matrix would scale by sqrt(2).
    path = mf.make_audio_only(media_dir / "stereo_gain.m4a", duration=1.0)
    wave = media.read_audio(path, 0.1, 0.9)
    assert np.abs(wave).max() < 0.55


def test_read_audio_outside_the_audio_track_is_silence(media_dir):
    # The audio track covers 0.49-2.0 s of a 3 s video: before and after it the range is silent,
    # and the samples in between are still where they belong.
    path = mf.make_video(media_dir / "short_audio.mp4", duration=3.0, fps=10, audio=True, audio_start=0.5, audio_end=2.0)
    assert media.probe(path).duration == pytest.approx(3.0)
    wave = media.read_audio(path, 0.0, 3.0)
    assert len(wave) == 48000
    assert not wave[: int(0.46 * AUDIO_SAMPLE_RATE)].any() and not wave[int(2.03 * AUDIO_SAMPLE_RATE) :].any()
    # An MP4 edit list places a late-starting track to the millisecond: allow 1 ms (16 samples).
    assert abs(chirp_lag(wave[12000:28000], 12000 / AUDIO_SAMPLE_RATE)) <= 16
    tail = media.read_audio(path, 2.5, 3.0)
    assert len(tail) == 8000 and not tail.any()


def test_read_audio_survives_a_layout_change(media_dir):
    # Two raw AAC (ADTS) streams back to back, mono then stereo: the decoder's output layout
    # changes mid-stream, as in broadcast recordings that switch between stereo and 5.1.
    mono = mf.make_audio_only(media_dir / "switch_mono.aac", duration=1.0, audio_channels=1)
    stereo = mf.make_audio_only(media_dir / "switch_stereo.aac", duration=1.0, audio_channels=2)
    both = media_dir / "switch_both.aac"
    both.write_bytes(mono.read_bytes() + stereo.read_bytes())
    wave = media.read_audio(both, 0.0, 2.0)
    assert len(wave) == 32000
    # Each part is the chirp at the written level (raw AAC keeps the encoder's priming samples,
    # so each part is shifted by them: find the shift, then compare).
    switch = round(46 * 1024 / 44100 * AUDIO_SAMPLE_RATE)  # 46 AAC frames in the mono part
    for part in (wave[2000:switch - 2000], wave[switch + 2000 : 32000 - 2000]):
        lag = chirp_lag(part, 2000 / AUDIO_SAMPLE_RATE)
        expected = mf.audio_signal((2000 + lag + np.arange(len(part))) / AUDIO_SAMPLE_RATE)
        assert np.corrcoef(part, expected)[0, 1] > 0.98
        assert np.sqrt(np.mean(part**2)) == pytest.approx(mf.AUDIO_AMPLITUDE / np.sqrt(2), rel=0.05)


# -------------------------------------------------------------------------------- read_clip
@pytest.mark.parametrize(
    "total,fps,expected",
    [
        (1, 25.0, 2),  # the reference raises here; we repeat the single frame
        (3, 25.0, 2),
        (25, 25.0, 2),  # 1 s -> 2 frames
        (45, 25.0, 2),  # 1.8 s -> 3.6 -> floored to 2
        (50, 25.0, 4),
        (100, 25.0, 8),
        (1800, 30.0, 120),  # a 60 s clip
        (19, 10.0, 2),  # 3.8 -> 2
        (7, 2.0, 6),  # 7 frames at 2 fps: 7 -> min(7, floor2(7)=6)
        (5, 1.0, 4),  # 1 fps: 10 wanted, capped at floor2(5) = 4
        (3000, 2.0, 768),  # capped at 768
        (2000, 1.0, 768),
    ],
)
def test_clip_num_frames(total, fps, expected):
    assert clip_num_frames(total, fps) == expected


def test_clip_num_frames_rejects_nonsense():
    with pytest.raises(ValueError):
        clip_num_frames(0, 25.0)
    with pytest.raises(ValueError):
        clip_num_frames(10, 0.0)


def test_clip_frame_indices():
    assert clip_frame_indices(40, 8).tolist() == [0, 6, 11, 17, 22, 28, 33, 39]
    assert clip_frame_indices(45, 2).tolist() == [0, 44]
    assert clip_frame_indices(1, 2).tolist() == [0, 0]
    assert clip_frame_indices(4, 4).tolist() == [0, 1, 2, 3]
    # Round half to even, like torch.round: linspace(0, 5, 3) = [0, 2.5, 5] -> [0, 2, 5].
    assert clip_frame_indices(6, 3).tolist() == [0, 2, 5]


@pytest.mark.parametrize(
    "name,start,end",
    [
        ("fps10", 0.0, 4.0),
        ("fps10", 0.75, 3.3),
        ("h264_aac", 0.5, 2.3),
        ("fps30", 0.2, 2.5),
        ("vfr", 0.3, 3.0),
        ("portrait", 0.0, 2.0),
    ],
)
def test_read_clip_frames_follow_the_rule(videos, name, start, end):
    kwargs = VIDEOS[name][1]
    written = mf.frame_times(kwargs["duration"], kwargs["fps"], kwargs.get("vfr", False))
    in_range = np.nonzero((written >= start - FRAME_TIME_EPS) & (written < end - FRAME_TIME_EPS))[0]
    # The rule, written out: floor to even of clamp(total / fps * 2, 2, floor2(min(768, total))).
    total = len(in_range)
    n = int(min(max(total / kwargs["fps"] * 2.0, 2), (min(768, total) // 2) * 2) // 2 * 2)
    picked = in_range[np.linspace(0, total - 1, n).round().astype(int)]
    clip = media.read_clip(videos[name], start, end)
    assert isinstance(clip, Clip) and clip.fps == CLIP_FPS == 2.0
    assert clip.frames.dtype == np.uint8 and clip.frames.shape[0] == n
    info = media.probe(videos[name])
    assert clip.frames.shape[1:] == (info.height, info.width, 3)
    assert clip.timestamps.dtype == np.float64
    np.testing.assert_allclose(clip.timestamps, written[picked], atol=1e-6)
    k = {"portrait": 1}.get(name, 0)  # undo the clockwise 90 of the portrait video
    assert [mf.frame_index(np.rot90(f, k)) for f in clip.frames] == picked.tolist()
    if kwargs.get("audio"):
        assert clip.audio is not None and clip.audio.dtype == np.float32
        assert len(clip.audio) == round(end * AUDIO_SAMPLE_RATE) - round(start * AUDIO_SAMPLE_RATE)
        np.testing.assert_array_equal(clip.audio, media.read_audio(videos[name], start, end))
    else:
        assert clip.audio is None


def test_read_clip_matches_read_frames(videos):
    clip = media.read_clip(videos["fps10"], 0.75, 3.3)
    frames = media.read_frames(videos["fps10"], clip.timestamps)
    np.testing.assert_array_equal(clip.frames, frames)


def test_read_clip_shorter_than_a_frame_interval(videos):
    clip = media.read_clip(videos["fps10"], 0.31, 0.35)  # no frame starts inside: the next one, twice
    assert [mf.frame_index(f) for f in clip.frames] == [4, 4]
    np.testing.assert_allclose(clip.timestamps, [0.4, 0.4])


def test_read_clip_real_video(real_video):
    clip = media.read_clip(real_video, 3.0, 5.0)  # 50 source frames -> 4 frames, one on each side of a keyframe
    assert clip.frames.shape == (4, 1080, 1920, 3) and clip.audio is None
    np.testing.assert_allclose(clip.timestamps, np.array([75, 91, 108, 124]) / 25)
    times, frames = sequential(str(real_video), until=5.0)
    for ts, frame in zip(clip.timestamps, clip.frames):
        assert np.array_equal(frame, frames[int(np.argmin(np.abs(times - ts)))])


# ------------------------------------------------------------------------------- bad media
def _bad_media(media_dir: pathlib.Path, videos, audio_files) -> dict[str, pathlib.Path]:
    bad = media_dir / "bad"
    if not bad.exists():
        bad.mkdir()
        mf.make_not_media(bad / "notes.txt")
        mf.make_not_media(bad / "fake.mp4")
        (bad / "empty.mp4").write_bytes(b"")
        (bad / "noise.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
        (bad / "a_directory.mp4").mkdir()
        # moov at the end (the default): half the file has no index at all.
        mf.make_truncated(videos["h264_aac"], bad / "cut_no_moov.mp4")
        # moov first (faststart): the index opens but points past the end of the file.
        mf.make_truncated(videos["fps30"], bad / "cut_faststart.mp4")
        # Matroska: opens and probes (duration tag in the header); the data stops early.
        mf.make_truncated(videos["mkv"], bad / "cut.mkv", fraction=0.6)
        # Garbage over the first keyframe, or over a later GOP (the index is intact).
        mf.make_corrupted(videos["fps10"], bad / "corrupt_first.mp4", at=0.0)
        mf.make_corrupted(videos["fps10"], bad / "corrupt_later.mp4", at=0.8)
        mf.make_corrupted(audio_files["m4a"], bad / "corrupt_audio.m4a", at=0.5)
        # A raw H.264 stream: no container, so no duration anywhere.
        mf.make_video(bad / "raw.h264", duration=1.0, fps=25, container_format="h264")
    return {p.name: p for p in bad.iterdir()}


@pytest.fixture(scope="session")
def bad_files(media_dir, videos, audio_files):
    return _bad_media(media_dir, videos, audio_files)


# (file, call, kind, words the message must contain)
BAD_CASES = [
    ("missing.mp4", "probe", "not_found", ["no such file"]),
    ("missing.mp4", "frames", "not_found", ["no such file"]),
    ("notes.txt", "probe", "not_media", ["not audio or video"]),
    ("fake.mp4", "frames", "not_media", ["cannot read it as audio or video"]),
    ("empty.mp4", "probe", "not_media", ["empty"]),
    ("noise.mkv", "probe", "not_media", ["cannot read it as audio or video"]),
    ("a_directory.mp4", "probe", "not_media", ["not a regular file"]),
    ("cut_no_moov.mp4", "probe", "truncated", ["moov", "missing"]),
    ("cut_faststart.mp4", "probe", "truncated", ["cut short", "bytes"]),
    ("cut_faststart.mp4", "clip", "truncated", ["cut short"]),
    ("cut.mkv", "frames_end", "truncated", ["video stream #0", "cut short", "2.80s"]),
    ("cut.mkv", "audio_end", "truncated", ["audio stream #1", "cut short"]),
    ("cut.mkv", "clip_end", "truncated", ["cut short"]),
    ("corrupt_first.mp4", "probe", "decode", ["cannot decode the first frame", "video stream #0 (h264)"]),
    ("corrupt_later.mp4", "frames_all", "decode", ["video stream #0 (h264)", "FFmpeg failed", "last good frame"]),
    ("corrupt_audio.m4a", "audio_whole", "decode", ["audio stream #0 (aac)", "FFmpeg failed", "last good frame"]),
    ("raw.h264", "probe", "decode", ["cannot determine the duration", "raw elementary stream"]),
    ("audio_only.m4a", "frames", "no_video", ["no video stream"]),
    ("audio_only.m4a", "clip", "no_video", ["no video stream"]),
    ("fps10.mp4", "audio", "no_audio", ["no audio stream"]),
    ("fps10.mp4", "frames_late", "out_of_range", ["4.500s", "[0, 4.000]"]),
    ("fps10.mp4", "frames_negative", "out_of_range", ["-0.100s"]),
    ("fps10.mp4", "frames_nan", "out_of_range", ["nan"]),
    ("h264_aac.mp4", "audio_late", "out_of_range", ["audio range end", "3.500s"]),
    ("h264_aac.mp4", "audio_reversed", "out_of_range", ["empty or reversed"]),
    ("h264_aac.mp4", "clip_negative", "out_of_range", ["clip range start"]),
]

CALLS = {
    "probe": lambda p: media.probe(p),
    "frames": lambda p: media.read_frames(p, [0.0]),
    "frames_end": lambda p: media.read_frames(p, [2.8]),
    "frames_all": lambda p: media.read_frames(p, np.linspace(0.0, 3.8, 39)),
    "frames_late": lambda p: media.read_frames(p, [0.5, 4.5]),
    "frames_negative": lambda p: media.read_frames(p, [-0.1]),
    "frames_nan": lambda p: media.read_frames(p, [float("nan")]),
    "audio": lambda p: media.read_audio(p, 0.0, 1.0),
    "audio_end": lambda p: media.read_audio(p, 2.0, 3.0),
    "audio_whole": lambda p: media.read_audio(p, 0.0, 2.0),
    "audio_late": lambda p: media.read_audio(p, 2.0, 3.5),
    "audio_reversed": lambda p: media.read_audio(p, 2.0, 1.0),
    "clip": lambda p: media.read_clip(p, 0.0, 1.0),
    "clip_end": lambda p: media.read_clip(p, 1.0, 3.0),
    "clip_negative": lambda p: media.read_clip(p, -1.0, 1.0),
}


def _resolve(name: str, media_dir, bad_files) -> pathlib.Path:
    if name in bad_files:
        return bad_files[name]
    return media_dir / name  # the good videos and audio files, or a path that does not exist


@pytest.mark.parametrize("name,call,kind,words", BAD_CASES, ids=[f"{c[0]}-{c[1]}" for c in BAD_CASES])
def test_bad_media_raises_media_error(media_dir, videos, audio_files, bad_files, name, call, kind, words):
    path = _resolve(name, media_dir, bad_files)
    t0 = time.monotonic()
    with pytest.raises(MediaError) as info:
        CALLS[call](path)
    assert time.monotonic() - t0 < 10, "a bad file must fail fast, not hang"
    err = info.value
    assert err.kind == kind, str(err)
    assert err.path == str(path)
    message = str(err)
    assert str(path) in message and f"[{kind}]" in message
    for word in words:
        assert word.lower() in message.lower(), message


def test_seek_failures_become_media_errors(videos):
    class RefusingSeeks:
        """The container of an open reader, except that every seek fails."""

        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def seek(self, *args, **kwargs):
            raise av.error.FFmpegError(1, "Operation not permitted")

    with media.open_video(videos["h264_aac"]) as reader:
        reader._opened.container = RefusingSeeks(reader._opened.container)
        with pytest.raises(MediaError, match="cannot seek to the start") as info:
            reader.frames([2.0])
        assert info.value.kind == "decode" and "video stream #0 (h264)" in str(info.value)
        with pytest.raises(MediaError, match="cannot seek to the start") as info:
            reader.audio(1.0, 2.0)
        assert info.value.kind == "decode" and "audio stream #1 (aac)" in str(info.value)


def test_stream_without_a_decoder_is_a_media_error():
    # PyAV leaves codec_context None for a codec this FFmpeg build cannot decode; no such file can
    # be written here (every encoder has its decoder), so the container is a stand-in.
    from types import SimpleNamespace

    from omniagent_jax.media import _open

    stream = SimpleNamespace(type="video", index=0, codec_context=None, disposition=0)
    container = SimpleNamespace(format=SimpleNamespace(name="matroska,webm"), streams=SimpleNamespace(video=[stream], audio=[]))
    with pytest.raises(MediaError, match="no decoder for video stream #0") as info:
        _open._inspect("/x/exotic.mkv", container)
    assert info.value.kind == "decode"


def test_truncated_clip_within_the_present_part_still_reads(bad_files):
    # A cut Matroska file: what is there decodes; asking past the cut is what fails.
    got = media.read_frames(bad_files["cut.mkv"], [0.5])
    assert mf.frame_index(got[0]) == 13  # first frame at/after 0.5 s at 25 fps is 0.52 s


def test_media_error_pickles_and_validates_kind():
    err = MediaError("/x/video.mp4", "truncated", "cut short at 1.00s")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.kind, back.message, str(back)) == (err.path, err.kind, err.message, str(err))
    with pytest.raises(ValueError, match="unknown MediaError kind"):
        MediaError("/x", "bogus", "nope")  # type: ignore[arg-type]


def test_no_temp_files_left_behind(videos, audio_files, bad_files, media_dir, tmp_path, monkeypatch):
    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(cwd)
    before = sorted(p.name for p in media_dir.rglob("*"))
    with media.open_video(videos["h264_aac"]) as reader:
        reader.frames([0.1, 2.0])
        reader.audio(0.5, 1.5)
        reader.clip(0.0, 2.0)
    media.read_audio(audio_files["wav"], 0.0, 1.0)
    for name in ("cut_no_moov.mp4", "cut_faststart.mp4", "notes.txt"):
        with pytest.raises(MediaError):
            media.read_clip(bad_files[name], 0.0, 1.0)
    assert list(scratch.iterdir()) == [] and list(cwd.iterdir()) == []
    assert sorted(p.name for p in media_dir.rglob("*")) == before


# ------------------------------------------------------------------------------ VideoReader
def test_video_reader_reuse_matches_one_shot_calls(videos):
    path = videos["h264_aac"]
    calls = [
        ("frames", ([2.0, 0.1, 1.0],)),
        ("audio", (1.0, 2.0)),
        ("clip", (0.5, 2.5)),
        ("frames", ([0.0, 2.9],)),
        ("audio", (0.0, 0.5)),
        ("frames", ([1.0],)),
        ("clip", (0.0, 1.0)),
    ]
    one_shot = {"frames": media.read_frames, "audio": media.read_audio, "clip": media.read_clip}
    with media.open_video(path) as reader:
        assert reader.info == media.probe(path)
        for method, args in calls:
            got, want = getattr(reader, method)(*args), one_shot[method](path, *args)
            # Exact, audio included: every audio request gets a fresh decoder (FFmpeg's AAC decoder
            # keeps a little state across a flush, which would change the last bits).
            if method == "clip":
                np.testing.assert_array_equal(got.frames, want.frames)
                np.testing.assert_array_equal(got.timestamps, want.timestamps)
                np.testing.assert_array_equal(got.audio, want.audio)
            else:
                np.testing.assert_array_equal(got, want)
    assert reader.closed
    with pytest.raises(ValueError, match="closed"):
        reader.frames([0.0])
    reader.close()  # idempotent


def test_video_reader_keeps_one_container_open(videos, monkeypatch):
    opened = []
    original = av.open

    def counting_open(*args, **kwargs):
        opened.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(av, "open", counting_open)
    with media.open_video(videos["mkv"]) as reader:
        for _ in range(3):
            reader.frames([0.5, 1.5])
            reader.audio(0.0, 1.0)
            reader.clip(1.0, 2.0)
    assert len(opened) == 1
    assert "VideoReader(" in repr(reader) and "closed" in repr(reader)


def test_clip_repr_is_short(videos):
    text = repr(media.read_clip(videos["h264_aac"], 0.0, 2.0))
    assert text.startswith("Clip(frames=(4, 48, 64, 3) uint8") and "32000 samples" in text and len(text) < 200


# ---------------------------------------------------------------------------------- imports
def test_media_imports_no_jax_or_model_code():
    code = (
        "import json, sys\n"
        "import omniagent_jax.media\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'torch')\n"
        "    or m.startswith(('omniagent_jax.model', 'omniagent_jax.engine', 'omniagent_jax.processing')))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
