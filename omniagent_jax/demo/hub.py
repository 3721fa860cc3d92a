"""One engine, many browser sessions: a thread that owns the policy and per-episode proxies for it.

The JAX policy may be called from one thread only (it is the engine's), while every browser session
plays its own episode through its own :class:`~omniagent_jax.agent.driver.EpisodeDriver`. The
:class:`PolicyHub` thread owns the policy; each episode talks to it through a :class:`HubClient`, a
:class:`~omniagent_jax.agent.policy.ConcurrentPolicy` whose ``submit`` / ``cancel`` are messages to that
thread and whose ``collect`` waits for this episode's turns only. Turns of all sessions therefore share
the engine's continuous batching, and one session's Stop (``cancel``) drops only its own engine request.
Each client carries its session's sampling settings; the hub applies them to the turns it submits.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from omniagent_jax.agent.driver import as_concurrent
from omniagent_jax.agent.messages import Message
from omniagent_jax.processing.policy_contract import PolicyError, PolicyOutput

__all__ = ["Backend", "HubClient", "PolicyHub", "SamplingSettings", "per_episode_backend", "shared_backend"]


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """A session's sampling settings (docs/protocol.md §8 defaults live in processing/policy_contract.py)."""

    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int


def with_sampling(sampling: Any, settings: SamplingSettings | None) -> Any:
    """The engine's `SamplingParams` `sampling` with `settings` applied (seed and stop ids kept)."""
    if settings is None:
        return sampling
    return dataclasses.replace(sampling, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                               max_new_tokens=settings.max_new_tokens)


class PolicyHub:
    """Owns `policy` on a thread of its own; :meth:`client` makes one episode's proxy. A policy with a
    ``sampling`` attribute (the JAX policy) gets each client's settings for that client's turns."""

    def __init__(self, policy: Any, *, poll_seconds: float = 0.02) -> None:
        self.policy = policy
        self._concurrent = as_concurrent(policy)
        self.poll_seconds = poll_seconds
        self._inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._owners: dict[str, tuple[HubClient, str]] = {}  # hub key -> (client, the client's key)
        self._ids = itertools.count()
        self._closed = threading.Event()
        self.cancelled = 0  # turns dropped by a client's cancel while in the policy (shown in tests and logs)
        self._thread = threading.Thread(target=self._loop, name="demo-policy-hub", daemon=True)
        self._thread.start()

    def client(self, settings: SamplingSettings | None = None) -> HubClient:
        if self._closed.is_set():
            raise PolicyError("the demo's policy hub is closed")
        return HubClient(self, f"c{next(self._ids)}", settings)

    def in_flight(self) -> int:
        """Turns submitted and not yet finished or cancelled."""
        return len(self._owners)

    def keys(self) -> list[str]:
        """The policy's keys of the turns in flight (``<client>:<turn key>``)."""
        return list(self._owners)

    def close(self) -> None:
        self._closed.set()
        self._inbox.put(("wake",))
        self._thread.join(timeout=10)

    # ------------------------------------------------------------------------- hub thread only
    def _loop(self) -> None:
        while not self._closed.is_set():
            self._drain(block=not self._owners)
            if not self._owners:
                continue
            try:
                finished = self._concurrent.collect(self.poll_seconds)
            except Exception as e:  # noqa: BLE001 - a policy should not raise here; fail its turns, keep serving
                finished = [(key, PolicyError(f"the policy failed: {type(e).__name__}: {e}")) for key in list(self._owners)]
            for key, out in finished:
                owner = self._owners.pop(key, None)
                if owner is not None:
                    owner[0]._deliver(owner[1], out)

    def _drain(self, *, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._handle(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, item: tuple) -> None:
        if item[0] == "submit":
            _, client, key, messages, unchanged, seed = item
            hub_key = f"{client.name}:{key}"
            self._owners[hub_key] = (client, key)
            base = getattr(self.policy, "sampling", None)
            try:
                if base is not None and client.settings is not None:
                    self.policy.sampling = with_sampling(base, client.settings)
                self._concurrent.submit(hub_key, messages, unchanged_prefix=unchanged, seed=seed)
            except Exception as e:  # noqa: BLE001 - the turn fails alone
                self._owners.pop(hub_key, None)
                client._deliver(key, PolicyError(f"turn {key} was not accepted: {type(e).__name__}: {e}"))
            finally:
                if base is not None:
                    self.policy.sampling = base
        elif item[0] == "cancel":
            _, client, key = item
            hub_key = f"{client.name}:{key}"
            if self._owners.pop(hub_key, None) is not None:
                self._concurrent.cancel(hub_key)
                self.cancelled += 1


class HubClient:
    """One episode's view of the hub (a ConcurrentPolicy for its driver; the driver's thread calls it)."""

    def __init__(self, hub: PolicyHub, name: str, settings: SamplingSettings | None) -> None:
        self.hub = hub
        self.name = name
        self.settings = settings
        self._done: queue.SimpleQueue[tuple[str, PolicyOutput | Exception]] = queue.SimpleQueue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def generate(self, messages: Sequence[Message], *, unchanged_prefix: int = 0, seed: int | None = None) -> PolicyOutput:
        key = f"generate-{id(messages)}"
        self.submit(key, messages, unchanged_prefix=unchanged_prefix, seed=seed)
        while True:
            for k, out in self.collect(None):
                if k == key:
                    if isinstance(out, Exception):
                        raise out
                    return out

    def submit(self, key: str, messages: Sequence[Message], *, unchanged_prefix: int = 0, seed: int | None = None) -> None:
        with self._lock:
            self._pending.add(key)
        # The driver may extend its history once the turn is back; the hub reads it later, so it gets a copy.
        snapshot = [{**m, "content": list(m["content"]) if isinstance(m["content"], list) else m["content"]} for m in messages]
        self.hub._inbox.put(("submit", self, key, snapshot, unchanged_prefix, seed))

    def collect(self, timeout: float | None = None) -> list[tuple[str, PolicyOutput | Exception]]:
        out: list[tuple[str, PolicyOutput | Exception]] = []
        with self._lock:
            if not self._pending:
                return out
        try:
            out.append(self._done.get(timeout=timeout))
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                break
        with self._lock:  # a turn cancelled after the hub delivered it is not returned
            kept = [(k, o) for k, o in out if k in self._pending]
            self._pending.difference_update(k for k, _ in kept)
        return kept

    def cancel(self, key: str) -> None:
        with self._lock:
            if key not in self._pending:
                return
            self._pending.discard(key)
        self.hub._inbox.put(("cancel", self, key))

    def _deliver(self, key: str, out: PolicyOutput | Exception) -> None:
        self._done.put((key, out))


@dataclasses.dataclass
class Backend:
    """A policy the page can run episodes on: `label` is shown on the page; `make(settings)` returns one
    episode's policy, `hub` is set when every episode shares one engine thread."""

    name: str
    label: str
    make: Callable[[SamplingSettings], Any]
    hub: PolicyHub | None = None

    def close(self) -> None:
        if self.hub is not None:
            self.hub.close()


def shared_backend(name: str, label: str, policy: Any) -> Backend:
    """Every episode's turns go to `policy` through one :class:`PolicyHub` (the JAX engine's batching)."""
    hub = PolicyHub(policy)
    return Backend(name, label, hub.client, hub)


def per_episode_backend(name: str, label: str, make: Callable[[SamplingSettings], Any]) -> Backend:
    """Each episode gets its own policy from `make` (a scripted replay, an endpoint client); closed after."""
    return Backend(name, label, make)
