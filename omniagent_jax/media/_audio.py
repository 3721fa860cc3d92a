"""An audio range as float32 mono 16 kHz: seek, decode only the range, resample with PyAV, trim by samples."""

from __future__ import annotations

import av
import av.error
import numpy as np

from omniagent_jax.media._open import Opened, seconds
from omniagent_jax.media.constants import AUDIO_SAMPLE_RATE, FRAME_TIME_EPS
from omniagent_jax.media.errors import MediaError

# Decode from a little before `start`, so the resampler's filter has settled by the first kept sample.
_PREROLL_S = 0.1
# ... and a little past `end`, so the resampler's delay line has emitted every kept sample.
_POSTROLL_S = 0.05
_MAX_SEEK_ATTEMPTS = 6
# The audio stream may stop short of the container's end (a video longer than its audio): that
# part is silence. Stopping more than this before the audio stream's own stated end means the file is cut.
_CUT_SLACK_S = 0.5


def read_audio_range(opened: Opened, start: float, end: float) -> np.ndarray:
    """Samples ``round(start·16k)`` up to ``round(end·16k)`` of the first audio stream, downmixed to
    mono as the mean of the channels (what librosa's ``mono=True`` gives the reference)."""
    stream = opened.audio
    if stream is None:
        raise MediaError(opened.path, "no_audio", "no audio stream")
    first_sample = round(start * AUDIO_SAMPLE_RATE)
    stop_sample = round(end * AUDIO_SAMPLE_RATE)
    stream_start = _stream_start(opened, stream)
    where = f"audio stream #{stream.index} ({stream.codec_context.name})"

    backoff = _PREROLL_S
    for _ in range(_MAX_SEEK_ATTEMPTS):
        target = max(start - backoff, stream_start)
        decoded = _decode(opened, stream, target, start, stop_sample, where)
        if decoded is None:  # the first frame after the seek is later than `start`
            backoff *= 4
            continue
        t0_sample, wave, at_end = decoded
        break
    else:
        t0_sample, wave, at_end = _decode(opened, stream, stream_start, start, stop_sample, where, check_start=False)

    # Audio that starts after time 0 is silent before its first sample.
    lead = max(0, t0_sample - first_sample)
    begin = max(0, first_sample - t0_sample)
    out = wave[begin : begin + (stop_sample - first_sample - lead)]
    got_until = t0_sample + len(wave)
    if at_end and got_until < stop_sample:
        stated_end = _stream_end(opened, stream)
        if stated_end is not None and got_until < min(stop_sample, stated_end * AUDIO_SAMPLE_RATE) - _CUT_SLACK_S * AUDIO_SAMPLE_RATE:
            raise MediaError(
                opened.path,
                "truncated",
                f"{where} ends at {got_until / AUDIO_SAMPLE_RATE:.2f}s but says it lasts {stated_end:.2f}s: the file is cut short",
            )
    tail = (stop_sample - first_sample) - lead - len(out)
    if lead or tail:
        out = np.concatenate([np.zeros(lead, np.float32), out, np.zeros(max(0, tail), np.float32)])
    return np.ascontiguousarray(out, dtype=np.float32)


def _decode(opened: Opened, stream, target: float, start: float, stop_sample: int, where: str, check_start: bool = True):
    """Decode and resample from a seek to ``target`` until ``stop_sample`` (+ post-roll) or the end.

    Returns (sample index of the first output sample, samples, whether the stream ended), or None
    when ``check_start`` and the first frame begins after ``start`` (the seek overshot)."""
    offset = int((target + opened.origin) / stream.time_base)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE, options={"rematrix_maxval": "1.0"})
    chunks: list[np.ndarray] = []
    have = 0
    t0_sample: int | None = None
    want = stop_sample + round(_POSTROLL_S * AUDIO_SAMPLE_RATE)
    previous: float | None = None
    try:
        opened.container.seek(offset, backward=True, stream=stream)
        for packet in opened.container.demux(stream):
            for frame in packet.decode():
                if frame.pts is not None:
                    previous = seconds(frame.pts, stream.time_base) - opened.origin
                if t0_sample is None:
                    t0 = previous if previous is not None else target
                    if check_start and t0 > start + FRAME_TIME_EPS and target > _stream_start(opened, stream):
                        return None
                    t0_sample = round(t0 * AUDIO_SAMPLE_RATE)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    have += out.samples
                if t0_sample + have >= want:
                    return t0_sample, _join(chunks), False
        for out in resampler.resample(None):  # drain the resampler's delay line
            chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as e:
        at = f"after {previous:.3f}s" if previous is not None else f"near {target:.3f}s"
        raise MediaError(opened.path, "decode", f"{where}: FFmpeg failed {at}: {e}") from e
    if t0_sample is None:
        t0_sample = round(target * AUDIO_SAMPLE_RATE)
    return t0_sample, _join(chunks), True


def _join(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)


def _stream_start(opened: Opened, stream) -> float:
    return seconds(stream.start_time, stream.time_base) - opened.origin if stream.start_time is not None else 0.0


def _stream_end(opened: Opened, stream) -> float | None:
    if stream.duration is None or stream.duration <= 0:
        return None
    return seconds((stream.start_time or 0) + stream.duration, stream.time_base) - opened.origin
