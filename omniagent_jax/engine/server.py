"""`omniagent serve`: an OpenAI-compatible `/v1/chat/completions` endpoint over the engine.

One worker thread owns the engine and runs continuous batching: HTTP handler threads decode the
request (multimodal content parts as the agent's `OpenAIPolicy` sends them), submit it, and wait for
its completion. Content parts accepted:

* `{"type": "text", "text": ...}`
* `{"type": "image_url", "image_url": {"url": "data:image/png|jpeg;base64,..."}}`
* `{"type": "input_audio", "input_audio": {"data": <base64 WAV>, "format": "wav"}}` (any rate, mono or not)
* `{"type": "video_url", "video_url": {"url": "data:video/jpeg;base64,<f1>,<f2>,..."}}`; with
  `mm_processor_kwargs.use_audio_in_video` the next `input_audio` part is the clip's own audio.

Only data URLs are accepted: the server never fetches anything.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import queue
import threading
import time
import uuid
import wave
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from omniagent_jax.engine.policy import JaxPolicy
from omniagent_jax.engine.sampling import SamplingParams
from omniagent_jax.media.constants import AUDIO_SAMPLE_RATE as AUDIO_RATE
from omniagent_jax.media.constants import CLIP_FPS as DEFAULT_CLIP_FPS
from omniagent_jax.processing import tokens



class BadRequest(ValueError):
    """The request body is not a chat completion request we can serve."""


@dataclasses.dataclass(frozen=True)
class ClipPayload:
    """A decoded clip: frames plus (optionally) its own audio, shaped like `omniagent_jax.media.Clip`."""

    frames: np.ndarray
    timestamps: np.ndarray
    fps: float
    audio: np.ndarray | None


def _data_url_bytes(url: str, kinds: tuple[str, ...]) -> tuple[str, list[bytes]]:
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise BadRequest("only base64 data URLs are accepted for media (the server fetches nothing)")
    header, payload = url[5:].split(";base64,", 1)
    if not header.startswith(kinds):
        raise BadRequest(f"unsupported media type {header!r}; expected one of {kinds}")
    try:
        return header, [base64.b64decode(p, validate=True) for p in payload.split(",")]
    except ValueError as e:
        raise BadRequest(f"invalid base64 in a {header} data URL") from e


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        if img.mode == "RGBA":  # composite on white, as qwen-omni-utils does
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img, mask=img.split()[3])
            img = background
        return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise BadRequest(f"image data is not a decodable image: {e}") from e


def decode_wav(data: bytes) -> np.ndarray:
    """A WAV file → float32 mono at 16 kHz (linear resampling when needed)."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            width, channels, rate, frames = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise BadRequest(f"audio data is not a WAV file: {e}") from e
    if width != 2:
        raise BadRequest(f"only 16-bit PCM WAV is supported, got {8 * width}-bit")
    samples = np.frombuffer(frames, "<i2").astype(np.float32) / 32768.0
    samples = samples.reshape(-1, channels).mean(axis=1)
    if rate != AUDIO_RATE:
        n = int(round(len(samples) * AUDIO_RATE / rate))
        samples = np.interp(np.arange(n) * rate / AUDIO_RATE, np.arange(len(samples)), samples).astype(np.float32)
    return samples


def messages_from_openai(body: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAI chat messages → OTA messages with decoded media payloads."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list")
    mm = body.get("mm_processor_kwargs") or {}
    audio_in_video = bool(mm.get("use_audio_in_video", False))
    fps = float(mm.get("fps", DEFAULT_CLIP_FPS))
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise BadRequest(f"message {i} needs a role of system, user or assistant")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise BadRequest(f"message {i}: content must be a string or a list of parts")
        parts: list[dict[str, Any]] = []
        pending_clip: int | None = None  # index of a clip still waiting for its own audio
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(part.get("text", ""))})
            elif kind == "image_url":
                _, (data,) = _data_url_bytes((part.get("image_url") or {}).get("url"), ("image/",))
                parts.append({"type": "image", "image": decode_image(data)})
            elif kind == "video_url":
                _, frames = _data_url_bytes((part.get("video_url") or {}).get("url"), ("video/jpeg", "video/png", "image/"))
                stack = np.stack([decode_image(f) for f in frames])
                clip = ClipPayload(stack, np.arange(len(stack)) / fps, fps, None)
                parts.append({"type": "video", "video": clip})
                pending_clip = len(parts) - 1 if audio_in_video else None
            elif kind == "input_audio":
                audio = part.get("input_audio") or {}
                if audio.get("format", "wav") != "wav":
                    raise BadRequest("input_audio must be WAV")
                try:
                    raw = base64.b64decode(audio.get("data", ""), validate=True)
                except ValueError as e:
                    raise BadRequest("input_audio data is not valid base64") from e
                samples = decode_wav(raw)
                if pending_clip is not None:
                    parts[pending_clip] = {"type": "video", "video": dataclasses.replace(parts[pending_clip]["video"], audio=samples)}
                    pending_clip = None
                else:
                    parts.append({"type": "audio", "audio": samples})
            else:
                raise BadRequest(f"message {i}: unsupported content part type {kind!r}")
        out.append({"role": msg["role"], "content": parts})
    return out


def stop_token_ids(stop: Any, default: tuple[int, ...]) -> tuple[int, ...]:
    """OpenAI `stop` strings → token ids; only special tokens (e.g. `<|im_end|>`) can be stops here."""
    if stop is None:
        return default
    names = [stop] if isinstance(stop, str) else stop
    if not isinstance(names, list) or any(n not in tokens.SPECIAL_TOKEN_IDS for n in names):
        raise BadRequest(f"`stop` supports special tokens only (e.g. {tokens.IM_END!r}), got {stop!r}")
    return tuple(tokens.SPECIAL_TOKEN_IDS[n] for n in names)


def sampling_from_openai(body: dict[str, Any], default: SamplingParams) -> SamplingParams:
    try:
        return dataclasses.replace(
            default,
            temperature=float(body.get("temperature", default.temperature)),
            top_p=float(body.get("top_p", default.top_p)),
            top_k=max(0, int(body.get("top_k", default.top_k) or 0)),
            max_new_tokens=int(body.get("max_completion_tokens", body.get("max_tokens", default.max_new_tokens))),
            seed=int(body["seed"]) if body.get("seed") is not None else default.seed,
            logprobs=bool(body.get("logprobs", False)),
            stop_token_ids=stop_token_ids(body.get("stop"), default.stop_token_ids),
        )
    except (TypeError, ValueError) as e:
        raise BadRequest(f"invalid sampling parameter: {e}") from e


class _Job:
    def __init__(self, request):
        self.request = request
        self.done = threading.Event()
        self.completion = None
        self.error: Exception | None = None


class EngineWorker(threading.Thread):
    """Owns the engine; admits jobs from a queue and steps until they are done (continuous batching)."""

    def __init__(self, policy: JaxPolicy):
        super().__init__(daemon=True, name="omniagent-engine")
        self.policy = policy
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.pending: dict[str, _Job] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        engine = self.policy.engine
        while not self.stopping.is_set():
            try:
                job = self.jobs.get(timeout=0.05 if engine.has_work() else 0.5)
                self._submit(job)
                while True:  # drain everything already queued
                    self._submit(self.jobs.get_nowait())
            except queue.Empty:
                pass
            if engine.has_work():
                try:
                    engine.step()
                except Exception as e:  # a failed step must not hang the clients
                    for rid, job in list(self.pending.items()):
                        engine.cancel(rid)
                        job.error = e
                        job.done.set()
                    self.pending.clear()
            for rid, completion in engine.pop_finished().items():
                job = self.pending.pop(rid, None)
                if job is not None:
                    job.completion = completion
                    job.done.set()

    def _submit(self, job: _Job) -> None:
        try:
            rid = self.policy.engine.submit(job.request)
            self.pending[rid] = job
        except Exception as e:
            job.error = e
            job.done.set()


def completion_body(policy: JaxPolicy, completion, model_name: str) -> dict[str, Any]:
    text_tokens = [t for t in completion.tokens if t not in tokens.STOP_TOKEN_IDS]
    body: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": policy.decode(completion.tokens)},
            "finish_reason": completion.finish_reason,
        }],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": len(completion.tokens),
            "total_tokens": completion.prompt_tokens + len(completion.tokens),
            "prompt_tokens_details": {"cached_tokens": completion.cached_tokens},
        },
    }
    if completion.logprobs is not None:
        body["choices"][0]["logprobs"] = {"content": [
            {"token": policy.processor.tokenizer.decode([t]), "logprob": lp, "entropy": ent}
            for t, lp, ent in zip(text_tokens, completion.logprobs, completion.entropies)
        ]}
    return body


def make_server(policy: JaxPolicy, host: str = "127.0.0.1", port: int = 8000, model_name: str = "omniagent") -> tuple[ThreadingHTTPServer, EngineWorker]:
    worker = EngineWorker(policy)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet by default; the CLI prints one line per request
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: HTTPStatus, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": status.phrase, "code": int(status)}})

        def do_GET(self):
            if self.path.rstrip("/") in ("/health", "/v1/health"):
                self._send(200, {"status": "ok"})
            elif self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "omniagent-jax"}]})
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}")

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(HTTPStatus.NOT_FOUND, f"no route {self.path}")
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                if not isinstance(body, dict):
                    raise BadRequest("the request body must be a JSON object")
                if body.get("stream"):
                    raise BadRequest("streaming is not supported")
                messages = messages_from_openai(body)
                request = policy.request(messages, sampling_from_openai(body, policy.sampling))
            except (BadRequest, json.JSONDecodeError, ValueError) as e:
                return self._error(HTTPStatus.BAD_REQUEST, str(e))
            job = _Job(request)
            worker.jobs.put(job)
            job.done.wait()
            if job.error is not None:
                status = HTTPStatus.BAD_REQUEST if isinstance(job.error, ValueError) else HTTPStatus.INTERNAL_SERVER_ERROR
                return self._error(status, f"{type(job.error).__name__}: {job.error}")
            self._send(200, completion_body(policy, job.completion, model_name))

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server, worker


def serve(policy: JaxPolicy, host: str = "127.0.0.1", port: int = 8000, model_name: str = "omniagent") -> None:
    server, worker = make_server(policy, host, port, model_name)
    worker.start()
    print(f"serving {model_name} on http://{host}:{server.server_address[1]}/v1/chat/completions (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        worker.stopping.set()
        server.server_close()
