"""No request can hurt another: a hypothesis fuzz over request bodies always gets a 200 or a 4xx naming
the field (never a 5xx or a dropped connection), and a mixed load on 127.0.0.1 (valid requests,
streaming and n=2 ones among them, bad ones, clients that leave mid-stream) answers every valid
request with the tokens it gets alone, and leaves the server up and its page pool full."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import (
    CHAT,
    IMAGE_URL,
    POOL,
    SAMPLED,
    WAV_B64,
    assert_names_a_field,
    joined,
    make_policy,
    served_client,
    sse_events,
    user,
)

from omniagent_jax.engine import Engine
from omniagent_jax.engine.server_chat import prepare
from omniagent_jax.engine.server_protocol import parse_request
from omniagent_jax.processing import OmniProcessor

BODY_LIMIT = 2**18


@pytest.fixture(scope="module")
def policy(reference_pairs):
    # one new token unless asked: a fuzzed body that drops `max_tokens` costs no decode compile either
    one_token = dataclasses.replace(SAMPLED, max_new_tokens=1)
    return make_policy(reference_pairs("tiny.yaml")[1], OmniProcessor.from_pretrained(), one_token)


@pytest.fixture(scope="module")
def server(policy):
    with served_client(policy, max_body_bytes=BODY_LIMIT, body_timeout_s=5.0) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return server[2]


def assert_answered(response: httpx.Response, body: dict) -> None:
    """200 with a whole chat completion (or a stream ending in [DONE]), or a 4xx naming the field."""
    if response.status_code != 200:
        assert_names_a_field(response)
        return
    if body.get("stream"):
        events = sse_events(response)
        assert events[-1] == "[DONE]" and all("error" not in e for e in events[:-1]), events
        return
    answer = response.json()
    assert answer["object"] == "chat.completion" and len(answer["choices"]) == body.get("n", 1)
    assert all(c["finish_reason"] in ("stop", "length") for c in answer["choices"])


# ----------------------------------------------------------------------------------- the fuzz
junk = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6), st.lists(st.integers(-3, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
bad_urls = st.sampled_from([
    "http://example.com/cat.png", "data:image/png;base64,!!!", "data:image/png;base64,AAAA", "data:text/plain;base64,aGk=",
    "", "data:image/png,abc", "data:video/png;base64,AAAA,BBBB", IMAGE_URL.replace("image/png", "audio/wav"),
])
good_parts = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=8)),
    st.just({"type": "image_url", "image_url": {"url": IMAGE_URL}}),
    st.just({"type": "input_audio", "input_audio": {"data": WAV_B64, "format": "wav"}}),
)
bad_parts = st.one_of(
    bad_urls.map(lambda u: {"type": "image_url", "image_url": {"url": u}}),
    bad_urls.map(lambda u: {"type": "video_url", "video_url": {"url": u}}),
    st.just({"type": "image_url", "image_url": IMAGE_URL}),  # the URL itself, not an object holding it
    st.sampled_from(["bm90IGEgd2F2", "", "%%%"]).map(lambda d: {"type": "input_audio", "input_audio": {"data": d}}),
    st.just({"type": "input_audio", "input_audio": {"data": WAV_B64, "format": "mp3"}}),
    st.builds(lambda t: {"type": t}, st.text(max_size=6)),
    junk,
)
good_messages = st.lists(
    st.one_of(
        st.builds(lambda t: {"role": "user", "content": t}, st.text(max_size=12)),
        st.builds(lambda p: {"role": "user", "content": p}, st.lists(good_parts, min_size=1, max_size=2)),
        st.builds(lambda t: {"role": "system", "content": t}, st.text(max_size=12)),
    ),
    min_size=1, max_size=2,
)
# One new token (prefill and sampling, no decode loop): the fuzz is about the requests, and every token
# shape it reached would cost a compile; the load test below decodes.
valid = st.fixed_dictionaries(
    {"messages": good_messages, "max_tokens": st.just(1)},
    optional={
        "temperature": st.floats(0, 2), "top_p": st.floats(0.05, 1), "top_k": st.integers(-1, 40),
        "seed": st.integers(0, 2**32 - 1), "n": st.integers(1, 2), "stream": st.booleans(), "logprobs": st.booleans(),
        "stop": st.sampled_from(["<|im_end|>", ["<|endoftext|>"]]), "model": st.just("omniagent"),
        "mm_processor_kwargs": st.fixed_dictionaries({}, optional={"use_audio_in_video": st.booleans(),
                                                                   "fps": st.floats(0.5, 4)}),
    },
)
FIELDS = ["messages", "model", "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "n", "seed", "stop",
          "stop_token_ids", "stream", "stream_options", "logprobs", "mm_processor_kwargs", "presence_penalty", "tools"]
OUT_OF_RANGE = {"temperature": [-0.5, 2.5, 1e308], "top_p": [0, -1, 1.5], "top_k": [-2, 10**7], "max_tokens": [0, -4, 10**6],
                "n": [0, 17, 10**9], "seed": [-1, 2**32, 2**64], "stop_token_ids": [[-1], [10**9]]}


@st.composite
def bodies(draw) -> tuple[bytes, dict | None]:
    """(raw body, the JSON object it encodes or None): mostly one mutation of a valid request."""
    body = draw(valid)
    # hypothesis favours a list's first entries: the costly valid requests come last
    kind = draw(st.sampled_from(["field", "range", "part", "message", "drop", "raw", "huge", "valid"]))
    if kind == "field":
        body[draw(st.sampled_from(FIELDS))] = draw(junk)
    elif kind == "range":
        field = draw(st.sampled_from(sorted(OUT_OF_RANGE)))
        body[field] = draw(st.sampled_from(OUT_OF_RANGE[field]))
    elif kind == "part":
        body["messages"][0] = {"role": "user", "content": [draw(good_parts), draw(bad_parts)]}
    elif kind == "message":
        body["messages"][-1] = draw(st.one_of(junk, st.fixed_dictionaries({"role": junk, "content": st.text(max_size=3)}),
                                              st.fixed_dictionaries({"role": st.just("user"), "content": junk})))
    elif kind == "drop":
        del body["messages"]
    elif kind == "raw":
        return draw(st.sampled_from([b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"messages": [}', b"1e999"])), None
    elif kind == "huge":
        body["messages"] = user("x" * BODY_LIMIT)
    return json.dumps(body).encode(), body  # json.dumps writes NaN and Infinity as the bare words


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=bodies())
def test_fuzzed_requests_get_a_200_or_a_4xx_naming_the_field(client, case):
    raw, body = case
    response = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    assert_answered(response, body or {})


# ----------------------------------------------------------------------------------- the load
def load_bodies() -> tuple[list[dict], list[dict], list[dict]]:
    valid = []
    for i in range(100):
        body = {"messages": user(f"question {i}: " + "why " * (i % 7)), "max_tokens": 4, "seed": 1000 + i,
                "return_token_ids": True}
        if i % 10 == 3:
            body["messages"] = user(f"what is in picture {i}?", {"type": "image_url", "image_url": {"url": IMAGE_URL}})
        if i % 4 == 1:
            body["stream"] = True
        if i % 6 == 2:
            body["n"] = 2
        valid.append(body)
    bad = [
        {"messages": user("hi"), "seed": -1}, {"messages": user("hi"), "temperature": "warm"}, {"messages": []},
        {"messages": user("hi"), "top_k": 10**7}, {"messages": user("hi"), "max_tokens": 10**6},
        {"messages": user("hi", {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}})},
        {"messages": user("hi", {"type": "input_audio", "input_audio": {"data": "bm90IGEgd2F2"}})},
        {"messages": user("hi"), "mm_processor_kwargs": "audio please"}, {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": user("hi"), "stop": ["\n"]},
    ] * 3
    leaving = [{"messages": user(f"tell me a long story {i}"), "max_tokens": 64, "stream": True} for i in range(10)]
    return valid, bad, leaving


async def run_load(url: str, valid: list[dict], bad: list[dict], leaving: list[dict]):
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=200)) as c:

        async def ask(body: dict):
            if body.get("stream"):
                async with c.stream("POST", CHAT, json=body) as r:
                    return r.status_code, [line async for line in r.aiter_lines()]
            r = await c.post(CHAT, json=body)
            return r.status_code, r

        async def leave(body: dict) -> bool:
            async with c.stream("POST", CHAT, json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                        return True  # tokens arrived: the client walks away mid-stream
            return False

        return await asyncio.gather(asyncio.gather(*map(ask, valid)), asyncio.gather(*map(ask, bad)),
                                    asyncio.gather(*map(leave, leaving)))


def test_mixed_load_every_request_gets_its_own_answer_and_no_page_leaks(server, policy):
    thread, worker, _ = server
    valid, bad, leaving = load_bodies()
    cancelled_before = worker.cancelled
    t0 = time.monotonic()
    answers, refusals, left = asyncio.run(run_load(thread.url, valid, bad, leaving))
    assert time.monotonic() - t0 < 120

    ids: list[list[list[int]]] = []
    for body, (status, got) in zip(valid, answers):
        assert status == 200
        n = body.get("n", 1)
        if body.get("stream"):
            events = [json.loads(line[6:]) if line != "data: [DONE]" else "[DONE]" for line in got if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            _, tokens, reasons = joined(events, n)
        else:
            choices = got.json()["choices"]
            tokens, reasons = [c["token_ids"] for c in choices], [c["finish_reason"] for c in choices]
        assert len(tokens) == n and all(1 <= len(t) <= 4 for t in tokens) and set(reasons) <= {"stop", "length"}
        ids.append(tokens)
    for body, (status, got) in zip(bad, refusals):
        assert_names_a_field(got)
    assert all(left)

    deadline = time.monotonic() + 60  # the clients that left: cancelled, not run to their 64 tokens
    while worker.in_flight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.in_flight == 0 and worker.cancelled - cancelled_before == len(leaving)
    policy.engine.pool.check_no_leak()
    with httpx.Client(base_url=thread.url) as c:
        assert c.get("/health").json() == {"status": "ok"}

    # 20 of them, token for token, against the same request alone on a second engine (same seeds)
    reference = Engine(policy.engine.model, **POOL)
    checked = list(range(3, 100, 5))
    assert {"stream", "n"} <= {k for i in checked for k in valid[i]} and any(i % 10 == 3 for i in checked)
    for i in checked:
        requests = prepare(policy, parse_request(valid[i]), valid[i]["seed"], f"ref-{i}")
        assert [reference.generate([r])[0].tokens for r in requests] == ids[i], f"request {i}"
