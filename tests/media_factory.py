"""Synthetic test media written with PyAV: videos whose frames say which frame they are.

Every frame ``i`` shows its index as a 4×4 grid of big flat blocks (16 bits, row-major, most
significant bit first): a set bit is a red block, a clear bit a dark-blue one. Flat blocks survive
H.264 at any sane quality, so :func:`frame_index` recovers ``i`` from decoded pixels, and the
red-vs-blue choice also proves the channel order is RGB. Audio is :func:`audio_signal`, a chirp
that repeats every second, so the timing of any decoded range can be checked by cross-correlation.

Everything is tiny on purpose (tens of pixels, a few seconds) so that tests stay fast. Import it
from tests (``import media_factory``); it never touches the library under test.
"""

from __future__ import annotations

import pathlib
from fractions import Fraction

import av
import numpy as np

GRID = 4  # blocks per side; GRID² bits per frame
MAX_FRAMES = 1 << (GRID * GRID)
ON_RGB = (255, 0, 0)
OFF_RGB = (0, 0, 112)
AUDIO_AMPLITUDE = 0.5
CHIRP_F0 = 200.0  # Hz at the start of each second
CHIRP_RATE = 1000.0  # Hz per second: 200 → 1200 Hz over each second
VFR_TIME_BASE = Fraction(1, 1000)
# Frame intervals of a VFR video, in units of 1/fps, cycled (their mean is 1, so fps is the average).
VFR_PATTERN = (0.5, 1.5, 1.0)


# ------------------------------------------------------------------------------- frame content
def frame_image(index: int, width: int, height: int) -> np.ndarray:
    """The uint8 RGB ``[height, width, 3]`` picture of frame ``index``."""
    if not 0 <= index < MAX_FRAMES:
        raise ValueError(f"frame index {index} does not fit in {GRID * GRID} bits")
    img = np.empty((height, width, 3), np.uint8)
    bits = [(index >> (GRID * GRID - 1 - k)) & 1 for k in range(GRID * GRID)]
    for k, bit in enumerate(bits):
        r, c = divmod(k, GRID)
        rows, cols = _block(r, c, width, height)
        img[rows, cols] = ON_RGB if bit else OFF_RGB
    return img


def frame_index(img: np.ndarray) -> int:
    """Recover the index from a decoded (upright, unrotated) frame; raise if a block is ambiguous."""
    height, width = img.shape[:2]
    index = 0
    for k in range(GRID * GRID):
        r, c = divmod(k, GRID)
        rows, cols = _block(r, c, width, height, inner=True)
        mean = img[rows, cols].reshape(-1, 3).mean(axis=0)
        is_on = mean[0] > 160 and mean[2] < 80
        is_off = mean[0] < 80 and mean[2] > 60
        if is_on == is_off:
            raise ValueError(f"block {k} has mean colour {mean.round(1)}, neither on {ON_RGB} nor off {OFF_RGB}")
        index = (index << 1) | int(is_on)
    return index


def _block(r: int, c: int, width: int, height: int, inner: bool = False) -> tuple[slice, slice]:
    y0, y1 = r * height // GRID, (r + 1) * height // GRID
    x0, x1 = c * width // GRID, (c + 1) * width // GRID
    if inner:  # the middle half, away from chroma bleed and ringing at block edges
        dy, dx = (y1 - y0) // 4, (x1 - x0) // 4
        y0, y1, x0, x1 = y0 + dy, y1 - dy, x0 + dx, x1 - dx
    return slice(y0, y1), slice(x0, x1)


def frame_times(duration: float, fps: float, vfr: bool = False) -> np.ndarray:
    """Presentation times (s) of the frames ``make_video`` writes: ``round(duration·fps)`` frames
    (at least one) at ``i/fps``, or, with ``vfr``, at intervals cycling through ``VFR_PATTERN/fps``
    rounded to milliseconds (the VFR time base)."""
    n = max(1, round(duration * fps))
    if not vfr:
        return np.arange(n) / fps
    steps = np.array([VFR_PATTERN[i % len(VFR_PATTERN)] for i in range(n - 1)]) / fps
    times = np.concatenate([[0.0], np.cumsum(steps)])
    return np.round(times * 1000) / 1000


def audio_signal(t: np.ndarray) -> np.ndarray:
    """The audio written at times ``t`` (s): a 200→1200 Hz chirp restarting every second.

    Its phase at whole seconds is a whole number of cycles, so the wave is continuous there.
    """
    tau = np.mod(np.asarray(t, np.float64), 1.0)
    phase = 2 * np.pi * (CHIRP_F0 * tau + 0.5 * CHIRP_RATE * tau**2)
    return (AUDIO_AMPLITUDE * np.sin(phase)).astype(np.float32)


# --------------------------------------------------------------------------------- writers
def make_video(
    path: str | pathlib.Path,
    *,
    duration: float,
    fps: float,
    width: int = 64,
    height: int = 48,
    audio: bool = False,
    audio_rate: int = 44100,
    audio_channels: int = 2,
    audio_start: float = 0.0,
    audio_end: float | None = None,
    gop: int | None = None,
    vfr: bool = False,
    rotation: int = 0,
    codec: str = "h264",
    preset: str = "veryfast",
    faststart: bool = False,
    container_format: str | None = None,
) -> pathlib.Path:
    """Write a video of ``frame_image(i)`` frames at ``frame_times(duration, fps, vfr)``.

    ``rotation`` is the clockwise rotation a player applies to show the stored frames upright (the
    legacy ``rotate`` tag; an upright phone video stored landscape has 90); it is written as a
    display matrix. ``gop`` fixes the keyframe interval (scene-cut keyframes off); ``faststart``
    puts the MP4 index (moov) first, so a truncated copy still opens; ``container_format`` forces
    a muxer (e.g. ``"h264"`` for a raw stream with no container). ``audio`` adds an AAC track
    of ``audio_signal`` as long as the video, or from ``audio_start`` to ``audio_end`` seconds.
    ``codec`` is any PyAV encoder name; ``h264`` is libx264 with B-frames (``preset`` veryfast),
    which exercises frame reordering.
    """
    path = pathlib.Path(path)
    times = frame_times(duration, fps, vfr)
    if len(times) > MAX_FRAMES:
        raise ValueError(f"{len(times)} frames do not fit the {GRID * GRID}-bit frame index")
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", format=container_format, options=options) as out:
        rate = Fraction(fps).limit_denominator(1001)
        time_base = VFR_TIME_BASE if vfr else 1 / rate
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.codec_context.time_base = time_base
        codec_options: dict[str, str] = {}
        if codec in ("h264", "libx264"):
            codec_options["preset"] = preset
            if gop is not None:
                codec_options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
        elif gop is not None:
            vs.codec_context.gop_size = gop
        vs.codec_context.options = codec_options
        if rotation % 360:
            # set_display_rotation takes counter-clockwise degrees; the tag is clockwise.
            vs.set_display_rotation(-float(rotation))
        astream = None
        if audio:
            astream = out.add_stream("aac", rate=audio_rate, layout="stereo" if audio_channels == 2 else "mono")
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(frame_image(i, width, height), format="rgb24")
            frame.pts = int(round(t / time_base))
            frame.time_base = time_base
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if astream is not None:
            end = duration if audio_end is None else audio_end
            _write_audio(out, astream, end, audio_rate, audio_channels, start=audio_start)
    return path


def make_audio_only(
    path: str | pathlib.Path,
    *,
    duration: float,
    audio_rate: int = 44100,
    audio_channels: int = 2,
    codec: str | None = None,
    container_format: str | None = None,
) -> pathlib.Path:
    """Write ``audio_signal`` with no video stream: AAC for ``.m4a``/``.mp4``/``.aac`` (``.aac`` is
    raw ADTS, where files can simply be concatenated), PCM for ``.wav``."""
    path = pathlib.Path(path)
    codec = codec or ("pcm_s16le" if path.suffix == ".wav" else "aac")
    if container_format is None and path.suffix == ".aac":
        container_format = "adts"
    with av.open(str(path), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=audio_rate, layout="stereo" if audio_channels == 2 else "mono")
        _write_audio(out, stream, duration, audio_rate, audio_channels)
    return path


def _write_audio(out, stream, end: float, rate: int, channels: int, start: float = 0.0) -> None:
    """``audio_signal`` from ``start`` to ``end`` seconds (before ``start`` the track has nothing).

    ``start`` is rounded down to a whole encoder frame: PyAV's encoder stamps its frames at
    multiples of the frame size, so any other start would shift the written signal."""
    chunk = stream.codec_context.frame_size or 1024
    first, total = int(round(start * rate)) // chunk * chunk, int(round(end * rate))
    fmt = av.AudioFormat(stream.codec_context.format.name if stream.codec_context.format else "fltp")
    layout = "stereo" if channels == 2 else "mono"
    for start in range(first, total, chunk):
        n = min(chunk, total - start)
        planar = np.repeat(audio_signal((start + np.arange(n)) / rate)[None, :], channels, axis=0)
        data = _to_sample_format(planar, fmt)
        frame = av.AudioFrame.from_ndarray(data, format=fmt.name, layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _to_sample_format(planar: np.ndarray, fmt: av.AudioFormat) -> np.ndarray:
    """float [channels, n] in [-1, 1] -> the array PyAV expects for ``fmt`` (planar or packed)."""
    base = fmt.name.rstrip("p")
    if base in ("s16", "s32"):
        scale = 32767 if base == "s16" else 2**31 - 1
        data = (planar.astype(np.float64) * scale).round().astype(np.int16 if base == "s16" else np.int32)
    elif base == "u8":
        data = (planar * 127 + 128).round().astype(np.uint8)
    else:
        data = planar.astype(np.float32 if base == "flt" else np.float64)
    return np.ascontiguousarray(data if fmt.is_planar else data.T.reshape(1, -1))


def make_truncated(src: str | pathlib.Path, dst: str | pathlib.Path, fraction: float = 0.5) -> pathlib.Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (an interrupted download)."""
    data = pathlib.Path(src).read_bytes()
    dst = pathlib.Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def make_corrupted(
    src: str | pathlib.Path, dst: str | pathlib.Path, *, at: float, length: int = 400, seed: int = 0
) -> pathlib.Path:
    """Copy an MP4 with ``length`` random bytes written over its media data (the ``mdat`` box) at
    fraction ``at`` of it; the index (``moov``) stays intact, so the file opens and then fails to decode."""
    data = bytearray(pathlib.Path(src).read_bytes())
    pos = 0
    while pos + 8 <= len(data):  # walk the top-level boxes: 4-byte big-endian size, 4-byte type
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), bytes(data[pos + 4 : pos + 8])
        if kind == b"mdat":
            lo, hi = pos + 8, pos + size
            start = lo + int((hi - lo - length) * at)
            data[start : start + length] = np.random.default_rng(seed).integers(0, 256, length, dtype=np.uint8).tobytes()
            dst = pathlib.Path(dst)
            dst.write_bytes(bytes(data))
            return dst
        if size < 8:
            break
        pos += size
    raise ValueError(f"{src} has no top-level mdat box")


def make_not_media(path: str | pathlib.Path) -> pathlib.Path:
    """A text file with a video's name."""
    path = pathlib.Path(path)
    path.write_text("this is not a video, just some text that happens to be named like one\n" * 20)
    return path
