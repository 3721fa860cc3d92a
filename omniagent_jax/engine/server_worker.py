"""The engine's own thread in `omniagent serve`: the only caller of submit / step / pop_finished / cancel.

The asyncio side hands work over through a queue (`submit`, `cancel`: safe from any thread) and gets
`Event`s back through the callback it passed, which the worker calls on its own thread (the server's
callback forwards them to its event loop). Between engine steps the worker takes every queued
command, steps, delivers finished requests, and the new tokens of each streaming request (one
delivery per decode block).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Sequence

from omniagent_jax.engine.engine import Engine
from omniagent_jax.engine.requests import Completion, Request

log = logging.getLogger(__name__)
IDLE_WAIT_S = 0.5  # how long an idle worker sleeps on its queue before checking whether it should stop


@dataclasses.dataclass(frozen=True)
class Event:
    """What the worker reports about a group of requests submitted together.

    kind "accepted": every request of the group is queued; "rejected": none is (`error` says why,
    a `RequestError` for a bad value); "tokens": `tokens` are new tokens of a streaming request;
    "done": `completion` is the finished request (finish_reason "error" when the engine failed it).
    """

    kind: str
    request_id: str | None = None
    tokens: tuple[int, ...] = ()
    completion: Completion | None = None
    error: Exception | None = None


Deliver = Callable[[Event], None]


@dataclasses.dataclass
class _Group:
    deliver: Deliver
    stream: bool
    sent: dict[str, int]  # request id → tokens delivered so far


class EngineWorker(threading.Thread):
    """Owns `engine`: continuous batching over everything submitted, until `stop()`."""

    def __init__(self, engine: Engine):
        super().__init__(daemon=True, name="omniagent-engine")
        self.engine = engine
        self._commands: queue.Queue[tuple | None] = queue.Queue()
        self._groups: dict[str, _Group] = {}  # request id in flight → its group
        self._stopping = threading.Event()
        self.cancelled = 0  # requests dropped in flight by `cancel` (clients that went away)

    # ------------------------------------------------------------------ any thread

    def submit(self, requests: Sequence[Request], deliver: Deliver, *, stream: bool = False) -> None:
        """Queues a group (the n samples of one prompt, with their own request ids): one "accepted" or
        "rejected" event follows, then one "done" per request (and "tokens" events when `stream`)."""
        self._commands.put(("submit", list(requests), deliver, stream))

    def cancel(self, request_ids: Sequence[str]) -> None:
        """Drops requests in flight (their pages are freed); nothing more is delivered for them."""
        self._commands.put(("cancel", list(request_ids)))

    def stop(self, timeout: float | None = 10.0) -> None:
        self._stopping.set()
        self._commands.put(None)
        if self.is_alive():
            self.join(timeout)

    @property
    def in_flight(self) -> int:
        return len(self._groups)

    # ------------------------------------------------------------------ the engine thread

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._take_commands(block=not self.engine.has_work())
                if self.engine.has_work():
                    self.engine.step()
                self._deliver()
            except Exception as e:  # a bug on the host side: fail what is in flight, keep serving
                log.exception("engine step failed")
                self._fail_all(e)
        self._fail_all(RuntimeError("the server is shutting down"))

    def _take_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=IDLE_WAIT_S) if block else self._commands.get_nowait()
            while True:
                if command is not None:
                    self._run_command(*command)
                command = self._commands.get_nowait()
        except queue.Empty:
            pass

    def _run_command(self, kind: str, *args) -> None:
        if kind == "cancel":
            for rid in args[0]:
                if self._groups.pop(rid, None) is not None:
                    self.engine.cancel(rid)  # its completion, ownerless, is dropped by `_deliver`
                    self.cancelled += 1
            return
        requests, deliver, stream = args
        group = _Group(deliver, stream, {})
        try:
            for request in requests:
                rid = self.engine.submit(request)
                group.sent[rid] = 0
                self._groups[rid] = group
        except Exception as e:  # a RequestError names the bad value; the group goes in whole or not at all
            for rid in group.sent:
                self._groups.pop(rid, None)
                self.engine.cancel(rid)
            _safely(deliver, Event("rejected", error=e))
            return
        _safely(deliver, Event("accepted"))

    def _deliver(self) -> None:
        for rid, completion in self.engine.pop_finished().items():
            group = self._groups.pop(rid, None)
            if group is not None:
                _safely(group.deliver, Event("done", rid, completion=completion))
        for rid, group in list(self._groups.items()):
            if group.stream:
                tokens = self.engine.generated(rid) or []
                if len(tokens) > group.sent[rid]:
                    _safely(group.deliver, Event("tokens", rid, tokens=tuple(tokens[group.sent[rid]:])))
                    group.sent[rid] = len(tokens)

    def _fail_all(self, error: Exception) -> None:
        """Every request in flight ends as an engine error (pages freed where the engine still can)."""
        message = f"{type(error).__name__}: {error}"
        for rid, group in list(self._groups.items()):
            try:
                self.engine.cancel(rid)
            except Exception:
                log.exception("cancelling %s after a failed step", rid)
            done = Completion(rid, [], "error", 0, 0, error=message)
            _safely(group.deliver, Event("done", rid, completion=done))
        self._groups.clear()
        try:
            self.engine.pop_finished()
        except Exception:
            log.exception("clearing finished requests after a failed step")


def _safely(deliver: Deliver, event: Event) -> None:
    try:
        deliver(event)
    except Exception:  # the receiving side is gone (its event loop closed): nothing to tell
        log.debug("dropped %s event for %s", event.kind, event.request_id)
