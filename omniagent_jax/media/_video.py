"""Video frames at given times: seek to the keyframe before a time, decode forward only as needed.

The rule is the reference's ``ffmpeg -ss t``: the frame for ``t`` is the first one whose
presentation time is at or after ``t`` (:data:`FRAME_TIME_EPS`). Several times are served in
one forward pass while no keyframe lies between the decoder's position and the next time; past
such a keyframe a seek is cheaper than decoding the frames in between.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import av
import av.error
import numpy as np

from omniagent_jax.media._open import Opened, seconds, seek, stream_start
from omniagent_jax.media.constants import FRAME_TIME_EPS
from omniagent_jax.media.errors import MediaError

# A seek that lands after the requested time (the keyframe found by dts shows later than t, e.g.
# with B-frames) is retried this many times, each time further back; then we decode from the start.
_MAX_SEEK_ATTEMPTS = 6
_FIRST_BACKOFF_S = 1.0
# Without an index we cannot see keyframes: seek only when the next time is this far ahead.
_NO_INDEX_SEEK_GAP_S = 2.0
# A packet scan without decode timestamps stops this many packets after the first one past the end.
_PACKETS_PAST_END = 32
# Without an index to check against, a video that stops this much before its stated end is cut short.
_CUT_SLACK_S = 0.5

TimedFrame = tuple[float, av.VideoFrame]


class FrameDecoder:
    """Frames of the video stream of an open container (not thread-safe: one request at a time)."""

    def __init__(self, opened: Opened) -> None:
        if opened.video is None:
            raise MediaError(opened.path, "no_video", "no video stream (an audio-only file?)")
        self.o = opened
        self.stream = opened.video
        self.time_base = self.stream.time_base
        self.fps = opened.info.fps
        self.stream_start = stream_start(opened, self.stream)
        self._where = f"video stream #{self.stream.index} ({self.stream.codec_context.name})"

    # ------------------------------------------------------------------------------- frames
    def frames_at(self, times: Sequence[float]) -> list[tuple[float, np.ndarray]]:
        """For each time of ``times`` (ascending, unique, seconds): the time and the upright RGB
        pixels of the first frame at or after it, or of the last frame when none starts that late."""
        out: list[tuple[float, np.ndarray]] = []
        frames: Iterator[TimedFrame] | None = None
        last: TimedFrame | None = None
        k = 0
        try:
            while k < len(times):
                t = times[k]
                if frames is None or self._seek_pays(last[0] if last else -math.inf, t):
                    if frames is not None:
                        frames.close()
                    frames, last = self._decode_near(t), None
                for timed in frames:
                    last = timed
                    if timed[0] >= t - FRAME_TIME_EPS:
                        pixels = self._rgb(timed[1])
                        # The same frame is the first at or after every time up to its own.
                        while k < len(times) and times[k] <= timed[0] + FRAME_TIME_EPS:
                            out.append((timed[0], pixels))
                            k += 1
                        break
                else:  # end of stream: the last frame is the one on screen from then on
                    if last is None:
                        raise MediaError(self.o.path, "decode", f"{self._where}: no frame decodes at or after {t:.3f}s")
                    self._check_not_cut(last[0], t)
                    pixels = self._rgb(last[1])
                    out += [(last[0], pixels)] * (len(times) - k)
                    k = len(times)
        finally:
            if frames is not None:
                frames.close()
        return out

    def frame_times(self, start: float, end: float) -> np.ndarray:
        """Presentation times of the frames in ``[start, end)``, ascending, from packet timestamps
        (demuxing only), or by decoding when the packets carry none."""
        scan = None
        for target in self._seek_targets(start):
            scan = self._packet_times(target, end)
            if scan is None:
                return self._decoded_times(start, end)
            times, reached_end = scan
            if (times and times[0] <= start + FRAME_TIME_EPS) or target <= self.stream_start:
                break
        else:
            scan = self._packet_times(self.stream_start, end)
            if scan is None:
                return self._decoded_times(start, end)
        times, reached_end = scan
        if reached_end and end > max(times, default=-math.inf) + 1.0 / self.fps:
            self._check_not_cut(max(times, default=self.stream_start), end)
        arr = np.unique(np.asarray(times, np.float64))
        return arr[(arr >= start - FRAME_TIME_EPS) & (arr < end - FRAME_TIME_EPS)]

    # ----------------------------------------------------------------------------- seeking
    def _seek_targets(self, t: float) -> Iterator[float]:
        """Where to seek for ``t``: ``t`` itself, then further and further back, never before the start."""
        backoff = 0.0
        for _ in range(_MAX_SEEK_ATTEMPTS):
            target = max(t - backoff, self.stream_start)
            yield target
            if target <= self.stream_start:
                return
            backoff = max(2 * backoff, _FIRST_BACKOFF_S)

    def _decode_near(self, t: float) -> Iterator[TimedFrame]:
        """Frames from a seek point whose first frame is at or before ``t`` (so nothing at or after
        ``t`` was skipped), or from the start of the stream."""
        for target in self._seek_targets(t):
            frames = self._decode_from(target)
            first = next(frames, None)
            if first is not None and (first[0] <= t + FRAME_TIME_EPS or target <= self.stream_start):
                yield first
                yield from frames
                return
            frames.close()
            if first is None and target <= self.stream_start:
                return
        yield from self._decode_from(self.stream_start)

    def _seek_pays(self, position: float, t: float) -> bool:
        """Whether seeking for ``t`` skips decoding: a keyframe lies between ``position`` (the last
        frame decoded) and ``t``. Keyframe times come from the index when there is one."""
        if t <= position + max(1.0 / self.fps, FRAME_TIME_EPS):
            return False
        entries = self.stream.index_entries
        if len(entries) == 0:
            return t - position > _NO_INDEX_SEEK_GAP_S
        # MP4 index timestamps are decode times, which run ahead of presentation times by the
        # B-frame delay; the first entry against the stream's start time measures that delay.
        shift = 0
        if self.stream.start_time is not None:
            shift = max(0, self.stream.start_time - entries[0].timestamp)
        i = entries.search_timestamp(self._offset(t) - shift, backward=True)
        if i < 0:
            return False
        return seconds(entries[i].timestamp + shift, self.time_base) - self.o.origin > position

    def _offset(self, t: float) -> int:
        return int(math.floor((t + self.o.origin) / self.time_base))

    def _seek(self, target: float) -> None:
        seek(self.o, self.stream, target, self._where)

    # ---------------------------------------------------------------------------- decoding
    def _decode_from(self, target: float) -> Iterator[TimedFrame]:
        self._seek(target)
        previous: float | None = None
        try:
            for packet in self.o.container.demux(self.stream):
                for frame in packet.decode():
                    previous = self._time(frame.pts, previous)
                    yield previous, frame
        except av.error.FFmpegError as e:
            good = f", last good frame at {previous:.3f}s" if previous is not None else ""
            raise MediaError(
                self.o.path, "decode", f"{self._where}: FFmpeg failed decoding from the keyframe before {target:.3f}s{good}: {e}"
            ) from e

    def _time(self, pts: int | None, previous: float | None) -> float:
        if pts is not None:
            return seconds(pts, self.time_base) - self.o.origin
        # No timestamp (raw elementary streams): assume the nominal frame interval.
        return (previous + 1.0 / self.fps) if previous is not None else self.stream_start

    def _packet_times(self, target: float, end: float) -> tuple[list[float], bool] | None:
        """Presentation times of the packets from a seek to ``target`` (the first is the keyframe
        the seek found) until none can be before ``end``, and whether the stream ended first;
        None when a packet has no timestamp."""
        self._seek(target)
        times: list[float] = []
        past_end = 0
        try:
            for packet in self.o.container.demux(self.stream):
                if packet.size == 0:  # the flush packet at the end of the stream
                    continue
                if packet.pts is None:
                    return None
                if packet.is_discard:  # before an edit list's start: the decoder drops it
                    continue
                t = seconds(packet.pts, self.time_base) - self.o.origin
                times.append(t)
                if packet.dts is not None:
                    # Decode order: a later packet has a later dts, and pts >= dts.
                    if seconds(packet.dts, self.time_base) - self.o.origin >= end - FRAME_TIME_EPS:
                        return times, False
                elif t >= end - FRAME_TIME_EPS:
                    past_end += 1
                    if past_end >= _PACKETS_PAST_END:
                        return times, False
        except av.error.FFmpegError as e:
            raise MediaError(
                self.o.path, "decode", f"{self._where}: FFmpeg failed reading packets near {target:.3f}s: {e}"
            ) from e
        return times, True

    def _decoded_times(self, start: float, end: float) -> np.ndarray:
        times = []
        frames = self._decode_near(start)
        try:
            for t, _ in frames:
                if t >= end - FRAME_TIME_EPS:
                    break
                if t >= start - FRAME_TIME_EPS:
                    times.append(t)
        finally:
            frames.close()
        return np.asarray(times, np.float64)

    # ---------------------------------------------------------------------------- checking
    def _check_not_cut(self, last: float, t: float) -> None:
        """The stream ended before ``t``. With a full index `inspect` already proved the file whole;
        without one, a stream that stops well before its stated end was cut short."""
        if self.o.full_index:
            return
        stated_end = self.o.video_end if self.o.video_end is not None else self.o.info.duration
        if last < stated_end - 1.0 / self.fps - max(_CUT_SLACK_S, 2.0 / self.fps):
            raise MediaError(
                self.o.path,
                "truncated",
                f"{self._where} ends with a frame at {last:.2f}s but the file says it lasts {stated_end:.2f}s, "
                f"so there is no frame for {t:.2f}s: the file is cut short",
            )

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """Upright RGB24 pixels at the stream's nominal size."""
        width, height = self.stream.codec_context.width, self.stream.codec_context.height
        if (frame.width, frame.height) != (width, height) and width > 0 and height > 0:
            # A mid-stream size change: keep every frame of a request the same shape.
            frame = frame.reformat(width=width, height=height)
        pixels = frame.to_ndarray(format="rgb24")
        # rotation is clockwise; np.rot90 turns counter-clockwise for positive k.
        k = {0: 0, 90: -1, 180: 2, 270: 1}[self.o.info.rotation]
        return np.ascontiguousarray(np.rot90(pixels, k)) if k else pixels
