"""`omniagent serve`: an OpenAI-compatible `/v1/chat/completions` endpoint over the engine.

One worker thread owns the engine and runs continuous batching: HTTP handler threads decode the
request, submit it, and wait for its completion. Multimodal content parts are decoded by
`omniagent_jax.processing.content_codec` (the agent's `OpenAIPolicy` encodes with the same module):
text, `image_url` (PNG, JPEG, ...), `input_audio` (16-bit WAV), and `video_url` frame lists
(`data:video/png` or `data:video/jpeg`), with `mm_processor_kwargs.use_audio_in_video` / `fps` for
clips. Only data URLs are accepted: the server never fetches anything. A request's `seed` sets its
sampling seed; requests without one use the server's default.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from omniagent_jax.engine.policy import JaxPolicy
from omniagent_jax.engine.sampling import SamplingParams
from omniagent_jax.processing import tokens
from omniagent_jax.processing.content_codec import ContentError, decode_messages


class BadRequest(ValueError):
    """The request body is not a chat completion request we can serve."""


def messages_from_openai(body: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAI chat messages (and the body's `mm_processor_kwargs`) → OTA messages with decoded media."""
    try:
        return decode_messages(body.get("messages"), body.get("mm_processor_kwargs"))
    except ContentError as e:
        raise BadRequest(str(e)) from e


def stop_token_ids(stop: Any, default: tuple[int, ...] | None, tokenizer: Any = None) -> tuple[int, ...] | None:
    """OpenAI `stop` strings → their ids in the served `tokenizer`'s vocabulary; only the Omni special
    tokens (e.g. `<|im_end|>`) can be stops here."""
    if stop is None:
        return default
    names = [stop] if isinstance(stop, str) else stop
    if not isinstance(names, list) or any(n not in tokens.SPECIAL_TOKENS for n in names):
        raise BadRequest(f"`stop` supports special tokens only (e.g. {tokens.IM_END!r}), got {stop!r}")
    ids = {n: None if tokenizer is None else tokenizer.convert_tokens_to_ids(n) for n in names}
    missing = [n for n, i in ids.items() if i is None or (i == tokenizer.unk_token_id and n != tokenizer.unk_token)]
    if missing:
        raise BadRequest(f"`stop` tokens {missing} are not in the served model's vocabulary")
    return tuple(ids[n] for n in names)


def sampling_from_openai(body: dict[str, Any], default: SamplingParams, tokenizer: Any = None) -> SamplingParams:
    """The request's sampling parameters over `default`; `stop` strings are looked up in `tokenizer`."""
    try:
        return dataclasses.replace(
            default,
            temperature=float(body.get("temperature", default.temperature)),
            top_p=float(body.get("top_p", default.top_p)),
            top_k=max(0, int(body.get("top_k", default.top_k) or 0)),
            max_new_tokens=int(body.get("max_completion_tokens", body.get("max_tokens", default.max_new_tokens))),
            # OpenAI seeds are any int64; the engine keys its streams by a uint32.
            seed=int(body["seed"]) % 2**32 if body.get("seed") is not None else default.seed,
            logprobs=bool(body.get("logprobs", False)),
            stop_token_ids=stop_token_ids(body.get("stop"), default.stop_token_ids, tokenizer),
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
    text_tokens = [t for t in completion.tokens if t not in policy.engine.stop_token_ids]
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


def make_server(policy: JaxPolicy, host: str = "127.0.0.1", port: int = 8000,
                model_name: str = "omniagent") -> tuple[ThreadingHTTPServer, EngineWorker]:
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
                request = policy.request(messages, sampling_from_openai(body, policy.sampling, policy.processor.tokenizer))
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
