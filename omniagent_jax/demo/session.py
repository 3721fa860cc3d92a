"""One browser session's episodes: played through the episode driver on a thread, streamed as a JSON trace.

:class:`EpisodeRun` plays one episode with :class:`~omniagent_jax.agent.driver.EpisodeDriver` (docs/
architecture.md §2.5): every finished turn becomes a step of the trace (what the model said, the action,
its reward and error, the media it fetched written as files, the prompt tokens reused from the KV cache)
and wakes :meth:`EpisodeRun.updates`, which the page's streaming handler iterates. :meth:`EpisodeRun.stop`
cancels the episode at once: the driver drops its turn from the policy, whose engine request (and pages)
goes with it. :class:`Sessions` keeps each browser session's private folder and current run.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.driver import Episode, EpisodeDriver
from omniagent_jax.agent.environment import END_ANSWERED, EnvConfig, VideoEnvironment
from omniagent_jax.agent.episode import END_CANCELLED, END_ERROR, EpisodeResult, StepRecord
from omniagent_jax.demo.hub import Backend, SamplingSettings
from omniagent_jax.demo.media_files import turn_payloads, write_turn_media
from omniagent_jax.demo.uploads import SessionFiles

MEDIA_DIR = "media"
EPISODE_KEY = "demo"


def video_facts(info: Any, name: str) -> dict[str, Any]:
    """The video card's facts from a `VideoInfo`."""
    return {"name": name, "duration": float(info.duration), "fps": float(info.fps), "width": int(info.width),
            "height": int(info.height), "has_audio": bool(info.has_audio)}


def step_view(record: StepRecord, env: VideoEnvironment, run_dir: pathlib.Path) -> dict[str, Any]:
    """One turn as the trace shows it; the media it fetched is written under `run_dir/media`."""
    r, turn, m = record.result, record.turn, record.policy_metrics
    view: dict[str, Any] = {
        "step": record.step, "action_type": record.action_type, "action": record.action, "output": record.output,
        "observation": turn.observation if turn is not None else None, "think": turn.think if turn is not None else None,
        "confidence": turn.confidence if turn is not None else None, "valid": r.is_action_valid,
        "error_code": r.error_code.value if r.error_code is not None else None, "error_detail": r.error_detail,
        "reward": float(r.reward), "done": r.done, "end_reason": r.end_reason, "finish_reason": record.finish_reason,
        "tokens": {"prompt": m.prompt_tokens, "cached": m.cached_prompt_tokens, "prefilled": m.prefilled_tokens,
                   "completion": m.completion_tokens},
        "seconds": {"generation": record.generation_seconds, "env": r.env_seconds, "wall": record.step_wall_seconds},
        "media": None,
    }
    if r.media is not None:
        files = write_turn_media(run_dir / MEDIA_DIR, record.step, r.media, turn_payloads(env.messages, r.media))
        view["media"] = {**r.media.to_json(), "files": files}
    return view


def status_of(result: EpisodeResult) -> str:
    if result.end_reason == END_CANCELLED:
        return "stopped"
    if result.end_reason == END_ERROR:
        return "error"
    return "answered" if result.end_reason == END_ANSWERED else "ended"


def result_view(result: EpisodeResult) -> dict[str, Any]:
    return {"final_answer": result.final_answer, "total_reward": float(result.total_reward), "won": result.won,
            "scored": result.scored, "end_reason": result.end_reason, "error_code": result.error_code, "error": result.error,
            "steps_used": result.steps_used, "max_steps": result.max_steps, "wall_seconds": result.wall_seconds,
            "prefix_caching": result.prefix_caching}


class EpisodeRun:
    """One episode of `sample` on `backend`, played on a thread of its own; `trace` is its JSON trace."""

    def __init__(self, sample: Sample, config: EnvConfig, backend: Backend, settings: SamplingSettings, *,
                 run_dir: pathlib.Path, video: dict[str, Any], seed: int = 0, extra: dict[str, Any] | None = None) -> None:
        self.run_dir = run_dir
        self.trace: dict[str, Any] = {
            "status": "running", "policy": backend.label, "video": video, "question": sample.to_json() | {"video": video["name"]},
            "settings": {**dataclasses.asdict(settings), **(extra or {}), "seed": seed}, "steps": [], "result": None,
        }
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self.finished = threading.Event()
        self._policy = backend.make(settings)
        self._owns_policy = backend.hub is None  # a hub client shares the engine; an endpoint client is this run's
        self.driver = EpisodeDriver(self._policy, max_live=1, workers=1, on_turn=self._on_turn, on_episode=self._on_episode)
        self._episode = Episode(EPISODE_KEY, lambda: VideoEnvironment(sample, config), seed)
        self._thread = threading.Thread(target=self._play, name="demo-episode", daemon=True)
        self._thread.start()

    def _play(self) -> None:
        try:
            self.driver.run([self._episode])
        except Exception as e:  # noqa: BLE001 - a failure of the demo's own code must still end the run on the page
            with self._lock:
                self.trace["status"], self.trace["result"] = "error", {"error": f"{type(e).__name__}: {e}"}
        finally:
            close = getattr(self._policy, "close", None)
            if callable(close) and self._owns_policy:
                close()
            self.finished.set()
            self._events.put(True)

    def _on_turn(self, key: str, record: StepRecord, env: VideoEnvironment) -> None:
        view = step_view(record, env, self.run_dir)
        with self._lock:
            self.trace["steps"].append(view)
            self.trace["max_steps"] = env.max_steps
        self._events.put(True)

    def _on_episode(self, key: str, result: EpisodeResult) -> None:
        with self._lock:
            self.trace["status"], self.trace["result"] = status_of(result), result_view(result)

    def stop(self) -> None:
        """Ends the episode now; its turn in flight is dropped from the policy (the engine frees its pages)."""
        self.driver.cancel(EPISODE_KEY)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self.trace)

    def updates(self, heartbeat: float = 1.0) -> Iterator[dict[str, Any]]:
        """Yields the trace now, after every finished turn, and once more when the episode has ended."""
        yield self.snapshot()
        while not self.finished.is_set():
            try:
                self._events.get(timeout=heartbeat)
            except queue.Empty:
                continue
            while not self._events.empty():
                self._events.get_nowait()
            yield self.snapshot()
        self._thread.join()
        yield self.snapshot()


@dataclasses.dataclass
class Session:
    files: SessionFiles
    run: EpisodeRun | None = None
    last_seen: float = dataclasses.field(default_factory=time.monotonic)


class Sessions:
    """The browser sessions by Gradio's session hash: each has a private folder and at most one running episode.
    A closed tab's session goes at once (the page's unload); one never closed (an API client) goes once it has
    been idle for `max_idle_seconds` with nothing running."""

    def __init__(self, root: pathlib.Path, *, max_idle_seconds: float = 6 * 3600) -> None:
        self.root = root
        self.max_idle_seconds = max_idle_seconds
        self._by_hash: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, session_hash: str) -> Session:
        self._sweep(keep=session_hash)
        with self._lock:
            if session_hash not in self._by_hash:
                self._by_hash[session_hash] = Session(SessionFiles(self.root))
            session = self._by_hash[session_hash]
            session.last_seen = time.monotonic()
            return session

    def _sweep(self, keep: str) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [k for k, s in self._by_hash.items() if k != keep and now - s.last_seen > self.max_idle_seconds
                    and (s.run is None or s.run.finished.is_set())]
        for key in idle:
            self.close(key)

    def stop(self, session_hash: str) -> bool:
        """Stops that session's running episode; False if it has none running."""
        with self._lock:
            session = self._by_hash.get(session_hash)
        if session is None or session.run is None or session.run.finished.is_set():
            return False
        session.run.stop()
        return True

    def close(self, session_hash: str) -> None:
        """The tab went away: stop its episode and remove its folder."""
        with self._lock:
            session = self._by_hash.pop(session_hash, None)
        if session is None:
            return
        if session.run is not None:
            session.run.stop()
            session.run.finished.wait(timeout=10)
        session.files.close()

    def close_all(self) -> None:
        for key in list(self._by_hash):
            self.close(key)

    def __len__(self) -> int:
        return len(self._by_hash)
