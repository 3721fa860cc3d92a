"""OpenAIPolicy end to end against a local OpenAI-compatible stub that replays a reference trajectory."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
import wave
from http.server import ThreadingHTTPServer

import agent_helpers as h
import numpy as np
import pytest
from PIL import Image

from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.driver import Episode, EpisodeDriver
from omniagent_jax.agent.environment import EnvConfig, VideoEnvironment
from omniagent_jax.agent.limits import EpisodeLimits
from omniagent_jax.agent.messages import message_text
from omniagent_jax.agent.openai_http import chat_completions_url
from omniagent_jax.agent.policy import OpenAIPolicy, Policy, PolicyError, ScriptedPolicy
from omniagent_jax.agent.runner import run_episode
from omniagent_jax.processing.content_codec import encode_image, encode_wav
from omniagent_jax.processing.content_codec import encode_messages as to_openai_messages
from omniagent_jax.processing.policy_contract import turn_seed

SERVER_LIFETIME_S = 60


class StubState:
    """``by_turn``: every episode plays ``outputs`` (the reply is chosen by the number of assistant turns
    in the request, so episodes may interleave), each reply after ``delay`` s."""

    def __init__(self, outputs, *, fail_first: int = 0, fail_code: int = 500, by_turn: bool = False, delay: float = 0.0):
        self.outputs = list(outputs)
        self.requests: list[dict] = []
        self.fail_first = fail_first
        self.fail_code = fail_code
        self.by_turn = by_turn
        self.delay = delay
        self.lock = threading.Lock()
        self.active = self.max_active = 0


def make_handler(state: StubState):
    class Handler(h.JsonHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                return self.send_json(404, {"error": "not found"})
            if state.fail_first > 0:
                state.fail_first -= 1
                return self.send_json(state.fail_code, {"error": {"message": "try again"}})
            with state.lock:
                state.requests.append(body)
                state.active += 1
                state.max_active = max(state.max_active, state.active)
            time.sleep(state.delay)
            with state.lock:
                state.active -= 1
            if state.by_turn:
                text = state.outputs[sum(m["role"] == "assistant" for m in body["messages"])]
            else:
                text = state.outputs.pop(0)
            return self.send_json(200, {
                "id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text},
                             "logprobs": {"content": [{"token": "x", "logprob": -0.25}, {"token": "y", "logprob": -1.5}]}}],
                "usage": {"prompt_tokens": 1234, "completion_tokens": 56, "total_tokens": 1290,
                          "prompt_tokens_details": {"cached_tokens": 1000}},
            })

    return Handler


@contextlib.contextmanager
def stub_server(state: StubState):
    """A local OpenAI-compatible stub on 127.0.0.1; stops when the test ends or after 60 s."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    guard = threading.Timer(SERVER_LIFETIME_S, server.shutdown)
    guard.daemon = True
    guard.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        guard.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def decode_data_url(url: str, prefix: str) -> bytes:
    assert url.startswith(prefix), url[:40]
    return base64.b64decode(url[len(prefix):])


def check_request(body: dict, env_messages: list[dict]) -> None:
    """The request carries the context: same roles and texts, media as decodable data URLs."""
    chat = body["messages"]
    assert [m["role"] for m in chat] == [m["role"] for m in env_messages]
    for sent, ours in zip(chat, env_messages):
        if isinstance(sent["content"], str):
            assert sent["content"] == message_text(ours)
            continue
        sent_text = "".join(p["text"] for p in sent["content"] if p["type"] == "text")
        assert sent_text == message_text(ours)
        for p in sent["content"]:
            if p["type"] == "image_url":
                img = Image.open(io.BytesIO(decode_data_url(p["image_url"]["url"], "data:image/png;base64,")))
                assert img.size == (h.FAKE_FRAME_SIZE, h.FAKE_FRAME_SIZE)
            elif p["type"] == "input_audio":
                assert p["input_audio"]["format"] == "wav"
                with wave.open(io.BytesIO(base64.b64decode(p["input_audio"]["data"]))) as w:
                    assert w.getframerate() == h.AUDIO_RATE and w.getnchannels() == 1
            elif p["type"] == "video_url":
                frames = p["video_url"]["url"][len("data:video/png;base64,"):].split(",")
                assert p["video_url"]["url"].startswith("data:video/png;base64,") and len(frames) >= 2
                Image.open(io.BytesIO(base64.b64decode(frames[0]))).verify()
            else:
                assert p["type"] == "text"


def test_openai_policy_replays_reference_trajectory(reference_dir):
    """The TR trajectory fetches frames, audio and a clip with audio, then answers."""
    steps = h.load_reference_trajectories(reference_dir / "example_train_sft.jsonl")[1]
    info = steps[0]["extra_info"]
    assert info["question_type"] == "TR"
    outputs = [s["output"] for s in steps]
    state = StubState(outputs)
    sample = Sample(video=info["video"], question_type="TR", question=info["question"], answer=info["answer"])
    config = EnvConfig(limits=EpisodeLimits(58, 200.0, 42.0), budget=StepBudget(max_steps=22))
    seen = []
    with stub_server(state) as url, VideoEnvironment(
        sample, config, media_opener=h.fake_opener(info["duration_seconds"], info["fps"], True), **h.FAKE_ENV_KW
    ) as env:
        policy = OpenAIPolicy(url, "omniagent-stub", logprobs=True, timeout_s=30)
        assert isinstance(policy, Policy)
        result = run_episode(env, policy, on_step=lambda rec, e: seen.append(rec.raw_input))
    assert [r.output for r in result.steps] == outputs
    assert result.won and result.total_reward == pytest.approx(steps[-1]["episode_reward"], abs=1e-9)
    assert len(state.requests) == len(steps)
    for body, ctx in zip(state.requests, seen):
        assert body["model"] == "omniagent-stub" and body["top_k"] == 20 and body["stop"] == ["<|im_end|>"]
        assert body["logprobs"] is True
        check_request(body, ctx)
    kinds = [[p["type"] for m in b["messages"] if isinstance(m["content"], list) for p in m["content"] if p["type"] != "text"]
             for b in state.requests]
    assert kinds[1] == ["image_url"] * 58 and kinds[2] == ["input_audio"] and kinds[3] == ["video_url", "input_audio"]
    assert state.requests[3]["mm_processor_kwargs"] == {"use_audio_in_video": True, "fps": 2.0}
    assert "mm_processor_kwargs" not in state.requests[1]
    assert all("seed" not in b for b in state.requests)  # an unseeded episode sends no seed
    rec = result.steps[0]
    assert rec.logprobs == [-0.25, -1.5] and rec.policy_metrics.prompt_tokens == 1234
    assert rec.policy_metrics.completion_tokens == 56 and rec.policy_metrics.cached_prompt_tokens == 1000
    assert rec.finish_reason == "stop" and rec.policy_metrics.prefix_caching is None and result.prefix_caching is None


def test_episodes_at_once_through_openai_policy(reference_dir):
    """Six TR episodes through the driver, at most 3 requests in flight, play exactly as one by one."""
    steps = h.load_reference_trajectories(reference_dir / "example_train_sft.jsonl")[1]
    info = steps[0]["extra_info"]
    outputs = [s["output"] for s in steps]
    sample = Sample(video=info["video"], question_type="TR", question=info["question"], answer=info["answer"])
    config = EnvConfig(limits=EpisodeLimits(58, 200.0, 42.0), budget=StepBudget(max_steps=22))

    def make_env():
        return VideoEnvironment(sample, config, media_opener=h.fake_opener(info["duration_seconds"], info["fps"], True),
                                **h.FAKE_ENV_KW)

    state = StubState(outputs, by_turn=True, delay=0.02)
    with stub_server(state) as url, OpenAIPolicy(url, "m", max_concurrency=3, timeout_s=30) as policy:
        together = EpisodeDriver(policy, max_live=6).run([Episode(f"e{i}", make_env, seed=i) for i in range(6)])
        bodies_together = list(state.requests)
        state.requests.clear()
        alone = []
        for i in range(6):
            with make_env() as env:
                alone.append(run_episode(env, policy, seed=i))
    assert 1 < state.max_active <= 3
    for a, b in zip(together, alone):
        assert [r.output for r in a.steps] == [r.output for r in b.steps] == outputs
        assert [r.seed for r in a.steps] == [r.seed for r in b.steps] and a.error is None
        assert a.won and a.total_reward == b.total_reward
    assert len(bodies_together) == 6 * len(steps)
    assert sorted(bodies_together, key=lambda b: b["seed"]) == sorted(state.requests, key=lambda b: b["seed"])


def test_openai_policy_sends_the_turn_seed():
    msgs = [{"role": "user", "content": "hi"}]
    state = StubState([h.frames(0, 1, 2), h.answer("A")])
    with stub_server(state) as url:
        policy = OpenAIPolicy(url, "m", timeout_s=10, prefix_caching=True)
        out = policy.generate(msgs, seed=turn_seed(3, 1))
        assert out.metrics.prefix_caching is True and out.metrics.generation_seconds > 0
        policy.generate(msgs)
    assert state.requests[0]["seed"] == turn_seed(3, 1) and "seed" not in state.requests[1]


def test_clip_without_audio_sets_the_flag_off():
    clip = h.FakeClip(np.zeros((3, 4, 4, 3), np.uint8), np.array([0.0, 0.5, 1.0]), 2.0, None)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Clip 0.00s-1.50s"}, {"type": "video", "video": clip}]}]
    chat, mm = to_openai_messages(msgs)
    assert mm == {"use_audio_in_video": False, "fps": 2.0}
    assert [p["type"] for p in chat[0]["content"]] == ["text", "video_url"]
    with pytest.raises(ValueError, match="cannot send"):
        to_openai_messages([{"role": "user", "content": [{"type": "hologram"}]}])


def test_encoders_round_trip():
    frame = (np.arange(2 * 3 * 3) % 255).astype(np.uint8).reshape(2, 3, 3)
    png = Image.open(io.BytesIO(decode_data_url(encode_image(frame), "data:image/png;base64,")))
    assert np.array_equal(np.asarray(png), frame)  # lossless
    assert encode_image(frame, "jpeg").startswith("data:image/jpeg;base64,")
    with pytest.raises(ValueError):
        encode_image(frame, "gif")
    wave_in = np.array([0.0, 0.5, -0.5, 1.5], np.float32)
    with wave.open(io.BytesIO(base64.b64decode(encode_wav(wave_in)))) as w:
        pcm = np.frombuffer(w.readframes(4), "<i2")
    assert pcm.tolist() == [0, 16384, -16384, 32767]


def test_retries_then_errors():
    state = StubState([h.frames(0, 1, 2)], fail_first=1)
    with stub_server(state) as url:
        policy = OpenAIPolicy(url, "m", timeout_s=10, retries=1, backoff_s=0.0)
        out = policy.generate([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
        assert out.text == h.frames(0, 1, 2)
    state = StubState([], fail_first=5, fail_code=400)
    with stub_server(state) as url:
        policy = OpenAIPolicy(url, "m", timeout_s=10, retries=3)
        with pytest.raises(PolicyError, match="HTTP 400"):
            policy.generate([{"role": "user", "content": "hi"}])
        assert state.fail_first == 4  # a 4xx is not retried
    with stub_server(StubState([])) as url:
        dead = url  # the server is gone after the block
    policy = OpenAIPolicy(dead, "m", timeout_s=5, retries=0)
    with pytest.raises(PolicyError, match="cannot reach"):
        policy.generate([{"role": "user", "content": "hi"}])


def test_endpoint_urls_and_config_errors(tmp_path, monkeypatch):
    assert chat_completions_url("http://h:8000") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    with pytest.raises(ValueError, match="http"):
        OpenAIPolicy("h:8000", "m")
    for name in ("OMNIAGENT_OPENAI_URL", "OMNIAGENT_OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="needs an endpoint URL"):
        OpenAIPolicy.from_env(env_file=tmp_path / "none")


def test_scripted_policy_records_and_runs_out():
    p = ScriptedPolicy(["a"])
    msgs = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    assert p.generate(msgs, unchanged_prefix=0).text == "a"
    msgs[0]["content"].append({"type": "text", "text": "later"})
    assert len(p.inputs[0][0]["content"]) == 1  # the record is a copy
    with pytest.raises(PolicyError, match="only 1 outputs"):
        p.generate(msgs)
