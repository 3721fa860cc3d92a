"""OTA message parts <-> OpenAI chat content parts: the one definition of the multimodal wire format.

The agent's `OpenAIPolicy` encodes with :func:`encode_messages`; `omniagent serve` decodes with
:func:`decode_messages`. What travels (what vLLM's Qwen2.5-Omni server also accepts, except where noted):

* text part → `{"type": "text", "text": ...}`; a system or assistant turn of text only → a plain string;
* image part (uint8 `[H, W, 3]`) → `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`;
* audio part (float32 mono 16 kHz) → `{"type": "input_audio", "input_audio": {"data": <base64 WAV>, "format": "wav"}}`,
  16-bit PCM scaled symmetrically: times 32768, rounded and clipped to the int16 range, read back ÷32768;
* video part (an `omniagent_jax.media.Clip`) →
  `{"type": "video_url", "video_url": {"url": "data:video/png;base64,<f1>,<f2>,..."}}` (the clip's frames,
  comma-joined), then, when the clip has sound, its audio as the next `input_audio` part; the request's
  `mm_processor_kwargs = {"use_audio_in_video": bool, "fps": clip fps}` say how to read them.

Lossless by default: frames are PNG, so `decode(encode(x))` returns the same pixels, and audio samples on
the int16 grid (multiples of 1/32768 in [-1, 32767/32768]) come back bit-exact, as does any 16-bit WAV
re-encoded after decoding. JPEG is used only when asked (`image_format="jpeg"`): vLLM reads frame lists
only as `data:video/jpeg`, so a vLLM endpoint needs it for clips. The decoder also accepts JPEG (or any
image PIL reads) for images and clip frames, WAV of any rate or channel count (averaged to mono,
resampled linearly to 16 kHz), and data URLs only: nothing is ever fetched. The wire carries no clip
timestamps: a decoded clip's are `arange(n) / fps` (the processor uses only the fps).
"""

from __future__ import annotations

import base64
import binascii
import io
import wave
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from omniagent_jax.media.constants import AUDIO_SAMPLE_RATE, CLIP_FPS
from omniagent_jax.media.info import Clip

IMAGE_FORMATS = ("png", "jpeg")
PCM_SCALE = 32768.0  # int16 full scale, both ways, so the int16 grid maps onto itself
JPEG_QUALITY = 95
ROLES = ("system", "user", "assistant")
_INT16 = np.iinfo(np.int16)


class ContentError(ValueError):
    """A message or content part the codec cannot encode or decode."""


# ------------------------------------------------------------------------------------ images
def _image_bytes(frame: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ContentError(f"an image frame must be uint8 [H, W, 3], got {frame.dtype} {list(frame.shape)}")
    buf = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if fmt == "jpeg" else {}
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format=fmt.upper(), **options)
    return buf.getvalue()


def _image_format(image_format: str) -> str:
    fmt = image_format.lower()
    if fmt not in IMAGE_FORMATS:
        raise ContentError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    return fmt


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_image(frame: np.ndarray, image_format: str = "png") -> str:
    """uint8 `[H, W, 3]` → a `data:image/<format>;base64,...` URL (PNG unless JPEG is asked for)."""
    fmt = _image_format(image_format)
    return f"data:image/{fmt};base64," + _b64(_image_bytes(frame, fmt))


def decode_image(data: bytes) -> np.ndarray:
    """Image file bytes → uint8 `[H, W, 3]`; transparency is composited on white, as qwen-omni-utils does."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img, mask=img.split()[3])
            img = background
        return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ContentError(f"image data is not a decodable image: {e}") from e


def encode_clip_frames(frames: np.ndarray, image_format: str = "png") -> str:
    """A clip's frames `[N, H, W, 3]` → `data:video/<format>;base64,<f1>,<f2>,...`."""
    fmt = _image_format(image_format)
    if len(frames) == 0:
        raise ContentError("a clip needs at least one frame")
    return f"data:video/{fmt};base64," + ",".join(_b64(_image_bytes(f, fmt)) for f in frames)


def decode_clip_frames(url: str) -> np.ndarray:
    """A frame-list data URL (`video/png`, `video/jpeg`, or `image/*`) → uint8 `[N, H, W, 3]`."""
    _, payloads = decode_data_url(url, ("video/png", "video/jpeg", "image/"))
    frames = [decode_image(p) for p in payloads]
    if len({f.shape for f in frames}) != 1:
        raise ContentError(f"the frames of a clip must share one size, got {sorted({f.shape[:2] for f in frames})}")
    return np.stack(frames)


def decode_data_url(url: Any, media_types: tuple[str, ...]) -> tuple[str, list[bytes]]:
    """`data:<type>;base64,<p1>[,<p2>...]` → (type, decoded payloads); `<type>` must start with one of `media_types`."""
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise ContentError("only base64 data URLs are accepted for media (nothing is fetched)")
    media_type, payload = url[5:].split(";base64,", 1)
    if not media_type.startswith(media_types):
        raise ContentError(f"unsupported media type {media_type!r}; expected one of {media_types}")
    try:
        return media_type, [base64.b64decode(p, validate=True) for p in payload.split(",")]
    except (binascii.Error, ValueError) as e:
        raise ContentError(f"invalid base64 in a {media_type} data URL") from e


# ------------------------------------------------------------------------------------- audio
def wav_bytes(samples: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> bytes:
    """float mono samples → a 16-bit PCM WAV file (times 32768, rounded, clipped to the int16 range)."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ContentError(f"audio must be mono (1-D), got shape {list(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise ContentError("audio holds NaN or infinite samples")
    pcm = np.clip(np.round(x * np.float32(PCM_SCALE)), _INT16.min, _INT16.max).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def encode_wav(samples: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> str:
    """float mono samples → base64 of a 16-bit PCM WAV file (see :func:`wav_bytes`)."""
    return _b64(wav_bytes(samples, sample_rate))


def decode_wav(data: bytes) -> np.ndarray:
    """A 16-bit PCM WAV file → float32 mono at 16 kHz: int16 ÷32768, channels averaged, resampled linearly."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise ContentError(f"audio data is not a WAV file: {e}") from e
    if width != 2:
        raise ContentError(f"only 16-bit PCM WAV is supported, got {8 * width}-bit")
    samples = np.frombuffer(frames, "<i2").astype(np.float32) / np.float32(PCM_SCALE)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    if rate != AUDIO_SAMPLE_RATE:
        n = round(len(samples) * AUDIO_SAMPLE_RATE / rate)
        samples = np.interp(np.arange(n) * rate / AUDIO_SAMPLE_RATE, np.arange(len(samples)), samples).astype(np.float32)
    return samples


def _audio_part(samples: np.ndarray) -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": encode_wav(samples), "format": "wav"}}


def _decode_audio_part(part: Mapping[str, Any]) -> np.ndarray:
    audio = part.get("input_audio") or {}
    if audio.get("format", "wav") != "wav":
        raise ContentError(f"input_audio must be WAV, got format {audio.get('format')!r}")
    try:
        raw = base64.b64decode(audio.get("data", ""), validate=True)
    except (binascii.Error, ValueError, TypeError) as e:
        raise ContentError("input_audio data is not valid base64") from e
    return decode_wav(raw)


# ---------------------------------------------------------------------------------- messages
def uses_audio_in_video(messages: Sequence[Mapping[str, Any]]) -> bool:
    """True when a video part carries its own audio track (a clip of a video with sound)."""
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "video" and getattr(part.get("video"), "audio", None) is not None:
                    return True
    return False


def encode_messages(
    messages: Sequence[Mapping[str, Any]], *, image_format: str = "png"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """OTA messages → OpenAI chat messages, plus the `mm_processor_kwargs` their clips need (empty without clips).

    All clips of one request share those kwargs, so they must agree on fps and on having audio.
    """
    out: list[dict[str, Any]] = []
    mm_kwargs: dict[str, Any] = {}
    for i, msg in enumerate(messages):
        content = msg["content"]
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
            continue
        parts: list[dict[str, Any]] = []
        for p in content:
            kind = p.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": p["text"]})
            elif kind == "image":
                parts.append({"type": "image_url", "image_url": {"url": encode_image(p["image"], image_format)}})
            elif kind == "audio":
                parts.append(_audio_part(p["audio"]))
            elif kind == "video":
                clip = p["video"]
                parts.append({"type": "video_url", "video_url": {"url": encode_clip_frames(clip.frames, image_format)}})
                if clip.audio is not None:
                    parts.append(_audio_part(clip.audio))
                kwargs = {"use_audio_in_video": clip.audio is not None, "fps": float(clip.fps)}
                if mm_kwargs and mm_kwargs != kwargs:
                    raise ContentError(f"message {i}: the clips of one request must share fps and audio, {mm_kwargs} vs {kwargs}")
                mm_kwargs = kwargs
            else:
                raise ContentError(f"message {i}: cannot send a {kind!r} part (known: text, image, audio, video)")
        # The chat template of a system/assistant turn takes plain text.
        if msg["role"] != "user" and all(p["type"] == "text" for p in parts):
            out.append({"role": msg["role"], "content": "".join(p["text"] for p in parts)})
        else:
            out.append({"role": msg["role"], "content": parts})
    return out, mm_kwargs


def decode_messages(messages: Any, mm_processor_kwargs: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """OpenAI chat messages (+ the request's `mm_processor_kwargs`) → OTA messages with decoded media.

    With `use_audio_in_video`, the first `input_audio` part after a `video_url` in the same message is
    that clip's own audio.
    """
    if not isinstance(messages, list) or not messages:
        raise ContentError("`messages` must be a non-empty list")
    mm = mm_processor_kwargs or {}
    if not isinstance(mm, Mapping):
        raise ContentError("`mm_processor_kwargs` must be an object")
    audio_in_video = bool(mm.get("use_audio_in_video", False))
    try:
        fps = float(mm.get("fps", CLIP_FPS))
    except (TypeError, ValueError) as e:
        raise ContentError(f"`mm_processor_kwargs.fps` must be a number, got {mm.get('fps')!r}") from e
    if not fps > 0:
        raise ContentError(f"`mm_processor_kwargs.fps` must be positive, got {fps}")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or msg.get("role") not in ROLES:
            raise ContentError(f"message {i} needs a role of system, user or assistant")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise ContentError(f"message {i}: content must be a string or a list of parts")
        parts: list[dict[str, Any]] = []
        pending_clip: int | None = None  # index of a clip still waiting for its own audio
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "image_url":
                _, (data, *rest) = decode_data_url((part.get("image_url") or {}).get("url"), ("image/",))
                if rest:
                    raise ContentError(f"message {i}: an image_url holds one image, got {1 + len(rest)}")
                parts.append({"type": "image", "image": decode_image(data)})
            elif kind == "video_url":
                frames = decode_clip_frames((part.get("video_url") or {}).get("url"))
                clip = Clip(frames=frames, timestamps=np.arange(len(frames)) / fps, fps=fps, audio=None)
                parts.append({"type": "video", "video": clip})
                pending_clip = len(parts) - 1 if audio_in_video else None
            elif kind == "input_audio":
                samples = _decode_audio_part(part)
                if pending_clip is not None:
                    clip = parts[pending_clip]["video"]
                    parts[pending_clip] = {"type": "video", "video": Clip(clip.frames, clip.timestamps, clip.fps, samples)}
                    pending_clip = None
                else:
                    parts.append({"type": "audio", "audio": samples})
            else:
                raise ContentError(f"message {i}: unsupported content part type {kind!r}")
        out.append({"role": msg["role"], "content": parts})
    return out
