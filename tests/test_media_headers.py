"""Media headers have one owner: `agent.prompts` formats them and parses them back, and training's
re-cut (`train.sft_data.media_sources`) reads what the environment writes and what the released step
logs hold. The label value `IGNORE` has one JAX-free definition."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import agent_helpers as h
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_agent_environment import make_env

from omniagent_jax.agent import prompts
from omniagent_jax.agent.prompts import MediaHeader, parse_media_header
from omniagent_jax.train import labels
from omniagent_jax.train.sft_data import SampleError, media_sources

# Times the text holds exactly: 2-decimal values (k / 100 is the double nearest to the printed text).
exact_times = st.integers(-10**5, 10**7).map(lambda k: k / 100)
any_times = st.floats(-1e5, 1e7, allow_nan=False, allow_infinity=False)


def _r2(t: float) -> float:
    return float(prompts.format_seconds(t))


@st.composite
def headers(draw) -> MediaHeader:
    kind = draw(st.sampled_from(["frames", "frame", "audio", "clip"]))
    start, end = draw(exact_times), draw(exact_times)
    if kind == "frames":
        num = draw(st.integers(1, 10**4))
        return MediaHeader(kind, start, start if num == 1 else end, num)
    return MediaHeader(kind, start, start if kind == "frame" else end)


@given(headers(), st.sampled_from(["", " ", "\n", "\t "]))
def test_parse_inverts_format(header, pad):
    text = header.text()
    assert parse_media_header(pad + text + pad) == header
    assert parse_media_header(text).text() == text


@given(any_times, any_times, st.integers(1, 500))
def test_any_time_reads_back_as_printed(start, end, num):
    """Times with more decimals read back as the 2 decimals the model saw."""
    assert parse_media_header(prompts.audio_header(start, end)) == MediaHeader("audio", _r2(start), _r2(end))
    assert parse_media_header(prompts.clip_header(start, end)) == MediaHeader("clip", _r2(start), _r2(end))
    assert parse_media_header(prompts.frame_label(start)) == MediaHeader("frame", _r2(start), _r2(start))
    frames = parse_media_header(prompts.frames_header(start, end, num))
    assert frames == MediaHeader("frames", _r2(start), _r2(start) if num == 1 else _r2(end), num)


def test_examples_and_other_text():
    assert parse_media_header("Frames 0.00s-30.06s (num=10).") == MediaHeader("frames", 0.0, 30.06, 10)
    assert parse_media_header("Frame at 7.50s (num=1).") == MediaHeader("frames", 7.5, 7.5, 1)
    # the long form with num=1 is read too; its end is kept, though the formatter never writes it
    assert parse_media_header("Frames 1.00s-2.00s (num=1).") == MediaHeader("frames", 1.0, 2.0, 1)
    assert parse_media_header("Frame 3.34s:") == MediaHeader("frame", 3.34, 3.34)
    assert parse_media_header("Clip 20.00s-30.41s") == MediaHeader("clip", 20.0, 30.41)
    placeholders = (prompts.frames_placeholder("Frames 0.00s-1.00s (num=2).", [0, 1]),
                    prompts.media_placeholder("Audio 0.00s-8.00s"))
    for text in ("", "Frames 0.00s-1.00s (num=0).", "Frames 0.00s-1.00s (num=2)", "Audio 1s-2s extra", "Frame 1.00s",
                 "Clip 1.00-2.00", "Media content", prompts.NOTICE_FINAL_STEP, prompts.notice_countdown(1, 5), *placeholders):
        assert parse_media_header(text) is None, text


def test_header_fields_are_checked():
    with pytest.raises(ValueError, match="'frames' header takes num >= 1, got None"):
        MediaHeader("frames", 0.0, 1.0)
    with pytest.raises(ValueError, match="'frames' header takes num >= 1, got 0"):
        MediaHeader("frames", 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="'audio' header takes num None, got 2"):
        MediaHeader("audio", 0.0, 1.0, 2)


# ----------------------------------------------------------------- environment → training's re-cut
@settings(max_examples=40, deadline=None)
@given(st.floats(0, 50), st.floats(0.2, 9.5), st.integers(1, 8), st.booleans())
def test_recut_reads_what_the_environment_writes(start, length, num, has_audio):
    """Frames (fractional timestamps), audio and a clip with and without its sound: each media part
    of the environment's message is located at the record's times as printed."""
    end = start + length
    env = make_env(has_audio=has_audio)
    res = env.step(h.frames(start, end, num))
    assert res.error_code is None
    assert media_sources(env.messages[-1]["content"]) == [MediaHeader("frame", _r2(t), _r2(t)) for t in res.media.timestamps]
    res = env.step(h.clip(start, end))
    assert res.error_code is None and res.media.has_audio == has_audio
    assert media_sources(env.messages[-1]["content"]) == [MediaHeader("clip", _r2(start), _r2(end))]
    if has_audio:
        assert env.step(h.audio(start, end)).error_code is None
        assert media_sources(env.messages[-1]["content"]) == [MediaHeader("audio", _r2(start), _r2(end))]


def test_reference_step_logs_locate_every_media_part(reference_dir):
    """In the released step logs each media part is located by the text part just before it, and the
    located header prints back to exactly that text."""
    counts = {"image": 0, "audio": 0, "video": 0}
    for line in (reference_dir / "example_train_sft.jsonl").read_text().splitlines():
        for m in json.loads(line)["raw_input"]:
            content = m["content"] if isinstance(m["content"], list) else []
            sources = media_sources(content)
            parts = [(i, p["type"]) for i, p in enumerate(content) if p["type"] != "text"]
            assert len(sources) == len(parts)
            for (i, kind), src in zip(parts, sources):
                assert src.text() == content[i - 1]["text"]
                assert src.kind == {"image": "frame", "audio": "audio", "video": "clip"}[kind]
                counts[kind] += 1
    assert counts == {"image": 84, "audio": 2, "video": 4}


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


@pytest.mark.parametrize("content,match", [
    ([_text("Frames 0.00s-1.00s (num=2)."), {"type": "image"}], "an image part without a `Frame t s:` label"),
    ([_text("Frame 0.50s:"), {"type": "image"}, {"type": "image"}], "an image part without a `Frame t s:` label"),
    ([_text("Clip 0.00s-1.00s"), {"type": "audio"}], "an audio part without an `Audio s-e` header"),
    ([_text("Audio 0.00s-1.00s"), {"type": "video"}], "a video part without a `Clip s-e` header"),
])
def test_unlocated_media_parts_are_sample_errors(content, match):
    with pytest.raises(SampleError, match=f"row 3: {match}"):
        media_sources(content, "row 3")


def test_each_header_locates_the_next_part_of_its_type():
    content = [_text("Frame at 2.00s (num=1)."), _text("Audio 0.00s-1.00s"), _text("Clip 3.00s-4.00s"),
               {"type": "video"}, {"type": "image"}, {"type": "audio"}, _text("Frame 5.25s:"), {"type": "image"}]
    assert media_sources(content) == [MediaHeader("clip", 3.0, 4.0), MediaHeader("frames", 2.0, 2.0, 1),
                                      MediaHeader("audio", 0.0, 1.0), MediaHeader("frame", 5.25, 5.25)]


# ----------------------------------------------------------------------------------------- IGNORE
def test_one_ignore_label_importable_without_jax():
    package = pathlib.Path(labels.__file__).parent.parent
    defined = [str(f.relative_to(package)) for f in sorted(package.rglob("*.py"))
               if re.search(r"^IGNORE\s*=", f.read_text(), re.MULTILINE)]
    assert defined == ["train/labels.py"]
    code = ("import json, sys\nimport omniagent_jax.train.labels, omniagent_jax.train.sft_data\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
