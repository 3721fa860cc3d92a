"""Opening a file with PyAV and learning what it holds (`VideoInfo`), failing with `MediaError`."""

from __future__ import annotations

import bisect
import dataclasses
import math
import os
from fractions import Fraction

import av
import av.error
import av.stream

from omniagent_jax.media.errors import MediaError
from omniagent_jax.media.info import VideoInfo

# FFmpeg opens almost anything as *something*: plain text becomes an "ANSI art" video (tty demuxer).
_NOT_MEDIA_FORMATS = frozenset({"tty", "bin", "xbin", "adf", "idf", "lavfi"})
_NOT_MEDIA_VIDEO_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
# Probing decodes the first frame (for its rotation, and to prove the stream decodes); a stream
# that yields nothing after this many packets is broken.
_MAX_PACKETS_TO_FIRST_FRAME = 512
# How many of the last index entries to scan for the furthest byte the index points at.
_INDEX_TAIL = 16
_AV_TIME_BASE = 1_000_000


@dataclasses.dataclass
class Opened:
    """An open container and what `inspect` learned about it."""

    path: str
    container: av.container.InputContainer
    info: VideoInfo
    video: av.video.stream.VideoStream | None
    audio: av.audio.stream.AudioStream | None
    origin: float  # seconds: the file's first timestamp, which is time 0 for every request
    video_end: float | None  # seconds (relative to origin): where the video stream says it ends
    # MP4/MOV load their whole sample table when opened, and `inspect` checked it against the
    # file size; other demuxers build their index while reading, so it proves nothing.
    full_index: bool = False


def open_media(path: str | os.PathLike[str]) -> Opened:
    """Open ``path`` and inspect it; the container is closed again if inspection fails."""
    path = os.fspath(path)
    container = _open_container(path)
    try:
        return _inspect(path, container)
    except BaseException:
        container.close()
        raise


def _open_container(path: str) -> av.container.InputContainer:
    if not os.path.exists(path):
        raise MediaError(path, "not_found", "no such file")
    if not os.path.isfile(path):
        raise MediaError(path, "not_media", "not a regular file (a directory or a device?)")
    size = os.path.getsize(path)
    if size == 0:
        raise MediaError(path, "not_media", "the file is empty")
    try:
        return av.open(path, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as e:
        if _looks_like_mp4(path):
            raise MediaError(
                path,
                "truncated",
                f"an MP4/MOV file ({size:,} bytes) that FFmpeg cannot open ({e.strerror}): its index (moov atom) "
                "is missing or damaged, which is what an interrupted recording, download or copy leaves behind",
            ) from e
        raise MediaError(path, "not_media", f"FFmpeg cannot read it as audio or video ({e.strerror})") from e
    except (OSError, UnicodeDecodeError) as e:
        raise MediaError(path, "not_media", f"cannot open it: {e}") from e


def _looks_like_mp4(path: str) -> bool:
    """An ISO base media file starts with a box whose type is ftyp (or a moov/mdat/free/wide box)."""
    with open(path, "rb") as f:
        head = f.read(12)
    return len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")


def seconds(ts: int, time_base: Fraction | None) -> float:
    """A timestamp in ``time_base`` units, in seconds."""
    return float(ts * time_base) if time_base is not None else float(ts)


def stream_start(opened: Opened, stream: av.stream.Stream) -> float:
    """The first timestamp of ``stream``, in seconds from the file's time 0."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return seconds(stream.start_time, stream.time_base) - opened.origin


def seek(opened: Opened, stream: av.stream.Stream, target: float, where: str) -> None:
    """Seek ``stream`` to the keyframe at or before ``target`` (s); at or before the stream's first
    timestamp, rewind to its very beginning instead."""
    time_base = stream.time_base
    if target > stream_start(opened, stream):
        try:
            opened.container.seek(int(math.floor((target + opened.origin) / time_base)), backward=True, stream=stream)
            return
        except av.error.FFmpegError:
            pass  # some demuxers refuse some targets (AVI): decoding from the start is slower but right
    # A seek to exactly the first timestamp can land mid-GOP (MPEG-TS seeks by dts, not keyframe),
    # so aim a second earlier; some demuxers (AVI) refuse that, then aim at the start itself.
    first = stream.start_time if stream.start_time is not None else 0
    errors = []
    for offset in (first - int(1 / time_base), first):
        try:
            opened.container.seek(offset, backward=True, stream=stream)
            return
        except av.error.FFmpegError as e:
            errors.append(e)
    try:
        opened.container.seek(0, backward=True)
    except av.error.FFmpegError as e:
        raise MediaError(opened.path, "decode", f"{where}: cannot seek to the start: {errors[0]}; {e}") from e


def _inspect(path: str, container: av.container.InputContainer) -> Opened:
    fmt = container.format.name
    video = next(
        (s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic), None
    )
    audio = container.streams.audio[0] if container.streams.audio else None
    for stream in (video, audio):
        if stream is not None and stream.codec_context is None:  # PyAV has no decoder for it
            raise MediaError(path, "decode", f"no decoder for {stream.type} stream #{stream.index} in this FFmpeg build")
    if fmt in _NOT_MEDIA_FORMATS or (video is not None and video.codec_context.name in _NOT_MEDIA_VIDEO_CODECS):
        raise MediaError(path, "not_media", f"not audio or video: FFmpeg reads it as {fmt!r} (text or binary data)")
    if video is None and audio is None:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise MediaError(path, "not_media", f"no audio or video stream (streams: {', '.join(kinds)})")
    _check_index_against_size(path, container, [s for s in (video, audio) if s is not None])

    origin = container.start_time / _AV_TIME_BASE if container.start_time is not None else 0.0
    video_end = _stream_end(video, origin) if video is not None else None
    full_index = "mp4" in fmt.split(",") and video is not None and len(video.index_entries) > 0
    fps = _frame_rate(video) if video is not None else 0.0
    if video is not None and not fps > 0:
        raise MediaError(path, "decode", f"video stream #{video.index} ({video.codec_context.name}) has no frame rate")
    duration = _duration(container, video, audio, origin, fps)
    if duration is None:
        raise MediaError(
            path,
            "decode",
            f"cannot determine the duration: this {fmt} file states none, nor do its streams or a frame count "
            "(a raw elementary stream? remux it into MP4 or MKV)",
        )

    rotation = width = height = num_frames = 0
    if video is not None:
        # No frame threading: it costs a thread hand-off per seek and this layer runs in parallel
        # data-loader workers anyway (measured slower here for seeks and for forward passes).
        rotation = _first_frame_rotation(path, container, video)
        width, height = video.codec_context.width, video.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        num_frames = video.frames if video.frames > 0 else max(1, round((video_end or duration) * fps))
    info = VideoInfo(
        path=path,
        duration=duration,
        fps=fps,
        num_frames=num_frames,
        has_audio=audio is not None,
        width=width,
        height=height,
        rotation=rotation,
        video_codec=video.codec_context.name if video is not None else None,
        audio_codec=audio.codec_context.name if audio is not None else None,
        audio_sample_rate=audio.codec_context.sample_rate if audio is not None else None,
    )
    return Opened(path, container, info, video, audio, origin, video_end, full_index)


def _frame_rate(video: av.video.stream.VideoStream) -> float:
    for rate in (video.average_rate, video.guessed_rate, video.base_rate):
        if rate is not None and rate > 0 and math.isfinite(float(rate)):
            return float(rate)
    return 0.0


def stream_end(opened: Opened, stream: av.stream.Stream) -> float | None:
    """Where ``stream`` says it ends (s from time 0), or None when it does not say."""
    return _stream_end(stream, opened.origin)


def _stream_end(stream: av.stream.Stream, origin: float) -> float | None:
    start = seconds(stream.start_time, stream.time_base) - origin if stream.start_time is not None else 0.0
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        return start + seconds(stream.duration, stream.time_base)
    # Matroska keeps per-stream durations as a tag ("00:00:03.023000000").
    tag = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if tag:
        try:
            h, m, sec = tag.split(":")
            return start + int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            return None
    return None


def _duration(container, video, audio, origin: float, fps: float) -> float | None:
    """The container's duration, else the latest stream end, else frames / fps; None if unknown."""
    candidates = []
    if container.duration is not None and container.duration > 0:
        candidates.append(container.duration / _AV_TIME_BASE)
    else:
        candidates += [end for s in (video, audio) if s is not None and (end := _stream_end(s, origin)) is not None]
        if not candidates and video is not None and video.frames > 0 and fps > 0:
            candidates.append(video.frames / fps)
    candidates = [c for c in candidates if math.isfinite(c) and c > 0]
    return max(candidates) if candidates else None


def _check_index_against_size(path: str, container, streams) -> None:
    """An index (MP4 sample table, MKV cues) that points past the end of the file means the file
    was cut short: say so now rather than silently returning the wrong frames later."""
    size = os.path.getsize(path)
    for stream in streams:
        entries = stream.index_entries
        n = len(entries)
        if n == 0:
            continue
        tail = [entries[i] for i in range(max(0, n - _INDEX_TAIL), n)]
        needed = max(e.pos + e.size for e in tail)
        if needed <= size:
            continue
        # Entries are in time order and (nearly) in file order: bisect for the last one present.
        positions = _LazyPositions(entries)
        cut = bisect.bisect_right(positions, size) - 1
        kept = seconds(entries[cut].timestamp, stream.time_base) if cut >= 0 else 0.0
        total = seconds(entries[n - 1].timestamp, stream.time_base)
        raise MediaError(
            path,
            "truncated",
            f"the file has {size:,} bytes but the index of its {stream.type} stream #{stream.index} points to data up to "
            f"byte {needed:,}: it is cut short at about {kept:.2f}s of {total:.2f}s (an interrupted download or copy?)",
        )


class _LazyPositions:
    """A sequence view of index-entry byte positions for `bisect` (no list of a million entries)."""

    def __init__(self, entries) -> None:
        self.entries = entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> int:
        return self.entries[i].pos


def _first_frame_rotation(path: str, container, video) -> int:
    """Decode the first frame: proves the stream decodes and gives the display-matrix rotation
    (FFmpeg attaches the stream's matrix to every decoded frame)."""
    try:
        for n, packet in enumerate(container.demux(video)):
            for frame in packet.decode():
                # VideoFrame.rotation is counter-clockwise in [-180, 180]; we report clockwise.
                return int(round(-frame.rotation / 90.0)) % 4 * 90
            if n >= _MAX_PACKETS_TO_FIRST_FRAME:
                break
    except av.error.FFmpegError as e:
        raise MediaError(
            path, "decode", f"cannot decode the first frame of video stream #{video.index} ({video.codec_context.name}): {e}"
        ) from e
    raise MediaError(
        path,
        "decode",
        f"video stream #{video.index} ({video.codec_context.name}) yields no frame (is the file damaged or cut short?)",
    )
