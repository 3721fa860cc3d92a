"""`omniagent serve` end to end: the agent's OpenAIPolicy → real HTTP on 127.0.0.1 → the engine;
and the JaxPolicy driving an OTA episode on a real synthetic video."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from omniagent_jax.agent.policy import OpenAIPolicy
from omniagent_jax.engine import Engine, SamplingParams
from omniagent_jax.engine.policy import JaxPolicy
from omniagent_jax.engine.server import BadRequest, make_server, messages_from_openai, sampling_from_openai
from omniagent_jax.processing import OmniProcessor

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8, stop_token_ids=())


@pytest.fixture(scope="module")
def policy(reference_pairs):
    _, model, _ = reference_pairs("tiny.yaml")
    return JaxPolicy(Engine(model, page_size=16, num_pages=256), OmniProcessor.from_pretrained(), GREEDY)


@pytest.fixture(scope="module")
def server(policy):
    httpd, worker = make_server(policy, "127.0.0.1", 0)
    worker.start()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    worker.stopping.set()
    httpd.server_close()


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
    client = OpenAIPolicy(url=server, model="omniagent", temperature=0.0, top_p=1.0, top_k=0, max_tokens=8)
    msgs = messages()
    over_http = client.generate(msgs)
    # The server sees what the wire carries (PNG frames and clip frames, 16-bit WAV): decode the same body here.
    body = client.request_body(msgs)
    request = policy.request(messages_from_openai(body), sampling_from_openai(body, policy.sampling, policy.processor.tokenizer))
    assert request.use_audio_in_video  # the clip's own audio travelled with it
    # The served engine belongs to the server's worker thread: compute the expectation on another one.
    direct = Engine(policy.engine.model, page_size=16, num_pages=256).generate([request])[0]
    assert over_http.text == policy.decode(direct.tokens).strip()
    assert over_http.metrics.completion_tokens == len(direct.tokens) > 0


def test_jax_policy_takes_its_seed_per_call_and_reports_typed_metrics(policy):
    sampled = JaxPolicy(Engine(policy.engine.model, page_size=16, num_pages=256), policy.processor,
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


def test_request_seeds_map_onto_the_engine_range():
    assert sampling_from_openai({"seed": -1}, GREEDY).seed == 2**32 - 1
    assert sampling_from_openai({"seed": 2**40 + 3}, GREEDY).seed == 3
    assert sampling_from_openai({}, GREEDY).seed == GREEDY.seed


def test_server_reports_usage_logprobs_and_cached_prompt_tokens(server):
    body = {"model": "omniagent", "messages": [{"role": "user", "content": "hello there"}], "temperature": 0,
            "max_tokens": 4, "logprobs": True}
    answers = [_post(server, body) for _ in range(2)]
    for a in answers:
        assert a["object"] == "chat.completion" and a["usage"]["completion_tokens"] == 4
        assert len(a["choices"][0]["logprobs"]["content"]) == 4
        assert all(p["logprob"] <= 0 for p in a["choices"][0]["logprobs"]["content"])
    assert answers[0]["choices"][0]["message"]["content"] == answers[1]["choices"][0]["message"]["content"]
    assert answers[1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0  # the second request reused the prompt's pages


def test_concurrent_requests_are_batched_and_all_answered(server):
    results = [None] * 4

    def ask(i):
        results[i] = _post(
            server, {"messages": [{"role": "user", "content": f"question {i}"}], "temperature": 0, "max_tokens": 3}
        )

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(r is not None and r["usage"]["completion_tokens"] == 3 for r in results)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
         "data URLs"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "bm90IGEgd2F2"}}]}]},
         "not a WAV"),
        ({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, "unsupported content part"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "invalid sampling parameter"),
        ({"messages": [{"role": "user", "content": "hi"}], "stop": ["\n\n"]}, "special tokens only"),
    ],
)
def test_bad_requests_get_400_with_a_reason(server, body, message):
    with pytest.raises(urllib.error.HTTPError) as info:
        _post(server, body)
    assert info.value.code == 400
    assert message in json.loads(info.value.read())["error"]["message"]


def test_messages_from_openai_rejects_bad_roles():
    with pytest.raises(BadRequest, match="role"):
        messages_from_openai({"messages": [{"role": "robot", "content": "x"}]})


def _post(server: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"{server}/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())
