"""Media extraction (issue 3): does the cost of a frame request follow the request or the video?

(a) 8 frames spread over a 60-minute synthetic video vs over a 1-minute one (same encoding:
    160×120, 5 fps, H.264 with B-frames, fixed GOP): the ratio of times should stay ≤ 2.
(b) one get_frames request (8 frames) vs two baselines side by side: decoding everything from
    the start up to the last requested time (a reader that does not seek), and one `ffmpeg -ss t`
    subprocess per frame (the reference's way; skipped with a note when ffmpeg is not on PATH).
    Run on the real 1080p demo video (tests/data/reference/demo_inference.mp4), and on the 60-minute video.

The synthetic videos are written once into a cache folder in the system temp dir and reused.
Results are printed and written to benchmarks/RESULTS.md, section "Media (issue 3)" (that
section is replaced on a re-run; other sections are left as they are).

    .venv/bin/python benchmarks/media.py [--repeats 15] [--gops 50 250] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import av  # noqa: E402
import media_factory as mf  # noqa: E402

from omniagent_jax import media  # noqa: E402

CACHE = pathlib.Path(tempfile.gettempdir()) / "omniagent_jax_media_bench"
REAL_VIDEO = REPO / "tests" / "data" / "reference" / "demo_inference.mp4"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Media (issue 3)"
WIDTH, HEIGHT, FPS, NUM_FRAMES = 160, 120, 5, 8


# ------------------------------------------------------------------------------------ inputs
def synthetic(minutes: int, gop: int) -> pathlib.Path:
    """The cached synthetic video (written on first use; rewritten if the cached copy is unreadable)."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"synthetic_{minutes}min_{WIDTH}x{HEIGHT}_{FPS}fps_gop{gop}.mp4"
    if path.exists():
        try:
            if abs(media.probe(path).duration - minutes * 60) < 1:
                return path
        except media.MediaError:
            pass
    t0 = time.perf_counter()
    partial = path.with_suffix(".partial.mp4")
    mf.make_video(partial, duration=minutes * 60, fps=FPS, width=WIDTH, height=HEIGHT, gop=gop, preset="veryfast")
    partial.replace(path)
    print(f"  wrote {path.name} in {time.perf_counter() - t0:.1f}s", flush=True)
    return path


def spread(duration: float, n: int = NUM_FRAMES) -> list[float]:
    """n times spread over the whole video, as a get_frames over [0, duration] asks for them."""
    return np.linspace(0.0, duration, n).tolist()


# ---------------------------------------------------------------------------------- requests
def ours(path: pathlib.Path, times: Sequence[float]) -> np.ndarray:
    return media.read_frames(path, times)


def decode_up_to(path: pathlib.Path, times: Sequence[float]) -> np.ndarray:
    """Baseline: decode from the start, keep the first frame at/after each time (no seeking)."""
    duration = media.probe(path).duration
    wanted = sorted(min(max(t, 0.0), duration - media.FRAME_END_MARGIN) for t in times)
    picked: dict[float, np.ndarray] = {}
    last = None
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        k = 0
        for frame in c.decode(stream):
            last = frame
            while k < len(wanted) and float(frame.pts * stream.time_base) >= wanted[k] - media.FRAME_TIME_EPS:
                picked[wanted[k]] = frame.to_ndarray(format="rgb24")
                k += 1
            if k == len(wanted):
                break
        for t in wanted[k:]:
            picked[t] = last.to_ndarray(format="rgb24")
    return np.stack([picked[min(max(t, 0.0), duration - media.FRAME_END_MARGIN)] for t in times])


def ffmpeg_per_frame(path: pathlib.Path, times: Sequence[float]) -> np.ndarray:
    """Baseline: one `ffmpeg -ss t` process per frame, PNG through a pipe (the reference writes a
    JPEG temp file per frame; the pipe keeps this baseline from touching the disk)."""
    from PIL import Image

    duration = media.probe(path).duration
    out = []
    for t in times:
        t = min(max(t, 0.0), duration - media.FRAME_END_MARGIN)
        cmd = ["ffmpeg", "-v", "error", "-ss", f"{t:.6f}", "-i", str(path), "-frames:v", "1"]
        cmd += ["-f", "image2pipe", "-vcodec", "png", "-"]
        png = subprocess.run(cmd, capture_output=True, check=True, timeout=120).stdout
        out.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
    return np.stack(out)


def minimum_decodes(path: pathlib.Path, times: Sequence[float]) -> int:
    """Frames any correct reader must decode: for each asked time, its frame and every frame from
    the keyframe before it (one union, so a forward pass shared by several times counts once)."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        packets = [(float(p.pts * stream.time_base), p.is_keyframe) for p in c.demux(stream) if p.pts is not None]
    packets.sort()
    frame_times = np.array([t for t, _ in packets])
    keyframes = np.array([i for i, (_, key) in enumerate(packets) if key])
    duration = media.probe(path).duration
    needed: set[int] = set()
    for t in times:
        t = min(max(t, 0.0), duration - media.FRAME_END_MARGIN)
        i = min(int(np.searchsorted(frame_times, t - media.FRAME_TIME_EPS)), len(frame_times) - 1)
        k = int(keyframes[np.searchsorted(keyframes, i, side="right") - 1])
        needed.update(range(k, i + 1))
    return len(needed)


def counted_decodes(fn: Callable[[], object]) -> int:
    """How many frames our reader decodes for one call (counts what its decode loop yields)."""
    from omniagent_jax.media import _video

    original = _video.FrameDecoder._decode_from
    count = 0

    def counting(self, target):
        nonlocal count
        for item in original(self, target):
            count += 1
            yield item

    _video.FrameDecoder._decode_from = counting
    try:
        fn()
    finally:
        _video.FrameDecoder._decode_from = original
    return count


def timed(*fns: Callable[[], object], repeats: int) -> list[float]:
    """Best wall time of each function over `repeats` rounds, after one warm-up call each (page
    cache, lazy imports). The calls of a round are interleaved, so load from other processes on
    this shared machine hits them alike, and the minimum is the least disturbed run."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


# -------------------------------------------------------------------------------- benchmarks
def bench_length(gop: int, repeats: int) -> list[str]:
    short, long = synthetic(1, gop), synthetic(60, gop)
    rows = []
    times_short, times_long = spread(media.probe(short).duration), spread(media.probe(long).duration)
    # Same pixels as decoding in order: the benchmark measures a correct reader.
    assert np.array_equal(ours(long, times_long), decode_up_to(long, times_long))
    t_short, t_long = timed(lambda: ours(short, times_short), lambda: ours(long, times_long), repeats=repeats)
    with media.open_video(short) as rs, media.open_video(long) as rl:
        w_short, w_long = timed(lambda: rs.frames(times_short), lambda: rl.frames(times_long), repeats=repeats)
    ratio, warm_ratio = t_long / t_short, w_long / w_short
    decoded = [counted_decodes(lambda p=p, ts=ts: ours(p, ts)) for p, ts in ((short, times_short), (long, times_long))]
    minimum = [minimum_decodes(p, ts) for p, ts in ((short, times_short), (long, times_long))]
    rows.append(
        f"| (a) 8 frames, keyframe every {gop} frames ({gop / FPS:.0f} s) | 1 min: {t_short * 1e3:.1f} ms "
        f"| 60 min: {t_long * 1e3:.1f} ms | **{ratio:.2f}×** {'✓' if ratio <= 2 else '✗'} (target ≤ 2) |"
    )
    rows.append(
        f"| (a) same, reader already open | 1 min: {w_short * 1e3:.1f} ms | 60 min: {w_long * 1e3:.1f} ms "
        f"| **{warm_ratio:.2f}×** {'✓' if warm_ratio <= 2 else '✗'} |"
    )
    rows.append(
        f"| (a) frames decoded: ours (minimum any reader needs) | 1 min: {decoded[0]} ({minimum[0]}) "
        f"| 60 min: {decoded[1]} ({minimum[1]}) of {media.probe(long).num_frames} | {minimum[1] / minimum[0]:.2f}× the work |"
    )
    return rows


def bench_baselines(name: str, path: pathlib.Path, label: str, times: Sequence[float], repeats: int) -> list[str]:
    rows = []
    # The baseline decodes from the start: few rounds when that is slow.
    slow = timed(lambda: decode_up_to(path, times), repeats=1)[0] > 0.5
    t_ours, t_seq = timed(lambda: ours(path, times), lambda: decode_up_to(path, times), repeats=3 if slow else repeats)
    assert np.array_equal(ours(path, times), decode_up_to(path, times))
    rows.append(
        f"| (b) {name}, {label} | ours: {t_ours * 1e3:.1f} ms | decode-up-to-t: {t_seq * 1e3:.1f} ms "
        f"| **{t_seq / t_ours:.1f}× faster** |"
    )
    if shutil.which("ffmpeg"):
        (t_ff,) = timed(lambda: ffmpeg_per_frame(path, times), repeats=1)
        rows.append(
            f"| (b) {name}, {label} | ours: {t_ours * 1e3:.1f} ms | ffmpeg process per frame: {t_ff * 1e3:.1f} ms "
            f"| **{t_ff / t_ours:.1f}× faster** |"
        )
    return rows


# --------------------------------------------------------------------------------- recording
def record(rows: list[str], notes: list[str]) -> None:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [
        SECTION,
        "",
        f"`benchmarks/media.py`, {stamp}, {platform.machine()} with {os.cpu_count()} CPUs (shared), "
        f"PyAV {av.__version__}; synthetic videos {WIDTH}×{HEIGHT}, {FPS} fps, libx264 veryfast (B-frames), "
        f"fixed GOP; times are the best of several interleaved rounds of one-shot `read_frames` calls "
        f"(open + probe + seek + decode) unless marked otherwise.",
        "",
        "| case | | | ratio |",
        "|---|---|---|---|",
        *rows,
        "",
        "\n\n".join(notes),
        "",
    ]
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    if SECTION in text:  # replace our own section only, up to the next "## " heading
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + "\n".join(body) + (text[nxt + 1 :] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(body)
    RESULTS.write_text(text)
    print(f"recorded in {RESULTS}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="rounds per measurement (the best is kept)")
    parser.add_argument("--gops", type=int, nargs="+", default=[50, 250], help="keyframe intervals (frames) for (a)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)

    rows: list[str] = []
    for gop in args.gops:
        print(f"(a) GOP {gop}", flush=True)
        rows += bench_length(gop, args.repeats)
        print("\n".join(rows[-3:]), flush=True)
    notes = [
        "(a) A request costs the decode from each asked frame's keyframe, whatever the video's length: ours "
        "decodes exactly the minimum any correct reader must (the 'frames decoded' rows). With a keyframe "
        "every 10 s (x264's default keyint 250 at 25 fps) both requests are 8 short decodes and the times "
        "match. With a keyframe every 50 s (250 frames at 5 fps) the 1-minute video is nearly one forward "
        "pass while the 60-minute one needs 8 seeks into 8 different GOPs: the minimum work itself is "
        "several times larger, so that time ratio measures the encoding, not the reader, and no reader can "
        "bring it under 2.",
        "(b) The real video has keyframes at 0, 3.52 and 13.52 s only, so 8 frames over all of it need a "
        "forward pass over nearly every frame either way; a request after the last keyframe shows what the "
        "seek saves. Decoding (≈ 2–3 ms per 1080p frame on this machine) dominates.",
    ]
    if REAL_VIDEO.is_file():
        print("(b) real video", flush=True)
        duration = media.probe(REAL_VIDEO).duration
        name = "real 1080p H.264 (17.5 s, 25 fps)"
        for label, times in [
            ("8 frames over 0–17.5 s", spread(duration)),
            ("8 frames over 14–17 s", np.linspace(14.0, 17.0, NUM_FRAMES).tolist()),
            ("1 frame at 16 s", [16.0]),
        ]:
            rows += bench_baselines(name, REAL_VIDEO, label, times, args.repeats)
            print(rows[-1], flush=True)
    else:
        notes.append(f"(b) skipped on the real video: {REAL_VIDEO} not found.")
    print("(b) 60-minute synthetic video", flush=True)
    gop = max(args.gops)
    long = synthetic(60, gop)
    name = f"60 min synthetic, keyframe every {gop} frames"
    rows += bench_baselines(name, long, "8 frames over 0–60 min", spread(media.probe(long).duration), args.repeats)
    print(rows[-1], flush=True)
    if not shutil.which("ffmpeg"):
        notes.append("(b) ffmpeg-per-frame baseline: skipped, the `ffmpeg` program is not installed on this machine.")
    if not args.no_record:
        record(rows, notes)


if __name__ == "__main__":
    main()
