"""The episode driver on scripted policies and fake or real media (no JAX): many episodes at once give
exactly the records of the same episodes run one by one, seeds are a pure function of (run, sample,
rollout, turn), errors and cancellations end only their own episode, callbacks report progress, and
environments step in the worker pool while the policy works."""

from __future__ import annotations

import threading

import agent_helpers as h
import pytest
from driver_helpers import comparable

from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.driver import Episode, EpisodeDriver, SequentialPolicy, as_concurrent
from omniagent_jax.agent.environment import EnvConfig, VideoEnvironment
from omniagent_jax.agent.episode import END_CANCELLED, END_ERROR
from omniagent_jax.agent.policy import ConcurrentPolicy, PolicyError, ScriptedPolicy
from omniagent_jax.agent.runner import run_episode
from omniagent_jax.processing.policy_contract import episode_of, episode_seed, turn_key, turn_seed

SAMPLE = Sample(video="v.mp4", question_type="MCQ", question="Which colour?", options=("A. Red", "B. Blue"), answer="B")
SCRIPTS = [
    [h.frames(0, 10, 3), h.audio(2, 4), h.answer("B")],
    [h.clip(1, 5), h.answer("A")],
    [h.audio(0, 1), h.frames(5, 6, 2), h.clip(3, 9), h.answer("B")],
    ["not json", h.answer("B")],
    [h.frames(0, 29, 4), h.answer("B", confidence=0.9)],
]


def make_env(opener=None, **kw) -> VideoEnvironment:
    return VideoEnvironment(SAMPLE, EnvConfig(), media_opener=opener or h.fake_opener(30.0, 25.0, True), **h.FAKE_ENV_KW, **kw)


def one_by_one(scripts, seeds):
    out = []
    for script, seed in zip(scripts, seeds):
        with make_env() as env:
            out.append(comparable(run_episode(env, ScriptedPolicy(script), seed=seed)))
    return out


def test_turn_keys_and_episode_seeds():
    assert episode_of(turn_key("s3#r1", 12)) == "s3#r1" and episode_of("plain") == "plain" and episode_of("a#b") == "a#b"
    seeds = {episode_seed(0, s, r) for s in range(20) for r in range(8)}
    assert len(seeds) == 160 and episode_seed(0, 1, 2) == episode_seed(0, 1, 2) != episode_seed(1, 1, 2)
    assert all(0 <= s < 2**31 for s in seeds)


@pytest.mark.parametrize("max_live,workers", [(8, 4), (2, 1), (3, 8)])
def test_driver_records_equal_one_by_one_runs(max_live, workers):
    seeds = [episode_seed(5, i, 0) for i in range(len(SCRIPTS))]
    expected = one_by_one(SCRIPTS, seeds)
    keys = [f"s{i}" for i in range(len(SCRIPTS))]
    policy = ScriptedPolicy(dict(zip(keys, SCRIPTS)))
    turns, ended = [], []
    driver = EpisodeDriver(policy, max_live=max_live, workers=workers,
                           on_turn=lambda key, rec, env: turns.append((key, rec.step)),
                           on_episode=lambda key, res: ended.append(key))
    # Given in reverse: the order of play must not matter.
    episodes = [Episode(k, make_env, seed=s) for k, s in zip(keys, seeds)][::-1]
    results = driver.run(episodes)
    assert [comparable(r) for r in results[::-1]] == expected
    assert sorted(ended) == sorted(keys) and len(turns) == sum(len(s) for s in SCRIPTS)
    for key, script in zip(keys, SCRIPTS):  # every finished turn is reported once, in order
        assert [t for k, t in turns if k == key] == list(range(1, len(script) + 1))
    assert [r.seed for r in results[-1].steps] == [turn_seed(seeds[0], t) for t in (1, 2, 3)]
    assert {episode_of(k) for k in policy.keys} == set(keys)


def test_a_plain_generate_policy_is_run_one_turn_at_a_time():
    class Plain:
        def __init__(self, script):
            self.inner = ScriptedPolicy(script)

        def generate(self, messages, *, unchanged_prefix=0, seed=None):
            return self.inner.generate(messages, unchanged_prefix=unchanged_prefix, seed=seed)

    plain = Plain(SCRIPTS[0] + SCRIPTS[1])
    assert not isinstance(plain, ConcurrentPolicy) and isinstance(as_concurrent(plain), SequentialPolicy)
    assert as_concurrent(plain.inner) is plain.inner
    results = EpisodeDriver(plain, max_live=1).run([Episode("a", make_env, 1), Episode("b", make_env, 2)])
    assert [comparable(r) for r in results] == one_by_one(SCRIPTS[:2], [1, 2])
    adapter = SequentialPolicy(plain)
    adapter.submit("x#1", [])
    adapter.cancel("x#1")
    assert adapter.collect() == []


def test_failures_end_only_their_own_episode(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 10)
    bad_sample = Sample(video=str(corrupt), question_type="MCQ", question="?", options=("A. x", "B. y"), answer="A")
    scripts = {"ok0": SCRIPTS[0], "raises": [h.frames(0, 10, 3), PolicyError("endpoint down")], "ok2": SCRIPTS[2],
               "decode": [h.frames(0, 10, 3), h.answer("B")]}

    def broken_env():
        return make_env(h.fake_opener(30.0, 25.0, True, fail_on="frames"))

    episodes = [Episode("ok0", make_env, 1), Episode("raises", make_env, 2),
                Episode("corrupt", lambda: VideoEnvironment(bad_sample)), Episode("ok2", make_env, 3),
                Episode("decode", broken_env, 4), Episode("raises-submit", make_env, 5)]

    class SubmitRaises(ScriptedPolicy):
        def submit(self, key, messages, **kw):
            if key.startswith("raises-submit"):
                raise RuntimeError("cannot queue")
            super().submit(key, messages, **kw)

    ok0, raises, bad, ok2, decode, submit = EpisodeDriver(SubmitRaises(scripts), max_live=6).run(episodes)
    assert [comparable(ok0), comparable(ok2)] == one_by_one([SCRIPTS[0], SCRIPTS[2]], [1, 3])
    assert raises.end_reason == END_ERROR and raises.error == "PolicyError: endpoint down" and len(raises.steps) == 1
    assert not raises.scored and raises.messages[-1]["role"] == "user" and raises.steps[0].action_type == "get_frames"
    assert bad.end_reason == END_ERROR and bad.steps == [] and bad.messages == [] and "MediaError" in bad.error
    assert submit.end_reason == END_ERROR and submit.error == "RuntimeError: cannot queue"
    # A decode failure inside a step is the environment's own ending, recorded as before.
    assert decode.end_reason == "MEDIA_DECODE_FAIL" and decode.error is None and decode.error_code == "MEDIA_DECODE_FAIL"


def test_run_episode_and_raise_errors_propagate_the_failure():
    with make_env() as env, pytest.raises(PolicyError, match="only 1 outputs"):
        run_episode(env, ScriptedPolicy([h.frames(0, 10, 3)]))
    recorded = EpisodeDriver(ScriptedPolicy({"a": SCRIPTS[0]})).run([Episode("a", make_env), Episode("b", make_env)])
    assert recorded[1].error == "PolicyError: scripted policy has no script for episode 'b'" and recorded[0].final_answer == "B"
    with pytest.raises(PolicyError, match="no script for episode 'b'"):
        EpisodeDriver(ScriptedPolicy({"a": SCRIPTS[0]})).run([Episode("a", make_env), Episode("b", make_env)], raise_errors=True)
    with pytest.raises(PolicyError, match="per-episode scripted policy"):
        ScriptedPolicy({"a": ["x"]}).generate([])


def test_cancel_ends_an_episode_at_once_and_closes_its_environment():
    """b is cancelled while its second turn is in the policy (held back from collect), d before it is
    admitted: c's video opens only after the cancel, so d cannot have been admitted yet."""
    readers: list = []
    opener = h.fake_opener(30.0, 25.0, True, readers=readers)
    keys = ["a", "b", "c", "d"]
    cancelled = threading.Event()

    class CancelsBMidTurn(ScriptedPolicy):
        def collect(self, timeout=None):
            done = super().collect(timeout)
            if any(key == turn_key("b", 2) for key, _ in done) and not cancelled.is_set():
                driver.cancel("b")
                driver.cancel("d")  # not yet admitted
                driver.cancel("zzz")  # unknown: ignored
                cancelled.set()
                self._done.update((key, out) for key, out in done if key == turn_key("b", 2))  # still in flight
                done = [(key, out) for key, out in done if key != turn_key("b", 2)]
            return done

    def open_c():
        assert cancelled.wait(30)
        return make_env(opener)

    policy = CancelsBMidTurn({k: SCRIPTS[2] for k in keys})
    driver = EpisodeDriver(policy, max_live=2)
    factories = {"a": lambda: make_env(opener), "b": lambda: make_env(opener), "c": open_c, "d": lambda: make_env(opener)}
    a, b, c, d = driver.run([Episode(k, factories[k], seed=i) for i, k in enumerate(keys)])
    assert b.end_reason == END_CANCELLED and not b.scored and b.error is None and len(b.steps) == 1
    assert d.end_reason == END_CANCELLED and d.steps == []
    assert [comparable(a), comparable(c)] == one_by_one([SCRIPTS[2], SCRIPTS[2]], [0, 2])
    assert len(readers) == 3 and all(r.closed for r in readers)  # d never opened its video
    assert policy.collect() == []


def test_a_cancel_after_its_episode_ended_does_not_touch_a_later_run():
    driver = EpisodeDriver(ScriptedPolicy({"a": SCRIPTS[1] * 2}))
    driver.on_episode = lambda key, result: driver.cancel(key)  # too late: the episode has ended
    first = driver.run([Episode("a", make_env)])
    second = driver.run([Episode("a", make_env)])
    assert first[0].end_reason == second[0].end_reason == "ANSWERED"


def test_environments_step_in_the_pool_while_others_wait():
    """Two episodes' frame fetches must run at the same time: the barrier fails otherwise."""
    barrier = threading.Barrier(2, timeout=10)

    class Meeting(h.FakeReader):
        def frames(self, timestamps):
            barrier.wait()
            return super().frames(timestamps)

    def opener(path):
        return Meeting(h.FakeVideoInfo(path, 30.0, 25.0, 750, True))

    episodes = [Episode(k, lambda: make_env(opener)) for k in ("a", "b")]
    results = EpisodeDriver(ScriptedPolicy({k: SCRIPTS[0] for k in ("a", "b")}), workers=2).run(episodes)
    assert [r.final_answer for r in results] == ["B", "B"]


def test_driver_arguments_are_checked():
    with pytest.raises(ValueError, match="unique"):
        EpisodeDriver(ScriptedPolicy([])).run([Episode("a", make_env), Episode("a", make_env)])
    with pytest.raises(ValueError, match="max_live"):
        EpisodeDriver(ScriptedPolicy([]), max_live=0)
