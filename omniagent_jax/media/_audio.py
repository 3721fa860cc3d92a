"""An audio range as float32 mono 16 kHz: seek, decode only the range, resample with PyAV, trim by samples."""

from __future__ import annotations

import math

import av
import av.error
import numpy as np

from omniagent_jax.media._open import Opened, seconds, seek, stream_end, stream_start
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
    first_time = stream_start(opened, stream)
    where = f"audio stream #{stream.index} ({stream.codec_context.name})"

    # Also room for the samples dropped to align with the output grid (see _align_to_output_grid).
    rate = stream.codec_context.sample_rate or AUDIO_SAMPLE_RATE
    backoff = _PREROLL_S + 1.0 / math.gcd(rate, AUDIO_SAMPLE_RATE)
    for _ in range(_MAX_SEEK_ATTEMPTS):
        target = max(start - backoff, first_time)
        decoded = _decode(opened, stream, target, start, stop_sample, where)
        if decoded is None:  # the first frame after the seek is later than `start`
            backoff *= 4
            continue
        t0_sample, wave, at_end = decoded
        break
    else:
        t0_sample, wave, at_end = _decode(opened, stream, first_time, start, stop_sample, where, check_start=False)

    # Audio that starts after time 0 is silent before its first sample.
    lead = max(0, t0_sample - first_sample)
    begin = max(0, first_sample - t0_sample)
    out = wave[begin : begin + (stop_sample - first_sample - lead)]
    got_until = t0_sample + len(wave)
    if at_end and got_until < stop_sample:
        stated_end = stream_end(opened, stream)
        expected_until = min(stop_sample, stated_end * AUDIO_SAMPLE_RATE) if stated_end is not None else 0
        if got_until < expected_until - _CUT_SLACK_S * AUDIO_SAMPLE_RATE:
            raise MediaError(
                opened.path,
                "truncated",
                f"{where} ends at {got_until / AUDIO_SAMPLE_RATE:.2f}s but says it lasts {stated_end:.2f}s: "
                "the file is cut short",
            )
    tail = (stop_sample - first_sample) - lead - len(out)
    if lead or tail:
        out = np.concatenate([np.zeros(lead, np.float32), out, np.zeros(max(0, tail), np.float32)])
    return np.ascontiguousarray(out, dtype=np.float32)


def _decode(opened: Opened, stream, target: float, start: float, stop_sample: int, where: str, check_start: bool = True):
    """Decode and resample from a seek to ``target`` until ``stop_sample`` (+ post-roll) or the end.

    Returns (sample index of the first output sample, samples, whether the stream ended), or None
    when ``check_start`` and the first frame begins after ``start`` (the seek overshot)."""
    resampler: av.AudioResampler | None = None
    source_format: tuple | None = None
    chunks: list[np.ndarray] = []
    have = 0
    t0_sample: int | None = None
    to_drop = 0
    want = stop_sample + round(_POSTROLL_S * AUDIO_SAMPLE_RATE)
    previous: float | None = None
    try:
        decoder = _fresh_decoder(stream)
        seek(opened, stream, target, where)
        for packet in opened.container.demux(stream):
            for frame in decoder.decode(packet if packet.size else None):
                if frame.pts is not None:
                    previous = seconds(frame.pts, stream.time_base) - opened.origin
                if t0_sample is None:
                    t0 = previous if previous is not None else target
                    if check_start and t0 > start + FRAME_TIME_EPS and target > stream_start(opened, stream):
                        return None
                    t0_sample, to_drop = _align_to_output_grid(t0, frame.sample_rate)
                if to_drop:
                    dropped = min(to_drop, frame.samples)
                    to_drop -= dropped
                    frame = _drop_head(frame, dropped)
                    if frame is None:
                        continue
                frame_format = (frame.format.name, frame.layout.name, frame.sample_rate)
                if frame_format != source_format:
                    # A resampler is built for one input format; broadcasts switch between stereo
                    # and 5.1 mid-stream. Drain the old one so no sample is lost, then start anew.
                    if resampler is not None:
                        have += _drain(resampler, chunks)
                    resampler, source_format = _resampler(), frame_format
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    have += out.samples
                if t0_sample + have >= want:
                    return t0_sample, _join(chunks), False
        if resampler is not None:
            have += _drain(resampler, chunks)
    except av.error.FFmpegError as e:
        good = f", last good frame at {previous:.3f}s" if previous is not None else ""
        raise MediaError(opened.path, "decode", f"{where}: FFmpeg failed decoding from {target:.3f}s{good}: {e}") from e
    if t0_sample is None:
        t0_sample = round(target * AUDIO_SAMPLE_RATE)
    return t0_sample, _join(chunks), True


def _resampler() -> av.AudioResampler:
    # rematrix_maxval=1 normalises the downmix: mono = mean of the channels. Without it FFmpeg's
    # float path sums stereo at 1/sqrt(2) each, i.e. 1.41x louder than librosa's mono.
    return av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE, options={"rematrix_maxval": "1.0"})


def _drain(resampler: av.AudioResampler, chunks: list[np.ndarray]) -> int:
    """Flush the samples still in ``resampler``'s delay line into ``chunks``; return how many."""
    count = 0
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray().reshape(-1))
        count += out.samples
    return count


def _fresh_decoder(stream) -> av.codec.context.CodecContext:
    """A new decoder for ``stream``. FFmpeg's AAC decoder keeps a little state across a flush, so
    reusing the stream's decoder after an earlier request changes the output in the last bits;
    a fresh one per request makes a reused `VideoReader` give exactly what a one-shot call gives."""
    source = stream.codec_context
    try:
        decoder = av.CodecContext.create(source.codec.name, "r")
        decoder.extradata = source.extradata
        decoder.sample_rate = source.sample_rate
        decoder.layout = source.layout
        if source.format is not None:
            decoder.format = source.format
    except (av.error.FFmpegError, ValueError) as e:
        raise MediaError(stream.container.name, "decode", f"cannot create a {source.name} audio decoder: {e}") from e
    return decoder


def _align_to_output_grid(t0: float, rate: int) -> tuple[int, int]:
    """Output sample j of the resampler is input time t0 + j/16000; unless t0 is on the 16 kHz
    grid that puts every sample up to half a sample off. Dropping the first few input samples
    moves the start to the next instant on both grids (every rate/gcd(rate, 16000) input samples:
    441 at 44.1 kHz, 3 at 48 kHz). Returns (the output sample index of that instant, how many
    input samples to drop)."""
    n0 = round(t0 * rate)
    period = rate // math.gcd(rate, AUDIO_SAMPLE_RATE)
    drop = (-n0) % period
    return (n0 + drop) * AUDIO_SAMPLE_RATE // rate, drop


def _drop_head(frame: av.AudioFrame, count: int) -> av.AudioFrame | None:
    """``frame`` without its first ``count`` samples (None when nothing is left)."""
    if count == 0:
        return frame
    if count >= frame.samples:
        return None
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    data = data[:, count:] if frame.format.is_planar else data[:, count * channels :]
    trimmed = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=frame.format.name, layout=frame.layout.name)
    trimmed.sample_rate = frame.sample_rate
    trimmed.time_base = frame.time_base
    return trimmed


def _join(chunks: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)


