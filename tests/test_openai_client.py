"""The httpx chat-completions client and OpenAIPolicy's concurrent interface against local stub endpoints:
retries and backoff, errors surfaced, timeouts, the key kept secret, the concurrency bound, several
endpoints, and submit/collect/cancel (Contract B)."""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import select
import socket
import threading
import time
import traceback
from http.server import ThreadingHTTPServer

import agent_helpers as h
import pytest

from omniagent_jax.agent.openai_http import ChatCompletionsClient, OpenAIError, retry_after_seconds
from omniagent_jax.agent.policy import ConcurrentPolicy, OpenAIPolicy, PolicyError, endpoint_urls

SECRET = "sk-client-SECRET-9876543210"
FAST = {"backoff_s": 0.0, "timeout_s": 10.0}  # no waiting between retries in tests


def last_text(body: dict) -> str:
    content = body["messages"][-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def completion(text: str) -> dict:
    return {"id": "c", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


class Stub:
    """A scripted OpenAI-compatible endpoint. ``script`` answers the first requests ((status, payload,
    headers) each); then every request is echoed ("echo <last message>") after ``delay`` seconds.
    A message containing "bad" gets a 400; one containing "slow" waits for ``gate`` (noting in
    ``disconnected`` a client that hangs up meanwhile). Counts requests in flight at once."""

    def __init__(self, script=(), delay: float = 0.0):
        self.script = list(script)
        self.delay = delay
        self.lock = threading.Lock()
        self.active = self.max_active = 0
        self.texts: list[str] = []
        self.auth: list[str | None] = []
        self.gate = threading.Event()
        self.disconnected: list[str] = []

    def handler(self):
        stub = self

        class Handler(h.JsonHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = last_text(body)
                with stub.lock:
                    stub.texts.append(text)
                    stub.auth.append(self.headers.get("Authorization"))
                    stub.active += 1
                    stub.max_active = max(stub.max_active, stub.active)
                    scripted = stub.script.pop(0) if stub.script else None
                try:
                    self.answer(text, scripted)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with stub.lock:
                        stub.active -= 1

            def answer(self, text, scripted):
                if scripted is not None:
                    status, payload, headers = scripted
                    data = json.dumps(payload).encode()
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if "slow" in text and not self.wait_for_gate(text):
                    return
                time.sleep(stub.delay)
                if "bad" in text:
                    return self.send_json(400, {"error": {"message": f"cannot serve {text!r}"}})
                self.send_json(200, completion(f"echo {text}"))

            def wait_for_gate(self, text) -> bool:
                deadline = time.monotonic() + 10
                while not stub.gate.wait(0.01) and time.monotonic() < deadline:
                    if select.select([self.connection], [], [], 0)[0] and not self.connection.recv(1, socket.MSG_PEEK):
                        stub.disconnected.append(text)  # EOF: the client closed the connection
                        return False
                return True

        return Handler


@contextlib.contextmanager
def serve(stub: Stub):
    server = ThreadingHTTPServer(("127.0.0.1", 0), stub.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        stub.gate.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def dead_url() -> str:
    """A local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text}]}]


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_retries_5xx_and_429_then_succeeds_honouring_retry_after():
    stub = Stub([(503, {"error": {"message": "overloaded"}}, {}),
                 (429, {"error": {"message": "slow down"}}, {"Retry-After": "0.3"})])
    with serve(stub) as url, ChatCompletionsClient(url, retries=2, **FAST) as client:
        t0 = time.monotonic()
        out = client.create(BODY)
        elapsed = time.monotonic() - t0
    assert out["choices"][0]["message"]["content"] == "echo hi"
    assert len(stub.texts) == 3 and elapsed >= 0.3  # two retries; the second waited for Retry-After


def test_retries_run_out_with_the_last_error():
    stub = Stub([(500, {"error": {"message": "boom"}}, {})] * 3)
    with serve(stub) as url, ChatCompletionsClient(url, retries=2, **FAST) as client:
        with pytest.raises(OpenAIError, match="HTTP 500: boom") as e:
            client.create(BODY)
    assert e.value.status == 500 and len(stub.texts) == 3


def test_client_errors_are_not_retried_and_carry_the_server_message():
    stub = Stub([(400, {"error": {"message": "temperature must be finite"}}, {}),
                 (422, {"detail": [{"loc": ["body", "top_k"], "msg": "must be >= 0"}]}, {}),
                 (200, {"no": "choices"}, {})])
    with serve(stub) as url, ChatCompletionsClient(url, retries=3, **FAST) as client:
        with pytest.raises(OpenAIError, match="HTTP 400: temperature must be finite") as e:
            client.create(BODY)
        assert e.value.status == 400 and len(stub.texts) == 1
        with pytest.raises(OpenAIError, match="HTTP 422: .*top_k.*must be >= 0"):
            client.create(BODY)
        with pytest.raises(OpenAIError, match="returned no chat completion"):
            client.create(BODY)
    assert len(stub.texts) == 3  # each failed once, without a retry


def test_connection_refused_is_retried_then_a_policy_error():
    url = dead_url()
    with ChatCompletionsClient(url, retries=2, backoff_s=0.01) as client:
        with pytest.raises(OpenAIError, match=r"cannot reach .* after 3 attempt\(s\)") as e:
            client.create(BODY)
    assert e.value.status is None
    with OpenAIPolicy(url, "m", retries=1, backoff_s=0.0) as policy, pytest.raises(PolicyError, match="cannot reach"):
        policy.generate(user("hi"))


def test_read_timeout_is_retried_then_fails():
    stub = Stub(delay=1.0)
    with serve(stub) as url, ChatCompletionsClient(url, retries=1, backoff_s=0.0, timeout_s=0.2) as client:
        t0 = time.monotonic()
        with pytest.raises(OpenAIError, match=r"timed out \(ReadTimeout\) after 2 attempt"):
            client.create(BODY)
        assert time.monotonic() - t0 < 0.9
    assert len(stub.texts) == 2


def test_the_key_is_sent_but_never_shown(caplog):
    stub = Stub([(400, {"error": {"message": "nope"}}, {})])
    failures: list[BaseException] = []
    with caplog.at_level(logging.DEBUG), serve(stub) as url:
        policy = OpenAIPolicy(url, "m", api_key=SECRET, retries=0, **FAST)
        dead = OpenAIPolicy([dead_url(), dead_url()], "m", api_key=SECRET, retries=0, **FAST)
        shown = repr(policy) + str(policy.clients) + repr(policy.client) + repr(dead)
        for p in (policy, dead):
            with pytest.raises(PolicyError) as e:
                p.generate(user("hi"))
            failures.append(e.value)
        assert policy.generate(user("again")).text == "echo again"
        policy.close()
    assert stub.auth == [f"Bearer {SECRET}"] * 2
    assert "api_key=<set>" in shown and "HTTP 400: nope" in str(failures[0])
    assert "cannot reach" in str(failures[1]) and "(2 of 2 endpoints tried)" in str(failures[1])
    everything = shown + caplog.text + "".join("".join(traceback.format_exception(f)) for f in failures)
    assert "HTTP Request" in caplog.text and SECRET not in everything  # httpx did log the requests


def test_an_unreachable_endpoint_passes_its_turns_on():
    stub = Stub()
    with serve(stub) as url, OpenAIPolicy([dead_url(), url], "m", retries=1, **FAST) as policy:
        for i in range(4):
            policy.submit(str(i), user(str(i)))
        got: dict = {}
        while len(got) < 4:
            got.update(policy.collect(timeout=10))
    assert {k: v.text for k, v in got.items()} == {str(i): f"echo {i}" for i in range(4)}
    assert sorted(stub.texts) == ["0", "1", "2", "3"]


def test_concurrency_bound_is_respected():
    stub = Stub(delay=0.15)
    with serve(stub) as url, OpenAIPolicy(url, "m", max_concurrency=3, **FAST) as policy:
        assert isinstance(policy, ConcurrentPolicy)
        for i in range(9):
            policy.submit(f"k{i}", user(f"t{i}"))
        got: dict = {}
        while len(got) < 9:
            got.update(policy.collect(timeout=10))
    assert stub.max_active == 3
    assert {k: v.text for k, v in got.items()} == {f"k{i}": f"echo t{i}" for i in range(9)}
    assert all(v.metrics.generation_seconds >= 0.15 and v.metrics.prompt_tokens == 3 for v in got.values())


def test_several_endpoints_share_the_turns():
    stubs = [Stub(delay=0.1), Stub(delay=0.1)]
    with serve(stubs[0]) as a, serve(stubs[1]) as b, OpenAIPolicy(f" {a}, {b} ,", "m", max_concurrency=2, **FAST) as policy:
        assert [c.url for c in policy.clients] == [a + "/chat/completions", b + "/chat/completions"]
        for i in range(8):
            policy.submit(str(i), user(str(i)))
        got: dict = {}
        while len(got) < 8:
            got.update(policy.collect(timeout=10))
        policy.generate(user("x"))
        policy.generate(user("y"))  # sequential turns alternate
    assert [len(s.texts) for s in stubs] == [5, 5] and all(s.max_active == 2 for s in stubs)
    assert {stubs[0].texts[-1], stubs[1].texts[-1]} == {"x", "y"}


def test_submit_collect_cancel():
    stub = Stub()
    with serve(stub) as url, OpenAIPolicy(url, "m", max_concurrency=1, **FAST) as policy:
        assert policy.collect() == []  # nothing in flight: no wait
        policy.submit("a", user("slow a"))
        policy.submit("b", user("b"))  # queued behind "a": the only slot is taken
        h.wait_for(lambda: "slow a" in stub.texts)  # "a" has reached the server (a loaded machine can be slow to send)
        with pytest.raises(ValueError, match="already in flight"):
            policy.submit("a", user("again"))
        t0 = time.monotonic()
        assert policy.collect(timeout=0.1) == []
        assert 0.1 <= time.monotonic() - t0 < 2
        policy.cancel("b")  # never sent
        policy.cancel("a")  # in flight: its connection is closed, its slot freed
        policy.cancel("unknown")
        policy.submit("c", user("c"))
        policy.submit("d", user("bad d"))
        policy.submit("e", [{"role": "user", "content": [{"type": "hologram"}]}])
        got: dict = {}
        while len(got) < 3:
            got.update(policy.collect(timeout=10))
        assert got["c"].text == "echo c"
        assert isinstance(got["d"], PolicyError) and "HTTP 400: cannot serve 'bad d'" in str(got["d"])
        assert isinstance(got["e"], PolicyError) and "cannot send" in str(got["e"])
        policy.submit("a", user("a reused"))  # a key is free again once its turn is cancelled or collected
        assert [(k, v.text) for k, v in policy.collect(timeout=10)] == [("a", "echo a reused")]
        assert policy.generate(user("blocking")).text == "echo blocking"
        h.wait_for(lambda: stub.disconnected)
    assert "b" not in stub.texts and stub.disconnected == ["slow a"]
    assert stub.texts[0] == "slow a" and sorted(stub.texts[1:3]) == ["bad d", "c"] and stub.texts[3:] == ["a reused", "blocking"]


def test_retry_after_and_settings():
    assert retry_after_seconds("2") == 2.0 and retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < retry_after_seconds(later) <= 31
    client = ChatCompletionsClient("http://h:1", backoff_s=1.0, max_backoff_s=5.0)
    assert 0.5 <= client.backoff(0) <= 1.0 and 2.0 <= client.backoff(2) <= 4.0 and client.backoff(10) == 5.0
    assert client.backoff(0, retry_after=3.0) == 3.0 and client.backoff(0, retry_after=60.0) == 5.0
    shown = repr(ChatCompletionsClient("http://u:pw@h:1"))
    assert shown == "ChatCompletionsClient(url='http://h:1/v1/chat/completions', api_key=<unset>)"
    with pytest.raises(ValueError, match="max_concurrency=0"):
        ChatCompletionsClient("http://h:1", max_concurrency=0)
    assert endpoint_urls(["http://a", " http://b "]) == ["http://a", "http://b"]
    with pytest.raises(ValueError, match="no endpoint URL"):
        OpenAIPolicy(" , ", "m")


def test_from_env_takes_a_list(tmp_path, monkeypatch):
    for name in ("OMNIAGENT_OPENAI_URL", "OMNIAGENT_OPENAI_MODEL", "OMNIAGENT_OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    env = tmp_path / ".env"
    env.write_text("OMNIAGENT_OPENAI_URL=http://a:1/v1,http://b:2\nOMNIAGENT_OPENAI_MODEL=m\n")
    policy = OpenAIPolicy.from_env(env_file=env, max_concurrency=4)
    assert [c.url for c in policy.clients] == ["http://a:1/v1/chat/completions", "http://b:2/v1/chat/completions"]
    assert all(c.max_concurrency == 4 for c in policy.clients)
