"""Shared set-up of the `omniagent serve` tests: one engine configuration (so every server test and the
engine isolation tests reuse the same compiled steps), a served app on 127.0.0.1, request helpers."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator

import httpx
import numpy as np

from omniagent_jax.engine import Engine, SamplingParams
from omniagent_jax.engine.policy import JaxPolicy
from omniagent_jax.engine.server import ServerThread, create_app
from omniagent_jax.processing.content_codec import encode_image, wav_bytes

POOL = {"page_size": 16, "num_pages": 512, "max_batch": 4, "decode_steps": 4}
SAMPLED = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=4)
IMAGE_URL = encode_image(np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8))
WAV_B64 = base64.b64encode(wav_bytes((0.1 * np.random.default_rng(1).standard_normal(4000)).astype(np.float32))).decode()
CHAT = "/v1/chat/completions"


def make_policy(model, processor, sampling: SamplingParams = SAMPLED) -> JaxPolicy:
    return JaxPolicy(Engine(model, **POOL), processor, sampling)


@contextlib.contextmanager
def served(policy: JaxPolicy, **app_kwargs) -> Iterator[tuple[ServerThread, object]]:
    """The policy served by uvicorn on a free port of 127.0.0.1, for the `with` block."""
    app = create_app(policy, **app_kwargs)
    with ServerThread(app) as server:
        yield server, app.state.worker


@contextlib.contextmanager
def served_client(policy: JaxPolicy, *, max_body_bytes: int,
                  body_timeout_s: float) -> Iterator[tuple[ServerThread, object, httpx.Client]]:
    """A served policy (no API key) and an HTTP client on it: the server tests' module fixtures."""
    with served(policy, api_key="", max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s) as (thread, worker):
        with httpx.Client(base_url=thread.url, timeout=120) as client:
            yield thread, worker, client


def user(text: str, *parts: dict) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}, *parts] if parts else text}]


def sse_events(response: httpx.Response) -> list[dict | str]:
    """The decoded `data:` payloads of a server-sent event stream (`[DONE]` kept as the string)."""
    out: list[dict | str] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def stream(client: httpx.Client, body: dict) -> list[dict | str]:
    with client.stream("POST", CHAT, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response)


def joined(events: list[dict | str], n: int = 1) -> tuple[list[str], list[list[int]], list[str | None]]:
    """Per choice: the streamed text, token ids (with `return_token_ids`) and finish reason."""
    texts, ids, reasons = [""] * n, [[] for _ in range(n)], [None] * n
    for event in events:
        if isinstance(event, dict):
            for choice in event["choices"]:
                i = choice["index"]
                texts[i] += choice["delta"].get("content") or ""
                ids[i] += choice.get("token_ids") or []
                reasons[i] = choice["finish_reason"] or reasons[i]
    return texts, ids, reasons


def assert_names_a_field(response: httpx.Response, status: int | None = None) -> str:
    """A 4xx in OpenAI's error format whose `param` names the field (and whose message says it)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["param"], str) and error["param"], error
    assert error["param"] in error["message"] and error["code"] == response.status_code, error
    return error["param"]
