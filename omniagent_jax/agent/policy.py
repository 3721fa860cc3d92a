"""Policies: messages in, one assistant turn out.

``Policy`` is structural: the JAX engine's policy (``omniagent_jax.engine.policy``) satisfies it
without this package importing it. ``ScriptedPolicy`` replays fixed outputs (tests, replays);
``OpenAIPolicy`` talks to any OpenAI-compatible ``/v1/chat/completions`` endpoint (e.g. vLLM
serving an exported checkpoint) with the standard library only.

Media encoding of ``OpenAIPolicy`` (what vLLM's Qwen2.5-Omni server accepts):

* image part → ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``
  (PNG by default: lossless, so the server sees the decoded pixels; JPEG on request);
* audio part → ``{"type": "input_audio", "input_audio": {"data": <base64 WAV>, "format": "wav"}}``
  (16 kHz mono, 16-bit PCM);
* video part (a clip) → ``{"type": "video_url", "video_url": {"url": "data:video/jpeg;base64,<f1>,<f2>,..."}}``
  (the clip's sampled frames as base64 JPEGs joined by commas, the frame-list form of Qwen's vLLM
  examples), followed, when the clip has sound, by its audio as an ``input_audio`` part; the
  audio-in-video flag and the clip's fps go in the request body as
  ``mm_processor_kwargs = {"use_audio_in_video": bool, "fps": clip_fps}``.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import io
import time
import wave
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from omniagent_jax.agent import envfile
from omniagent_jax.agent.messages import MEDIA_PART_TYPES, Message
from omniagent_jax.agent.openai_http import ChatCompletionsClient, OpenAIError
from omniagent_jax.media.constants import AUDIO_SAMPLE_RATE

# Sampling defaults for eval/demo (protocol.md §8).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 20
DEFAULT_MAX_NEW_TOKENS = 4096
STOP_STRINGS = ("<|im_end|>",)


@dataclasses.dataclass
class PolicyOutput:
    """One generated assistant turn."""

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None  # per generated token, when requested
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # timings, token counts


@runtime_checkable
class Policy(Protocol):
    """``generate(messages, unchanged_prefix=k)``: ``messages[:k]`` are exactly the messages the
    policy saw at its previous call (a hint for prefix/KV reuse; 0 means "assume nothing")."""

    def generate(self, messages: Sequence[Message], *, unchanged_prefix: int = 0) -> PolicyOutput: ...


class PolicyError(RuntimeError):
    """The policy could not produce a turn (endpoint down, script exhausted, ...)."""


class ScriptedPolicy:
    """Replays the given outputs in order; keeps a copy of every message list it was shown."""

    def __init__(self, outputs: Sequence[str]) -> None:
        self.outputs = list(outputs)
        self.calls = 0
        self.inputs: list[list[Message]] = []
        self.unchanged_prefixes: list[int] = []

    def generate(self, messages: Sequence[Message], *, unchanged_prefix: int = 0) -> PolicyOutput:
        if self.calls >= len(self.outputs):
            raise PolicyError(f"scripted policy has only {len(self.outputs)} outputs; turn {self.calls + 1} was asked for")
        # Part lists are copied so later edits of the history cannot alter what was recorded;
        # media payloads are shared (they are never modified).
        self.inputs.append([{**m, "content": copy.copy(m["content"])} for m in messages])
        self.unchanged_prefixes.append(unchanged_prefix)
        text = self.outputs[self.calls]
        self.calls += 1
        return PolicyOutput(text)


# ---------------------------------------------------------------------------------- encoding
def encode_image(frame: np.ndarray, image_format: str = "png") -> str:
    """``uint8 [H, W, 3]`` → a base64 data URL (PNG or JPEG)."""
    from PIL import Image

    fmt = image_format.lower()
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(buf, format=fmt.upper(), **(
        {"quality": 95} if fmt == "jpeg" else {}))
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def encode_wav(samples: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> str:
    """float32 mono in [-1, 1] → base64 of a 16-bit PCM WAV file."""
    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return base64.b64encode(buf.getvalue()).decode("ascii")


def encode_clip_frames(frames: np.ndarray) -> str:
    """A clip's frames → ``data:video/jpeg;base64,<f1>,<f2>,...``."""
    prefix = "data:image/jpeg;base64,"
    encoded = [encode_image(f, "jpeg")[len(prefix):] for f in frames]
    return "data:video/jpeg;base64," + ",".join(encoded)


def to_openai_messages(
    messages: Sequence[Message], *, image_format: str = "png"
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """OTA messages → OpenAI chat messages, plus the ``mm_processor_kwargs`` the clips need."""
    out: list[dict[str, Any]] = []
    mm_kwargs: dict[str, Any] = {}
    for msg in messages:
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
                parts.append({"type": "input_audio", "input_audio": {"data": encode_wav(p["audio"]), "format": "wav"}})
            elif kind == "video":
                clip = p["video"]
                parts.append({"type": "video_url", "video_url": {"url": encode_clip_frames(clip.frames)}})
                with_audio = clip.audio is not None
                if with_audio:
                    parts.append({"type": "input_audio", "input_audio": {"data": encode_wav(clip.audio), "format": "wav"}})
                mm_kwargs = {"use_audio_in_video": with_audio, "fps": float(clip.fps)}
            else:
                raise ValueError(f"cannot send a {kind!r} part (known: text, {', '.join(MEDIA_PART_TYPES)})")
        # The chat template of a system/assistant turn takes plain text.
        if msg["role"] != "user" and all(p["type"] == "text" for p in parts):
            out.append({"role": msg["role"], "content": "".join(p["text"] for p in parts)})
        else:
            out.append({"role": msg["role"], "content": parts})
    return out, mm_kwargs


class OpenAIPolicy:
    """A policy served by an OpenAI-compatible chat endpoint (see the module doc for the media
    encoding). ``extra_body`` is merged into every request (e.g. vLLM sampling extras)."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        top_k: int | None = DEFAULT_TOP_K,
        max_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        logprobs: bool = False,
        image_format: str = "png",
        timeout_s: float = 300.0,
        retries: int = 2,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        self.client = ChatCompletionsClient(url, api_key=api_key, timeout_s=timeout_s, retries=retries)
        self.model = model
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.image_format = image_format
        self.extra_body = dict(extra_body or {})

    def __repr__(self) -> str:
        return f"OpenAIPolicy(model={self.model!r}, client={self.client!r})"

    @classmethod
    def from_env(cls, *, url: str | None = None, model: str | None = None, env_file: str | None = envfile.DEFAULT_ENV_FILE,
                 **kwargs: Any) -> "OpenAIPolicy":
        """URL/model from the arguments or ``OMNIAGENT_OPENAI_URL`` / ``_MODEL``; the key only from
        ``OMNIAGENT_OPENAI_API_KEY`` (environment or ``.env``), never from the command line."""
        url = url or envfile.get_setting(envfile.OPENAI_URL, env_file=env_file)
        model = model or envfile.get_setting(envfile.OPENAI_MODEL, env_file=env_file)
        if not url or not model:
            raise ValueError(
                f"OpenAIPolicy needs an endpoint URL and a model name (--openai-url/--openai-model or "
                f"{envfile.OPENAI_URL}/{envfile.OPENAI_MODEL})"
            )
        key = envfile.get_setting(envfile.OPENAI_API_KEY, env_file=env_file)
        return cls(url, model, api_key=key, **kwargs)

    def request_body(self, messages: Sequence[Message]) -> dict[str, Any]:
        chat, mm_kwargs = to_openai_messages(messages, image_format=self.image_format)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "stop": list(STOP_STRINGS),
        }
        if self.top_k is not None:
            body["top_k"] = self.top_k
        if self.logprobs:
            body["logprobs"] = True
        if mm_kwargs:
            body["mm_processor_kwargs"] = mm_kwargs
        body.update(self.extra_body)
        return body

    def generate(self, messages: Sequence[Message], *, unchanged_prefix: int = 0) -> PolicyOutput:
        t0 = time.perf_counter()
        body = self.request_body(messages)
        t1 = time.perf_counter()
        try:
            response = self.client.create(body)
        except OpenAIError as e:
            raise PolicyError(str(e)) from None
        t2 = time.perf_counter()
        choice = response["choices"][0]
        text = (choice["message"].get("content") or "").strip()
        logprobs = None
        content_lp = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
        if content_lp:
            logprobs = [float(t["logprob"]) for t in content_lp]
        usage = response.get("usage") or {}
        metrics = {
            "multimodal_prep_seconds": t1 - t0,
            "generation_seconds": t2 - t1,
            "prompt_total_tokens": int(usage.get("prompt_tokens", 0) or 0),
            "response_tokens": int(usage.get("completion_tokens", 0) or 0),
            "finish_reason": choice.get("finish_reason"),
        }
        return PolicyOutput(text, logprobs=logprobs, metrics=metrics)
