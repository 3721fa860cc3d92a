"""The episode driver: many OTA episodes at once against one policy (RL groups, eval, the demo).

Where verl-agent's multi-turn rollout steps a batch of environments in lock step, the driver keeps up to
`max_live` episodes in flight and lets each move at its own pace: it submits every live episode's turn to
one :class:`~omniagent_jax.agent.policy.ConcurrentPolicy`, takes the turns that finish, hands their
environments to a small worker pool (the media decoding of one episode overlaps the generation of the
others), submits their next turns, and admits new episodes as others end. Only the driver's thread calls
the policy (for the JAX policy it is the one thread touching the engine). A plain
:class:`~omniagent_jax.agent.policy.Policy` (``generate`` only) is run one turn at a time by
:class:`SequentialPolicy`.

Results do not depend on scheduling: turn t of an episode seeded s samples with ``turn_seed(s, t)``
(RL/eval derive s with ``episode_seed(run seed, sample, rollout)``), and an episode's history is made of
its own turns only. An episode whose video cannot be opened, whose environment raises or whose policy
turn fails ends alone with ``end_reason == END_ERROR`` and the reason in ``EpisodeResult.error``;
:meth:`EpisodeDriver.cancel` ends one at once (its turn is dropped from the policy, which frees its
engine pages). ``on_turn`` / ``on_episode`` report progress from the driver's thread.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from omniagent_jax.agent.environment import StepResult, VideoEnvironment
from omniagent_jax.agent.episode import END_CANCELLED, END_ERROR, EpisodeResult, StepRecord, episode_result
from omniagent_jax.agent.messages import Message
from omniagent_jax.agent.policy import ConcurrentPolicy, Policy
from omniagent_jax.processing.policy_contract import PolicyOutput, turn_key, turn_seed

__all__ = ["Episode", "EpisodeDriver", "SequentialPolicy", "as_concurrent"]

EnvFactory = Callable[[], VideoEnvironment]
TurnCallback = Callable[[str, StepRecord, VideoEnvironment], None]
EpisodeCallback = Callable[[str, EpisodeResult], None]


@dataclasses.dataclass(frozen=True)
class Episode:
    """One episode to play. ``env`` is an environment (the caller's: reset by the driver, never closed)
    or a factory the driver calls in a worker (opening the video there) and closes afterwards. ``key``
    names it in callbacks, :meth:`EpisodeDriver.cancel` and its turns' keys (``turn_key(key, t)``)."""

    key: str
    env: VideoEnvironment | EnvFactory
    seed: int | None = None


class SequentialPolicy:
    """A plain :class:`Policy` as a :class:`ConcurrentPolicy`: each ``collect`` runs ``generate`` for the
    oldest submitted turn (a failure comes back as that turn's exception)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._queue: collections.OrderedDict[str, tuple[Sequence[Message], int, int | None]] = collections.OrderedDict()

    def generate(self, messages: Sequence[Message], *, unchanged_prefix: int = 0, seed: int | None = None) -> PolicyOutput:
        return self.policy.generate(messages, unchanged_prefix=unchanged_prefix, seed=seed)

    def submit(self, key: str, messages: Sequence[Message], *, unchanged_prefix: int = 0, seed: int | None = None) -> None:
        self._queue[key] = (messages, unchanged_prefix, seed)

    def collect(self, timeout: float | None = None) -> list[tuple[str, PolicyOutput | Exception]]:
        if not self._queue:
            return []
        key, (messages, unchanged, seed) = self._queue.popitem(last=False)
        try:
            return [(key, self.policy.generate(messages, unchanged_prefix=unchanged, seed=seed))]
        except Exception as e:  # the turn's failure is the episode's, reported like any policy's
            return [(key, e)]

    def cancel(self, key: str) -> None:
        self._queue.pop(key, None)


def as_concurrent(policy: Policy | ConcurrentPolicy) -> ConcurrentPolicy:
    """`policy` itself when it takes concurrent turns, else wrapped in :class:`SequentialPolicy`."""
    return policy if isinstance(policy, ConcurrentPolicy) else SequentialPolicy(policy)


class EpisodeDriver:
    """Plays episodes with up to ``max_live`` in flight against one policy; environments step in a pool
    of ``workers`` threads. ``on_turn(key, record, env)`` follows every finished turn and
    ``on_episode(key, result)`` every finished episode, both on the thread that called :meth:`run`."""

    def __init__(self, policy: Policy | ConcurrentPolicy, *, max_live: int = 8, workers: int = 4,
                 on_turn: TurnCallback | None = None, on_episode: EpisodeCallback | None = None) -> None:
        if max_live < 1 or workers < 1:
            raise ValueError(f"max_live and workers must be >= 1, got {max_live} and {workers}")
        self.policy = as_concurrent(policy)
        self.max_live = max_live
        self.workers = workers
        self.on_turn = on_turn
        self.on_episode = on_episode
        # How long one `collect` may wait: short while environments are stepping (their episodes' next
        # turns should join the batch soon), longer when only the policy has work (cancels still get seen).
        self.poll_seconds = 0.005
        self.idle_seconds = 0.1
        self._lock = threading.Lock()
        self._cancels: set[str] = set()

    def cancel(self, key: str) -> None:
        """Ends episode `key` at once (from any thread, callbacks included): its turn in flight is dropped
        from the policy, it finishes with ``END_CANCELLED``. Unknown or finished keys are ignored."""
        with self._lock:
            self._cancels.add(key)

    def take_cancels(self) -> set[str]:
        with self._lock:
            keys, self._cancels = self._cancels, set()
        return keys

    def run(self, episodes: Iterable[Episode], *, raise_errors: bool = False) -> list[EpisodeResult]:
        """Plays every episode; their results in the order given. With ``raise_errors`` the first episode
        error is raised (the other episodes' turns cancelled) instead of ending that episode alone."""
        episodes = list(episodes)
        keys = [e.key for e in episodes]
        if len(set(keys)) != len(keys):
            raise ValueError(f"episode keys must be unique; repeated: {sorted({k for k in keys if keys.count(k) > 1})}")
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="episode-env") as pool:
            play = _Run(self, pool, episodes, raise_errors)
            try:
                play.loop()
            finally:
                play.abandon()
                with self._lock:  # a cancel that came after its episode ended must not touch a later run's
                    self._cancels.difference_update(keys)
        return [play.results[k] for k in keys]


@dataclasses.dataclass(eq=False)
class _Live:
    """An episode in flight: exactly one of `future` (its environment is working) or `turn` (its turn is in
    the policy) is set at any time."""

    spec: Episode
    t_start: float
    env: VideoEnvironment | None = None
    records: list[StepRecord] = dataclasses.field(default_factory=list)
    future: Future | None = None
    turn: str | None = None
    # The turn in flight: its input, unchanged prefix, seed and submit time; then its output and finish time.
    asked: tuple[list[Message], int, int | None, float] | None = None
    answered: tuple[PolicyOutput, float] | None = None

    @property
    def owns_env(self) -> bool:
        return not isinstance(self.spec.env, VideoEnvironment)


def _open(spec: Episode) -> tuple[VideoEnvironment, None, list[Message], int]:
    """Worker: the environment (made here when the episode brings a factory), reset; its first observation."""
    env = spec.env() if not isinstance(spec.env, VideoEnvironment) else spec.env
    env.reset()
    return (env, None, *env.observe())


def _step(env: VideoEnvironment, text: str) -> tuple[VideoEnvironment, StepResult, list[Message], int]:
    """Worker: one environment step on the policy's text; the next observation unless it ended."""
    result = env.step(text)
    messages, unchanged = ([], 0) if env.done else env.observe()
    return env, result, messages, unchanged


class _Run:
    """The state of one `EpisodeDriver.run`; every method runs on the driver's thread."""

    def __init__(self, driver: EpisodeDriver, pool: ThreadPoolExecutor, episodes: list[Episode], raise_errors: bool):
        self.driver = driver
        self.policy = driver.policy
        self.pool = pool
        self.pending = collections.deque(episodes)
        self.raise_errors = raise_errors
        self.live: dict[str, _Live] = {}
        self.turns: dict[str, str] = {}  # turn key in the policy -> episode key
        self.results: dict[str, EpisodeResult] = {}

    def loop(self) -> None:
        while self.pending or self.live:
            self.apply_cancels()
            while self.pending and len(self.live) < self.driver.max_live:
                spec = self.pending.popleft()
                live = self.live[spec.key] = _Live(spec, time.perf_counter())
                live.future = self.pool.submit(_open, spec)
            for live in [lv for lv in self.live.values() if lv.future is not None and lv.future.done()]:
                self.env_done(live)
            stepping = [lv.future for lv in self.live.values() if lv.future is not None]
            if self.turns:
                timeout = self.driver.poll_seconds if stepping else self.driver.idle_seconds
                for key, out in self.policy.collect(timeout):
                    episode = self.turns.pop(key, None)
                    if episode is not None:  # else cancelled after it finished
                        self.turn_done(self.live[episode], out)
            elif stepping:
                wait(stepping, timeout=self.driver.idle_seconds, return_when=FIRST_COMPLETED)

    def apply_cancels(self) -> None:
        keys = self.driver.take_cancels()
        for spec in [s for s in self.pending if s.key in keys]:
            self.pending.remove(spec)
            self.finish(_Live(spec, time.perf_counter()), END_CANCELLED)
        for key in keys & self.live.keys():
            self.end(self.live[key], END_CANCELLED)

    def submit(self, live: _Live, messages: list[Message], unchanged: int) -> None:
        turn = len(live.records) + 1
        seed = None if live.spec.seed is None else turn_seed(live.spec.seed, turn)
        key = turn_key(live.spec.key, turn)
        live.asked = (messages, unchanged, seed, time.perf_counter())
        live.turn, self.turns[key] = key, live.spec.key
        try:
            self.policy.submit(key, messages, unchanged_prefix=unchanged, seed=seed)
        except Exception as e:  # a policy should report it from collect; one that raises ends only this episode
            self.fail(live, e)

    def turn_done(self, live: _Live, out: PolicyOutput | Exception) -> None:
        live.turn = None
        if isinstance(out, Exception):
            self.fail(live, out)
            return
        live.answered = (out, time.perf_counter())
        live.future = self.pool.submit(_step, live.env, out.text)

    def env_done(self, live: _Live) -> None:
        future, live.future = live.future, None
        try:
            env, result, messages, unchanged = future.result()
        except Exception as e:  # the video cannot be opened, or the environment raised
            self.fail(live, e)
            return
        live.env = env
        if result is not None:
            (asked, unchanged_before, seed, t0), (out, t1) = live.asked, live.answered
            record = StepRecord(
                step=result.step,
                raw_input=asked,
                unchanged_prefix=unchanged_before,
                seed=seed,
                output=out.text,
                turn=result.turn,
                result=result,
                policy_metrics=out.metrics,
                logprobs=out.logprobs,
                finish_reason=out.finish_reason,
                generation_seconds=float(t1 - t0 if out.metrics.generation_seconds is None else out.metrics.generation_seconds),
                step_wall_seconds=time.perf_counter() - t0,
            )
            live.records.append(record)
            if self.driver.on_turn is not None:
                self.driver.on_turn(live.spec.key, record, env)
        if env.done:
            self.end(live)
        else:
            self.submit(live, messages, unchanged)

    def fail(self, live: _Live, error: Exception) -> None:
        if self.raise_errors:
            raise error
        self.end(live, END_ERROR, f"{type(error).__name__}: {error}")

    def end(self, live: _Live, end_reason: str | None = None, error: str | None = None) -> None:
        """Takes `live` out of play (dropping its turn from the policy) and records its result."""
        del self.live[live.spec.key]
        if live.turn is not None:
            self.policy.cancel(live.turn)
            self.turns.pop(live.turn, None)
            live.turn = None
        self.finish(live, end_reason, error)

    def finish(self, live: _Live, end_reason: str | None = None, error: str | None = None) -> None:
        env_idle = live.env is not None and live.future is None
        # A cancelled episode whose environment is still stepping keeps the history its last turn saw.
        messages = live.env.messages if env_idle else (list(live.asked[0]) if live.asked else [])
        result = episode_result(live.records, live.env, messages, seed=live.spec.seed,
                                wall_seconds=time.perf_counter() - live.t_start, end_reason=end_reason, error=error)
        self.release(live)
        self.results[live.spec.key] = result
        if self.driver.on_episode is not None:
            self.driver.on_episode(live.spec.key, result)

    def release(self, live: _Live) -> None:
        """Closes an environment the driver made, once no worker uses it."""
        if not live.owns_env:
            return
        if live.future is None:
            if live.env is not None:
                live.env.close()
            return
        live.future.cancel()

        def close(future: Future) -> None:
            env = live.env
            if env is None and not future.cancelled() and future.exception() is None:
                env = future.result()[0]
            if env is not None:
                env.close()

        live.future.add_done_callback(close)

    def abandon(self) -> None:
        """After an error left the loop: drops the turns still in the policy and closes what the driver made."""
        for key in list(self.turns):
            self.policy.cancel(key)
        self.turns.clear()
        for live in list(self.live.values()):
            self.release(live)
        self.live.clear()
