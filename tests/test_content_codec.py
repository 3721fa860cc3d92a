"""The OpenAI content-part codec: OTA parts → wire → OTA parts is bit-exact; bad input is refused with a reason."""

from __future__ import annotations

import base64
import io
import json
import wave

import numpy as np
import pytest
from PIL import Image

from omniagent_jax.media import Clip
from omniagent_jax.processing.content_codec import (
    ContentError,
    decode_clip_frames,
    decode_image,
    decode_messages,
    decode_wav,
    encode_image,
    encode_messages,
    encode_wav,
    uses_audio_in_video,
    wav_bytes,
)

RNG = np.random.default_rng(11)


def grid_audio(n: int) -> np.ndarray:
    """float32 samples on the int16 grid, including both extremes."""
    k = RNG.integers(-32768, 32768, n).astype(np.int64)
    k[:2] = (-32768, 32767)
    return (k / 32768.0).astype(np.float32)


def frames(n: int, h: int = 12, w: int = 20) -> np.ndarray:
    return RNG.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def ota_messages() -> list[dict]:
    clip = Clip(frames=frames(4), timestamps=np.arange(4) / 2.0, fps=2.0, audio=grid_audio(32000))
    return [
        {"role": "system", "content": [{"type": "text", "text": "You are careful."}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Frame 1.00s:"},
            {"type": "image", "image": frames(1, 17, 9)[0]},
            {"type": "text", "text": "Audio 0.00s-1.00s"},
            {"type": "audio", "audio": grid_audio(16000)},
            {"type": "text", "text": "Clip 0.00s-2.00s"},
            {"type": "video", "video": clip},
        ]},
        {"role": "assistant", "content": "{\"action\": 1}"},
    ]


def wire(messages, **kwargs) -> tuple[list, dict]:
    """Encode, then go through JSON as an HTTP body does."""
    chat, mm = encode_messages(messages, **kwargs)
    return json.loads(json.dumps(chat)), json.loads(json.dumps(mm))


def test_round_trip_is_bit_exact():
    sent = ota_messages()
    chat, mm = wire(sent)
    assert mm == {"use_audio_in_video": True, "fps": 2.0}
    assert chat[0] == {"role": "system", "content": "You are careful."}
    kinds = [p["type"] for p in chat[1]["content"]]
    assert kinds == ["text", "image_url", "text", "input_audio", "text", "video_url", "input_audio"]
    assert chat[1]["content"][5]["video_url"]["url"].startswith("data:video/png;base64,")
    got = decode_messages(chat, mm)
    assert [m["role"] for m in got] == ["system", "user", "assistant"]
    assert got[0]["content"] == "You are careful." and got[2]["content"] == sent[2]["content"]
    parts, want = got[1]["content"], sent[1]["content"]
    assert [p["type"] for p in parts] == [p["type"] for p in want]
    for p, q in zip(parts, want):
        if p["type"] == "text":
            assert p == q
        elif p["type"] == "image":
            assert p["image"].dtype == np.uint8 and np.array_equal(p["image"], q["image"])
        elif p["type"] == "audio":
            assert p["audio"].dtype == np.float32 and np.array_equal(p["audio"], q["audio"])
        else:
            clip, orig = p["video"], q["video"]
            assert isinstance(clip, Clip) and clip.fps == orig.fps
            assert clip.frames.dtype == np.uint8 and np.array_equal(clip.frames, orig.frames)
            assert clip.audio.dtype == np.float32 and np.array_equal(clip.audio, orig.audio)
            assert np.array_equal(clip.timestamps, np.arange(4) / 2.0)
    assert uses_audio_in_video(got)


def test_audio_scaling_is_symmetric():
    # Every int16 value survives WAV → float → WAV byte for byte.
    pcm = np.arange(-32768, 32768, dtype="<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    samples = decode_wav(buf.getvalue())
    assert samples.min() == -1.0 and samples.max() == 32767 / 32768
    assert wav_bytes(samples) == buf.getvalue()
    # Off-grid samples round to the nearest step; out-of-range ones clip to the int16 limits.
    off = np.array([0.0, 0.5, -0.5, 1.5, -2.0, 1.0, 0.3 / 32768], np.float32)
    with wave.open(io.BytesIO(base64.b64decode(encode_wav(off)))) as w:
        assert np.frombuffer(w.readframes(7), "<i2").tolist() == [0, 16384, -16384, 32767, -32768, 32767, 0]


def test_jpeg_only_when_asked_and_accepted_back():
    # a smooth frame: JPEG keeps it close
    frame = np.broadcast_to((np.arange(20, dtype=np.uint8) * 12)[None, :, None], (12, 20, 3)).copy()
    assert encode_image(frame).startswith("data:image/png;base64,")
    url = encode_image(frame, "jpeg")
    assert url.startswith("data:image/jpeg;base64,")
    chat, mm = wire([{"role": "user", "content": [{"type": "video", "video": Clip(frames(2), np.zeros(2), 2.0, None)}]}],
                    image_format="jpeg")
    assert chat[0]["content"][0]["video_url"]["url"].startswith("data:video/jpeg;base64,")
    assert mm == {"use_audio_in_video": False, "fps": 2.0}
    clip = decode_messages(chat, mm)[0]["content"][0]["video"]
    assert clip.frames.shape == (2, 12, 20, 3) and clip.audio is None
    # lossy, but close: what vLLM-style clients send still decodes
    assert np.abs(decode_image(base64.b64decode(url.split(",", 1)[1])).astype(int) - frame).max() <= 8


def test_decoder_reads_other_wav_layouts_and_transparent_images():
    stereo = np.array([[1000, 3000], [-2000, 0]], "<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(stereo.tobytes())
    out = decode_wav(buf.getvalue())
    assert out.dtype == np.float32 and len(out) == 4 and out[0] == 2000 / 32768  # mono mean, resampled to 16 kHz
    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    png = io.BytesIO()
    rgba.save(png, format="PNG")
    assert decode_image(png.getvalue()).tolist() == [[[255, 255, 255], [255, 255, 255]]]  # composited on white


def _user(*parts):
    return [{"role": "user", "content": list(parts)}]


@pytest.mark.parametrize("messages, mm, message", [
    ([], None, "non-empty list"),
    ([{"role": "robot", "content": "x"}], None, "role"),
    ([{"role": "user", "content": 3}], None, "string or a list"),
    (_user({"type": "hologram"}), None, "unsupported content part type 'hologram'"),
    (_user({"type": "image_url", "image_url": {"url": "https://x/y.png"}}), None, "data URLs"),
    (_user({"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}), None, "unsupported media type"),
    (_user({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}), None, "invalid base64"),
    (_user({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}), None, "not a decodable image"),
    (_user({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk=,aGk="}}), None, "holds one image"),
    (_user({"type": "video_url", "video_url": {"url": "data:video/mp4;base64,aGk="}}), None, "unsupported media type"),
    (_user({"type": "input_audio", "input_audio": {"data": "aGk=", "format": "mp3"}}), None, "must be WAV"),
    (_user({"type": "input_audio", "input_audio": {"data": "%%"}}), None, "not valid base64"),
    (_user({"type": "input_audio", "input_audio": {"data": "bm90IGEgd2F2"}}), None, "not a WAV"),
    ([{"role": "user", "content": "x"}], {"fps": "fast"}, "must be a number"),
    ([{"role": "user", "content": "x"}], {"fps": 0}, "must be positive"),
    ([{"role": "user", "content": "x"}], [1], "must be an object"),
])
def test_decode_errors_say_why(messages, mm, message):
    with pytest.raises(ContentError, match=message):
        decode_messages(messages, mm)


def test_decode_refuses_8_bit_wav_and_clips_of_mixed_sizes():
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(16000)
        w.writeframes(b"\x80\x80")
    with pytest.raises(ContentError, match="16-bit"):
        decode_wav(buf.getvalue())
    a, b = (encode_image(frames(1, h, 8)[0]).split(",", 1)[1] for h in (8, 10))
    with pytest.raises(ContentError, match="share one size"):
        decode_clip_frames(f"data:video/png;base64,{a},{b}")


@pytest.mark.parametrize("part, message", [
    ({"type": "hologram"}, "cannot send a 'hologram' part"),
    ({"type": "image", "image": np.zeros((4, 4, 3), np.float32)}, "uint8"),
    ({"type": "image", "image": np.zeros((4, 4), np.uint8)}, "uint8"),
    ({"type": "audio", "audio": np.zeros((2, 4), np.float32)}, "mono"),
    ({"type": "audio", "audio": np.array([0.0, np.nan], np.float32)}, "NaN"),
    ({"type": "video", "video": Clip(np.zeros((0, 4, 4, 3), np.uint8), np.zeros(0), 2.0, None)}, "at least one frame"),
])
def test_encode_errors_say_why(part, message):
    with pytest.raises(ContentError, match=message):
        encode_messages(_user(part))


def test_wrong_image_format_and_disagreeing_clips_are_refused():
    with pytest.raises(ContentError, match="image_format"):
        encode_image(frames(1)[0], "gif")
    with pytest.raises(ContentError, match="image_format"):
        encode_messages(_user({"type": "image", "image": frames(1)[0]}), image_format="webp")
    silent = Clip(frames(2), np.zeros(2), 2.0, None)
    loud = Clip(frames(2), np.zeros(2), 2.0, grid_audio(100))
    with pytest.raises(ContentError, match="share fps and audio"):
        encode_messages(_user({"type": "video", "video": silent}, {"type": "video", "video": loud}))
