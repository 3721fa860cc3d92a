"""The episode driver on the tiny JAX model: a group of 8 rollouts played at once through the engine's
continuous batching gives exactly the records (and generated ids) of the same episodes played one by one;
the group prefills its shared prompt once and later turns reuse their episode's pages; cancelling mid-turn
frees the pages, and a corrupt video or a failing turn ends only its own episode; the same group through
`OpenAIPolicy` -> `omniagent serve` generates the direct JAX policy's tokens, token for token.

The tiny model's random weights never write a valid action, so `Forced` (driver_helpers) lets the engine
generate every turn and builds the turn's text from the episode's scripted action with the generated text
as its observation: the engine's output (seeded per turn) still shapes every history that follows. The
videos' audio is put on the int16 grid, which the OpenAI wire carries exactly (processing/content_codec)."""

from __future__ import annotations

import dataclasses

import media_factory
import numpy as np
import pytest
from driver_helpers import Forced, comparable, first_difference, logprobs_close

from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.driver import Episode, EpisodeDriver
from omniagent_jax.agent.environment import EnvConfig, VideoEnvironment
from omniagent_jax.agent.episode import END_CANCELLED, END_ERROR
from omniagent_jax.agent.policy import OpenAIPolicy
from omniagent_jax.agent.runner import run_episode
from omniagent_jax.engine import Engine, SamplingParams
from omniagent_jax.engine.policy import JaxPolicy
from omniagent_jax.engine.server import ServerThread, create_app
from omniagent_jax.media import open_video
from omniagent_jax.processing import OmniProcessor
from omniagent_jax.processing.policy_contract import PolicyError, episode_seed, turn_key

PAGE = 16
SAMPLING = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=5, stop_token_ids=(), logprobs=True)
ACTIONS = [  # one script per rollout kind: frames, audio and clips in different orders
    [("get_frames", 0.0, 3.0, 2), ("get_audio", 1.0, 2.0), ("answer", "A")],
    [("get_clip", 0.0, 2.0), ("answer", "A")],
    [("get_audio", 0.0, 1.5), ("get_frames", 1.0, 3.0, 2), ("answer", "A")],
    [("get_frames", 0.0, 2.0, 1), ("get_clip", 1.0, 3.0), ("answer", "A")],
]
GROUP = [f"r{r}" for r in range(8)]
RUN_SEED = 11


@pytest.fixture(scope="module")
def setup(tmp_path_factory, reference_pairs):
    _, model, _ = reference_pairs("tiny.yaml")
    video = media_factory.make_video(tmp_path_factory.mktemp("driver") / "v.mp4", duration=4.0, fps=5, audio=True)
    corrupt = tmp_path_factory.mktemp("driver") / "corrupt.mp4"
    corrupt.write_bytes(video.read_bytes()[: 600])  # a header and no frames
    return model, OmniProcessor.from_pretrained(), video, corrupt


def jax_policy(setup) -> JaxPolicy:
    model, processor, _, _ = setup
    return JaxPolicy(Engine(model, page_size=PAGE, num_pages=1536, max_batch=8, decode_steps=2), processor, SAMPLING)


def on_int16_grid(audio):
    return None if audio is None else (np.clip(np.round(audio * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


class Int16Audio:
    """The media reader with its audio on the int16 grid (what a WAV carries exactly)."""

    def __init__(self, path):
        self.reader = open_video(path)
        self.info = self.reader.info

    def frames(self, timestamps):
        return self.reader.frames(timestamps)

    def audio(self, start, end):
        return on_int16_grid(self.reader.audio(start, end))

    def clip(self, start, end):
        clip = self.reader.clip(start, end)
        return dataclasses.replace(clip, audio=on_int16_grid(clip.audio))

    def close(self):
        self.reader.close()


def make_env(video) -> VideoEnvironment:
    sample = Sample(video=str(video), question_type="MCQ", question="Which colour?", options=("A. Red", "B. Blue"), answer="A")
    return VideoEnvironment(sample, EnvConfig(budget=StepBudget(dynamic=False, max_steps=4)), media_opener=Int16Audio)


def group(video):
    return [Episode(key, lambda: make_env(video), seed=episode_seed(RUN_SEED, 0, r)) for r, key in enumerate(GROUP)]


def scripts() -> dict[str, list]:
    return {key: ACTIONS[r % len(ACTIONS)] for r, key in enumerate(GROUP)}


@pytest.fixture(scope="module")
def one_by_one(setup):
    """The group's episodes played one after another, each by `run_episode`, on an engine of their own;
    `one_by_one.token_ids` holds each turn's generated ids by turn key."""
    policy = jax_policy(setup)
    results = Reference()
    for episode in group(setup[2]):
        forced = Forced(policy, {"episode": scripts()[episode.key]})
        with make_env(setup[2]) as env:
            results[episode.key] = run_episode(env, forced, seed=episode.seed)
        results.token_ids.update({turn_key(episode.key, int(k.rpartition("#")[2])): v for k, v in forced.token_ids.items()})
    policy.engine.pool.check_no_leak()
    return results


class Reference(dict):
    def __init__(self):
        super().__init__()
        self.token_ids: dict[str, list[int]] = {}


def assert_same_episodes(results: dict, reference: Reference, forced: Forced, keys) -> None:
    """Records equal (log-probs to float rounding) and every turn's generated ids equal."""
    for key in keys:
        got, want = comparable(results[key]), comparable(reference[key])
        assert got == want, first_difference(got, want, key)
        assert logprobs_close(results[key], reference[key]) and results[key].steps[0].logprobs, key
        for t in range(1, len(results[key].steps) + 1):
            assert forced.token_ids[turn_key(key, t)] == reference.token_ids[turn_key(key, t)], (key, t)


def test_a_group_at_once_plays_exactly_as_one_by_one_and_shares_its_pages(setup, one_by_one):
    policy = jax_policy(setup)
    ended = []
    forced = Forced(policy, scripts())
    driver = EpisodeDriver(forced, max_live=8, on_episode=lambda key, res: ended.append(key))
    results = dict(zip(GROUP, driver.run(group(setup[2]))))
    assert sorted(ended) == sorted(GROUP)
    assert_same_episodes(results, one_by_one, forced, GROUP)
    kinds = {r.action_type for res in results.values() for r in res.steps}
    assert kinds == {"get_frames", "get_audio", "get_clip", "answer"} and all(res.won for res in results.values())
    # The shared first prompt is prefilled once: one rollout ran it, the other 7 found it cached but
    # for the partial last page (the last prompt token is always recomputed).
    first = [results[key].steps[0].policy_metrics for key in GROUP]
    prompt = first[0].prompt_tokens
    assert all(m.prompt_tokens == prompt for m in first) and prompt > 10 * PAGE
    cached = sorted(m.cached_prompt_tokens for m in first)
    assert cached[0] == 0 and all(c >= prompt - PAGE for c in cached[1:]), cached
    assert prompt <= sum(m.prefilled_tokens for m in first) <= prompt + 7 * PAGE
    # Later turns reuse their episode's pages: everything before the last consolidated media message.
    later = [s.policy_metrics for res in results.values() for s in res.steps[1:]]
    assert all(m.cached_prompt_tokens > 0.6 * m.prompt_tokens for m in later), [(m.cached_prompt_tokens, m.prompt_tokens)
                                                                               for m in later]
    all_metrics = first + later
    assert policy.engine.stats.prefilled_tokens == sum(m.prefilled_tokens for m in all_metrics)
    assert sum(m.prefilled_tokens for m in all_metrics) < 0.25 * sum(m.prompt_tokens for m in all_metrics)
    policy.engine.pool.check_no_leak()


def test_cancel_mid_turn_frees_pages_and_failures_end_only_their_episode(setup, one_by_one):
    policy = jax_policy(setup)
    engine = policy.engine
    plan = scripts()
    plan["r3"] = [plan["r3"][0], PolicyError("scripted failure")]  # its second turn fails
    plan["corrupt"] = ACTIONS[0]
    targets = {"r1": None, "r2": None}  # episode -> its turn's engine request id, once cancelled

    class CancelMidTurn(Forced):
        def collect(self, timeout=None):
            for key, rid in targets.items():
                if rid is not None:  # cancelled at the previous collect: gone from the engine at once
                    assert all(s.id != rid for s in engine.running + engine.waiting)
                    continue
                rid = policy.engine_request(turn_key(key, 2))
                decoding = [s for s in engine.running if s.id == rid and s.pages and s.output]
                if decoding:  # the turn is mid-decode, holding pages
                    targets[key] = rid
                    driver.cancel(key)
            return super().collect(0.0)  # one engine step per call: turns stay in flight across calls

    forced = CancelMidTurn(policy, plan)
    driver = EpisodeDriver(forced, max_live=8)
    corrupt = Episode("corrupt", lambda: make_env(setup[3]), seed=1)
    results = dict(zip(["corrupt", *GROUP], driver.run([corrupt, *group(setup[2])])))
    assert all(targets.values()), "a cancelled turn was never caught mid-decode"
    for key in ("r1", "r2"):
        assert results[key].end_reason == END_CANCELLED and len(results[key].steps) == 1
        assert comparable(results[key])["steps"] == comparable(one_by_one[key])["steps"][:1]
    assert results["r3"].end_reason == END_ERROR and results["r3"].error == "PolicyError: scripted failure"
    assert results["corrupt"].end_reason == END_ERROR and results["corrupt"].steps == []
    assert_same_episodes(results, one_by_one, forced, ("r0", "r4", "r5", "r6", "r7"))
    engine.pool.check_no_leak()
    assert not engine.has_work() and not engine.finished


def test_jax_policy_reports_refused_and_failed_turns(setup, monkeypatch):
    policy = jax_policy(setup)
    with make_env(setup[2]) as env:  # an episode's first prompt: the shapes the other tests compiled
        messages = env.reset()
    greedy = JaxPolicy(policy.engine, setup[1], dataclasses.replace(SAMPLING, max_new_tokens=10**6))  # more than the pool
    greedy.submit("too-long", messages)
    ((key, error),) = greedy.collect()
    assert key == "too-long" and isinstance(error, PolicyError) and "was not accepted" in str(error)
    policy.submit("a", messages, seed=1)
    with pytest.raises(ValueError, match="already in flight"):
        policy.submit("a", messages)
    # An engine step that fails as a whole fails every turn in it, and frees their pages.
    policy.submit("b", messages, seed=2)
    real_step = policy.engine.step

    def failing_step():
        real_step()
        raise RuntimeError("device lost")

    monkeypatch.setattr(policy.engine, "step", failing_step)
    done = dict(policy.collect())
    assert set(done) == {"a", "b"} and all("device lost" in str(e) for e in done.values())
    policy.engine.pool.check_no_leak()
    # A request the engine finishes with finish_reason "error" (its request isolation) fails alone.
    monkeypatch.setattr(policy.engine, "step", real_step)
    policy.submit("c", messages, seed=3)
    policy.submit("d", messages, seed=4)

    def one_fails():
        real_step()
        rid = policy.engine_request("c")
        if rid is not None:
            policy.engine.cancel(rid)
            failed = dataclasses.replace(policy.engine.finished[rid], finish_reason="error", error="NaN logits")
            policy.engine.finished[rid] = failed

    monkeypatch.setattr(policy.engine, "step", one_fails)
    done = {}
    while len(done) < 2:
        done.update(policy.collect())
    assert isinstance(done["c"], PolicyError) and "NaN logits" in str(done["c"]) and len(done["d"].token_ids) == 5
    policy.engine.pool.check_no_leak()


def test_the_group_through_openai_policy_and_serve_equals_the_direct_jax_policy(setup, one_by_one):
    """The group played by the driver over HTTP: `OpenAIPolicy` (8 requests in flight) -> `omniagent serve`
    (the same model, its own engine) gives every turn the direct JAX policy's ids and records."""
    served = jax_policy(setup)
    with ServerThread(create_app(served, model_name="tiny")) as server:
        with OpenAIPolicy(server.url, "tiny", temperature=SAMPLING.temperature, top_p=SAMPLING.top_p, top_k=SAMPLING.top_k,
                          max_tokens=SAMPLING.max_new_tokens, logprobs=True, max_concurrency=8, prefix_caching=True,
                          extra_body={"return_token_ids": True}) as client:
            forced = Forced(client, scripts())
            results = dict(zip(GROUP, EpisodeDriver(forced, max_live=8).run(group(setup[2]))))
    # Every turn ran to its token limit on both sides, so their different stop ids (the direct policy's
    # none, the endpoint's <|im_end|>) never mattered.
    assert {s.finish_reason for res in results.values() for s in res.steps} == {"length"}
    assert_same_episodes(results, one_by_one, forced, GROUP)
    served.engine.pool.check_no_leak()
