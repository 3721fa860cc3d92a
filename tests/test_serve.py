"""`omniagent serve` end to end on 127.0.0.1 (uvicorn in a thread, httpx): the agent's OpenAIPolicy
through the server matches the engine; usage, log-probs and prefix caching; streaming equals the
whole response; seeds (drawn when unset, returned, `n` samples at seed + i); field-naming 400s;
a failure inside the engine fails its request alone; auth, body limit, slow bodies, disconnects."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time

import httpx
import numpy as np
import pytest
from serve_helpers import (
    CHAT,
    IMAGE_URL,
    POOL,
    assert_names_a_field,
    joined,
    make_policy,
    served,
    served_client,
    stream,
    user,
)

from omniagent_jax.agent.policy import OpenAIPolicy
from omniagent_jax.engine import Engine, SamplingParams
from omniagent_jax.engine.policy import JaxPolicy
from omniagent_jax.engine.server_chat import prepare
from omniagent_jax.engine.server_protocol import parse_request
from omniagent_jax.processing import OmniProcessor
from omniagent_jax.processing.content_codec import encode_image

BODY_LIMIT = 2**20


@pytest.fixture(scope="module")
def policy(reference_pairs):
    _, model, _ = reference_pairs("tiny.yaml")
    return make_policy(model, OmniProcessor.from_pretrained())


@pytest.fixture(scope="module")
def server(policy):
    with served_client(policy, max_body_bytes=BODY_LIMIT, body_timeout_s=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return server[2]


def alone(policy, body: dict, seed: int) -> list[list[int]]:
    """Token ids of each sample of `body` run alone on a second engine (the served one is the server's)."""
    engine = Engine(policy.engine.model, **POOL)
    return [engine.generate([r])[0].tokens for r in prepare(policy, parse_request(body), seed, "alone")]


def messages():
    rng = np.random.default_rng(0)

    class Clip:  # the agent's media.Clip shape
        frames = rng.integers(0, 256, (4, 56, 56, 3), dtype=np.uint8)
        timestamps = np.array([0.0, 0.5, 1.0, 1.5])
        fps = 2.0
        audio = (0.1 * rng.standard_normal(32000)).astype(np.float32)

    return [
        {"role": "system", "content": "You are a careful agent."},
        {"role": "user", "content": [
            {"type": "text", "text": "Frame 1.00s:"},
            {"type": "image", "image": rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)},
            {"type": "text", "text": "Audio 0.00s-1.00s"},
            {"type": "audio", "audio": (0.1 * rng.standard_normal(16000)).astype(np.float32)},
            {"type": "text", "text": "Clip 0.00s-2.00s"},
            {"type": "video", "video": Clip()},
        ]},
    ]


def test_openai_policy_through_the_server_matches_the_engine(server, policy):
    agent = OpenAIPolicy(url=server[0].url, model="omniagent", temperature=1.0, top_p=1.0, top_k=0, max_tokens=4)
    msgs = messages()
    over_http = agent.generate(msgs, seed=7)
    # The server sees what the wire carries (PNG frames and clip frames, 16-bit WAV): prepare the same body here.
    body = agent.request_body(msgs, seed=7)
    (request,) = prepare(policy, parse_request(body), 7, "direct")
    assert request.use_audio_in_video  # the clip's own audio travelled with it
    (direct,) = alone(policy, body, 7)
    assert over_http.text == policy.decode(direct).strip()
    assert over_http.metrics.completion_tokens == len(direct) > 0


def test_jax_policy_takes_its_seed_per_call_and_reports_typed_metrics(policy):
    sampled = JaxPolicy(Engine(policy.engine.model, **POOL), policy.processor,
                        SamplingParams(temperature=1.0, max_new_tokens=6, stop_token_ids=(), seed=0))
    msgs = [{"role": "user", "content": "tell me a story"}]
    first, again, other, default, default_again = (sampled.generate(msgs, seed=s) for s in (5, 5, 6, None, None))
    # No hidden turn counter: the same seed (or none) gives the same turn however often the policy was used.
    assert first.token_ids == again.token_ids != other.token_ids
    assert default.token_ids == default_again.token_ids
    m = again.metrics
    assert m.prefix_caching is True and m.completion_tokens == 6 and again.finish_reason == "length"
    assert m.prompt_tokens == len(sampled.request(msgs).input_ids) and 0 < m.cached_prompt_tokens < m.prompt_tokens
    assert m.prep_seconds > 0 and m.generation_seconds > 0


def test_usage_logprobs_and_cached_prompt_tokens(client):
    body = {"model": "omniagent", "messages": user("hello there"), "seed": 1, "max_tokens": 4, "logprobs": True}
    answers = [client.post(CHAT, json=body).json() for _ in range(2)]
    for a in answers:
        assert a["object"] == "chat.completion" and a["usage"]["completion_tokens"] == 4
        assert len(a["choices"][0]["logprobs"]["content"]) == 4
        assert all(p["logprob"] <= 0 and p["entropy"] > 0 for p in a["choices"][0]["logprobs"]["content"])
    assert answers[0]["choices"][0]["message"]["content"] == answers[1]["choices"][0]["message"]["content"]
    assert answers[1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the second request reused the prompt's pages


def test_streaming_concatenates_to_the_whole_response(client, policy):
    body = {"messages": user("count with me"), "max_tokens": 4, "seed": 11, "n": 2, "return_token_ids": True}
    before = policy.engine.stats.prefilled_tokens
    whole = client.post(CHAT, json=body).json()
    # the two samples share their prompt's pages: the second prefills only what is past its last full page
    assert policy.engine.stats.prefilled_tokens - before < 1.5 * whole["usage"]["prompt_tokens"]
    events = stream(client, {**body, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["delta"]["role"] == "assistant"
    texts, ids, reasons = joined(events, n=2)
    assert texts == [c["message"]["content"] for c in whole["choices"]]
    assert ids == [c["token_ids"] for c in whole["choices"]] == alone(policy, body, 11)
    assert reasons == [c["finish_reason"] for c in whole["choices"]]
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"] == 8
    assert all(e["seed"] == 11 for e in events[:-1])
    # without include_usage no chunk carries usage
    assert all(e["usage"] is None for e in stream(client, body)[:-1])


def test_unseeded_requests_differ_and_the_returned_seed_reproduces_them(client):
    body = {"messages": user("say something"), "temperature": 1.0, "max_tokens": 4, "return_token_ids": True}
    first, second = (client.post(CHAT, json=body).json() for _ in range(2))
    assert first["seed"] != second["seed"]
    assert first["choices"][0]["token_ids"] != second["choices"][0]["token_ids"]
    again = client.post(CHAT, json={**body, "seed": first["seed"]}).json()
    assert again["choices"][0]["token_ids"] == first["choices"][0]["token_ids"] and again["seed"] == first["seed"]
    # sample i of n is the single request seeded seed + i
    pair = client.post(CHAT, json={**body, "seed": first["seed"] - 1, "n": 2}).json()
    assert pair["choices"][1]["token_ids"] == first["choices"][0]["token_ids"]


def test_concurrent_requests_are_batched_and_all_answered(client):
    def ask(i):
        return client.post(CHAT, json={"messages": user(f"question {i}"), "max_tokens": 3, "seed": i}).json()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(ask, range(4)))
    assert all(r["usage"]["completion_tokens"] == 3 for r in results)


def bad_part(part: dict) -> dict:
    return {"messages": user("look", part)}


@pytest.mark.parametrize("body, param, words", [
    ({"messages": []}, "messages", "at least 1 item"),
    ({}, "messages", "Field required"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role", "'system', 'user' or 'assistant'"),
    (bad_part({"type": "image_url", "image_url": {"url": "http://x/y.png"}}), "messages.0.content.1.image_url.url", "data URLs"),
    (bad_part({"type": "image_url", "image_url": IMAGE_URL}), "messages.0.content.1.image_url", "valid dictionary"),
    (bad_part({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}), "messages.0.content",
     "not a decodable image"),
    (bad_part({"type": "input_audio", "input_audio": {"data": "bm90IGEgd2F2"}}), "messages.0.content", "not a WAV"),
    (bad_part({"type": "hologram"}), "messages.0.content.1", "does not match any of the expected tags"),
    ({"messages": user("hi"), "mm_processor_kwargs": "fps=2"}, "mm_processor_kwargs", "valid dictionary"),
    ({"messages": user("hi"), "mm_processor_kwargs": {"fsp": 2}}, "mm_processor_kwargs.fsp", "Extra inputs"),
    ({"messages": user("hi"), "temperature": "hot"}, "temperature", "valid number"),
    ({"messages": user("hi"), "temperature": float("nan")}, "temperature", "finite number"),
    ({"messages": user("hi"), "top_p": float("inf")}, "top_p", "finite number"),
    ({"messages": user("hi"), "max_tokens": True}, "max_tokens", "valid integer"),
    ({"messages": user("hi"), "seed": -1}, "seed", "greater than or equal to 0"),
    ({"messages": user("hi"), "seed": 2**32}, "seed", "less than 4294967296"),
    ({"messages": user("hi"), "top_k": 10**9}, "top_k", "must be an integer in [0, 152064]"),  # found by the engine
    ({"messages": user("hi"), "max_tokens": 10**5}, "max_tokens", "but the pool has 511"),
    ({"messages": user("hi"), "stop_token_ids": [-3]}, "stop_token_ids", "are not token ids"),
    ({"messages": user("hi"), "stop": ["\n\n"]}, "stop", "special tokens only"),
    ({"messages": user("hi"), "stop": ["<|im_end|>"] * 5}, "stop", "at most 4 stop sequences"),
    (bad_part({"type": "image_url", "image_url": {"url": encode_image(np.zeros((1, 300, 3), np.uint8))}}), "messages",
     "aspect ratio"),  # decoded fine, refused by the processor
    ({"messages": user("hi"), "presence_penalty": 0.5}, "presence_penalty", "not supported"),
    ({"messages": user("hi"), "n": 17}, "n", "less than or equal to 16"),
    ({"messages": user("hi"), "stream_options": {"include_usage": True}}, "stream_options", "only allowed when stream"),
    ({"messages": user("hi"), "model": "gpt-4o"}, "model", "is not served here"),
])
def test_bad_requests_get_a_4xx_naming_the_field(client, body, param, words):
    response = client.post(CHAT, content=json.dumps(body), headers={"content-type": "application/json"})
    assert assert_names_a_field(response, 404 if param == "model" else 400) == param
    assert words in response.json()["error"]["message"]


def test_malformed_bodies_get_400(client):
    for content in (b"{not json", b"[1, 2]", b"", b"[" * 100_000 + b"]" * 100_000):
        response = client.post(CHAT, content=content, headers={"content-type": "application/json"})
        assert assert_names_a_field(response, 400) == "body"


def test_a_request_the_engine_fails_fails_alone(client, policy, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("tower on fire")

    monkeypatch.setattr(policy.engine.model, "media_embeddings", broken)  # the served engine's own module
    image = {"messages": user("what is this?", {"type": "image_url", "image_url": {"url": IMAGE_URL}}), "max_tokens": 4}
    text = {"messages": user("and this?"), "max_tokens": 4, "seed": 3}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda b: client.post(CHAT, json=b), [image, text, image, text]))
    assert [a.status_code for a in answers] == [500, 200, 500, 200]
    assert "media encoding failed: RuntimeError: tower on fire" in answers[0].json()["error"]["message"]
    assert answers[1].json()["choices"] == answers[3].json()["choices"]
    events = stream(client, image)
    assert events[-1] == "[DONE]" and "tower on fire" in events[-2]["error"]["message"]


def test_host_side_failures_are_500s_and_the_server_goes_on(client, policy, monkeypatch):
    step, calls = policy.engine.step, []

    def step_once_broken():
        if not calls:
            calls.append(1)
            raise RuntimeError("scheduler bug")
        step()

    body = {"messages": user("still there?"), "max_tokens": 4, "seed": 9}
    monkeypatch.setattr(policy.engine, "step", step_once_broken)  # the engine thread's next step fails
    failed = client.post(CHAT, json=body)
    assert failed.status_code == 500 and "RuntimeError: scheduler bug" in failed.json()["error"]["message"]
    assert client.post(CHAT, json=body).status_code == 200
    monkeypatch.setattr(policy, "request", lambda *a, **k: 1 / 0)  # a bug while preparing a request
    broken = client.post(CHAT, json=body)
    assert broken.status_code == 500
    assert broken.json()["error"]["message"] == "internal error: ZeroDivisionError: division by zero"
    monkeypatch.undo()
    assert client.post(CHAT, json=body).status_code == 200
    policy.engine.pool.check_no_leak()


def test_models_health_and_unknown_routes(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["omniagent"]
    assert client.get("/v1/nothing").status_code == 404 and client.get(CHAT).status_code == 405


def test_the_api_key_comes_from_the_environment(policy, monkeypatch):
    monkeypatch.setenv("OMNIAGENT_SERVE_API_KEY", "sekret")
    with served(make_policy(policy.engine.model, policy.processor)) as (thread, worker), httpx.Client(base_url=thread.url) as c:
        assert c.get("/health").status_code == 200  # probes need no key
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "sekret"}):
            response = c.get("/v1/models", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
            assert "sekret" not in response.text
        assert c.post(CHAT, json={"messages": user("hi")}).status_code == 401
        assert c.get("/v1/models", headers={"authorization": "Bearer sekret"}).status_code == 200
        worker.stop()
        assert c.get("/health").status_code == 503  # the engine thread is gone: not healthy


def raw_post(port: int, declared: int, sent: bytes) -> tuple[bytes, float]:
    """A POST declaring `declared` body bytes that sends only `sent`: the reply (read until the server
    closes the connection) and how long it took."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (declared, sent))
        t0 = time.monotonic()
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    return reply, time.monotonic() - t0


def test_bodies_over_the_limit_get_413(server, client):
    big = {"messages": user("x" * BODY_LIMIT)}
    assert assert_names_a_field(client.post(CHAT, json=big), 413) == "body"
    # a declared length far over the limit is refused before anything is read
    reply, _ = raw_post(server[0].port, 10 * BODY_LIMIT, b"{}")
    assert reply.startswith(b"HTTP/1.1 413") and b"over the limit" in reply


def test_a_body_that_never_arrives_times_out(server, client):
    reply, seconds = raw_post(server[0].port, 100, b'{"messages"')  # 11 of 100 bytes, then silence
    assert reply.startswith(b"HTTP/1.1 408") and b"stopped arriving" in reply and seconds < 5
    with socket.create_connection(("127.0.0.1", server[0].port)) as sock:  # part of a body, then the client leaves
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    assert client.get("/health").status_code == 200


def test_clients_that_go_away_have_their_requests_cancelled(server, client, policy):
    worker = server[1]
    before = worker.cancelled
    long = {"messages": user("a long story please"), "max_tokens": 400, "stream": True}
    with client.stream("POST", CHAT, json=long) as response:
        next(response.iter_lines())  # the stream has begun; then the client leaves
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=server[0].url, timeout=0.5) as impatient:
        impatient.post(CHAT, json={**long, "stream": False})
    deadline = time.monotonic() + 30
    while (worker.in_flight or worker.cancelled < before + 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.cancelled == before + 2 and worker.in_flight == 0
    policy.engine.pool.check_no_leak()


@pytest.mark.parametrize("tail, message", [
    (["--max-body-mb", "0"], "--max-body-mb must be > 0, got 0.0"),
    (["--body-timeout", "-1"], "--body-timeout must be > 0, got -1.0"),
    (["--limit-concurrency", "0"], "--limit-concurrency must be >= 1, got 0"),
])
def test_serve_checks_its_server_settings_before_loading(tail, message, capsys, monkeypatch):
    from omniagent_jax import cli

    monkeypatch.setattr(cli, "load_jax_policy", lambda *a, **k: pytest.fail("the model was loaded"))
    assert cli.main(["serve", *tail]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omniagent serve: error: ") and message in lines[0]
