"""Policies: messages in, one assistant turn out.

``Policy`` is structural: the JAX engine's policy (``omniagent_jax.engine.policy``) satisfies it
without this package importing it. Every policy returns the one
:class:`~omniagent_jax.processing.policy_contract.PolicyOutput` with typed metrics, and takes its seed
per call, so one policy object serves many episodes. ``ScriptedPolicy`` replays fixed outputs
(tests, replays); ``OpenAIPolicy`` talks to one or several OpenAI-compatible ``/v1/chat/completions``
endpoints (e.g. vLLM serving an exported checkpoint, or ``omniagent serve``), many turns at once, over
:mod:`omniagent_jax.agent.openai_http` (httpx, timeouts, retries), encoding media with
:mod:`omniagent_jax.processing.content_codec` (PNG frames, 16-bit WAV; the module doc there has the
wire format).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from omniagent_jax.agent import envfile, openai_http
from omniagent_jax.agent.messages import Message
from omniagent_jax.agent.openai_http import ChatCompletionsClient, OpenAIError
from omniagent_jax.processing import tokens
from omniagent_jax.processing.content_codec import encode_messages
from omniagent_jax.processing.policy_contract import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    PolicyError,
    PolicyMetrics,
    PolicyOutput,
    episode_of,
)

STOP_STRINGS = (tokens.IM_END,)

__all__ = ["ConcurrentPolicy", "OpenAIPolicy", "Policy", "PolicyError", "PolicyMetrics", "PolicyOutput", "ScriptedPolicy"]


@runtime_checkable
class Policy(Protocol):
    """``generate(messages, unchanged_prefix=k, seed=s)``: ``messages[:k]`` are exactly the messages the
    policy saw at its previous call (a hint for prefix/KV reuse; 0 means "assume nothing"); ``seed``
    is this turn's sampling seed (None: the policy's default)."""

    def generate(self, messages: Sequence[Message], *, unchanged_prefix: int = 0, seed: int | None = None) -> PolicyOutput: ...


@runtime_checkable
class ConcurrentPolicy(Protocol):
    """A policy that takes many turns at once (the episode driver's interface; ``generate`` stays too).

    One thread calls ``submit``/``collect``/``cancel`` (for the JAX policy it is the only one touching
    the engine: ``collect`` runs engine steps until something finishes).

    - ``submit(key, messages, unchanged_prefix=k, seed=s)`` queues one turn and returns at once; ``key``
      is unique among the turns in flight; ``unchanged_prefix`` and ``seed`` mean what they mean for
      ``Policy.generate``.
    - ``collect(timeout)`` blocks until at least one submitted turn has finished (or ``timeout`` seconds
      passed: then it may return ``[]``) and returns every turn finished since the last call, as
      ``(key, PolicyOutput)`` or, for a failed turn, ``(key, exception)`` (a :class:`PolicyError` or
      subclass); it never raises a turn's failure.
    - ``cancel(key)`` drops that turn at once (the JAX policy frees its engine pages); a cancelled turn
      is never returned by ``collect``; unknown or finished keys are ignored.
    """

    def generate(self, messages: Sequence[Message], *, unchanged_prefix: int = 0, seed: int | None = None) -> PolicyOutput: ...

    def submit(self, key: str, messages: Sequence[Message], *, unchanged_prefix: int = 0, seed: int | None = None) -> None: ...

    def collect(self, timeout: float | None = None) -> list[tuple[str, PolicyOutput | Exception]]: ...

    def cancel(self, key: str) -> None: ...


class ScriptedPolicy:
    """Replays fixed outputs; keeps a copy of every message list it was shown.

    ``outputs`` is one list played in call order, or a mapping episode key -> that episode's list: a turn
    submitted under ``turn_key(episode, t)`` takes that episode's next output. An exception among the
    outputs is that turn's failure. As a :class:`ConcurrentPolicy`, each submitted turn is a ``generate``
    call made under its key (so subclasses that override ``generate`` keep working); it finishes at the
    next ``collect``, in submission order, a raised exception coming back as the turn's failure.
    """

    def __init__(self, outputs: Sequence[str | Exception] | Mapping[str, Sequence[str | Exception]]) -> None:
        self.scripts = {str(k): list(v) for k, v in outputs.items()} if isinstance(outputs, Mapping) else None
        self.outputs = [] if isinstance(outputs, Mapping) else list(outputs)
        self.calls = 0
        self.taken: dict[str, int] = {}  # outputs taken per episode (per-episode scripts)
        self.inputs: list[list[Message]] = []
        self.unchanged_prefixes: list[int] = []
        self.seeds: list[int | None] = []
        self.keys: list[str | None] = []  # each call's turn key (None: a direct `generate`)
        self._key: str | None = None  # the key of the turn being submitted
        self._done: dict[str, PolicyOutput | Exception] = {}

    def generate(self, messages: Sequence[Message], *, unchanged_prefix: int = 0, seed: int | None = None) -> PolicyOutput:
        key = self._key
        if self.scripts is None:
            script, taken, whose = self.outputs, self.calls, ""
        else:
            if key is None:
                raise PolicyError("a per-episode scripted policy plays submitted turns (it needs their keys), not generate")
            episode = episode_of(key)
            if episode not in self.scripts:
                raise PolicyError(f"scripted policy has no script for episode {episode!r}")
            script, taken, whose = self.scripts[episode], self.taken.get(episode, 0), f" for episode {episode!r}"
        if taken >= len(script):
            raise PolicyError(f"scripted policy has only {len(script)} outputs{whose}; turn {taken + 1} was asked for")
        if self.scripts is not None:
            self.taken[episode] = taken + 1
        # Part lists are copied so later edits of the history cannot alter what was recorded;
        # media payloads are shared (they are never modified).
        self.inputs.append([{**m, "content": copy.copy(m["content"])} for m in messages])
        self.unchanged_prefixes.append(unchanged_prefix)
        self.seeds.append(seed)
        self.keys.append(key)
        self.calls += 1
        out = script[taken]
        if isinstance(out, Exception):
            raise out
        return PolicyOutput(out)

    def submit(self, key: str, messages: Sequence[Message], *, unchanged_prefix: int = 0, seed: int | None = None) -> None:
        self._key = key
        try:
            self._done[key] = self.generate(messages, unchanged_prefix=unchanged_prefix, seed=seed)
        except Exception as e:  # the turn's failure, returned by collect
            self._done[key] = e
        finally:
            self._key = None

    def collect(self, timeout: float | None = None) -> list[tuple[str, PolicyOutput | Exception]]:
        done, self._done = list(self._done.items()), {}
        return done

    def cancel(self, key: str) -> None:
        self._done.pop(key, None)


class OpenAIPolicy:
    """A policy served by one or several OpenAI-compatible chat endpoints (``url``: a URL, a
    comma-separated list of them, or a sequence). Each turn goes to the endpoint with the fewest turns
    in flight (ties in turn); each endpoint has at most ``max_concurrency`` requests in flight, the rest
    wait their turn locally; a turn whose endpoint cannot be connected to (after its retries) moves on to
    the next endpoint. ``generate`` plays one turn and blocks; ``submit``/``collect``/``cancel``
    (:class:`ConcurrentPolicy`) keep many in flight. ``extra_body`` is merged into every request (e.g.
    vLLM sampling extras). ``image_format="jpeg"`` is needed for clips on vLLM, which reads frame lists
    only as JPEG. ``prefix_caching`` is what the endpoint is known to do (reported in the run records;
    None: unknown). ``timeout_s``, ``connect_timeout_s``, ``retries`` and ``backoff_s`` are those of
    :class:`~omniagent_jax.agent.openai_http.ChatCompletionsClient`."""

    def __init__(
        self,
        url: str | Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        top_k: int | None = DEFAULT_TOP_K,
        max_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        logprobs: bool = False,
        image_format: str = "png",
        timeout_s: float = openai_http.DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = openai_http.DEFAULT_CONNECT_TIMEOUT_S,
        retries: int = openai_http.DEFAULT_RETRIES,
        backoff_s: float = openai_http.DEFAULT_BACKOFF_S,
        max_concurrency: int = openai_http.DEFAULT_MAX_CONCURRENCY,
        extra_body: Mapping[str, Any] | None = None,
        prefix_caching: bool | None = None,
    ) -> None:
        self.clients = [
            ChatCompletionsClient(u, api_key=api_key, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s,
                                  retries=retries, backoff_s=backoff_s, max_concurrency=max_concurrency)
            for u in endpoint_urls(url)
        ]
        self.model = model
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.image_format = image_format
        self.extra_body = dict(extra_body or {})
        self.prefix_caching = prefix_caching
        self._lock = threading.Lock()
        self._load = [0] * len(self.clients)  # turns in flight (queued or sent) per endpoint
        self._next = 0  # where the search for the least-loaded endpoint starts: ties go round-robin
        self._pending: dict[str, concurrent.futures.Future[PolicyOutput]] = {}
        self._done: queue.SimpleQueue[tuple[str, concurrent.futures.Future[PolicyOutput]]] = queue.SimpleQueue()

    @property
    def client(self) -> ChatCompletionsClient:
        """The first endpoint's client."""
        return self.clients[0]

    def __repr__(self) -> str:
        return f"OpenAIPolicy(model={self.model!r}, clients={self.clients!r})"

    @classmethod
    def from_env(cls, *, url: str | None = None, model: str | None = None, env_file: str | None = envfile.DEFAULT_ENV_FILE,
                 **kwargs: Any) -> OpenAIPolicy:
        """URL(s)/model from the arguments or ``OMNIAGENT_OPENAI_URL`` (comma-separated for several endpoints) /
        ``_MODEL``; the key only from ``OMNIAGENT_OPENAI_API_KEY`` (environment or ``.env``), never from the
        command line."""
        url = url or envfile.get_setting(envfile.OPENAI_URL, env_file=env_file)
        model = model or envfile.get_setting(envfile.OPENAI_MODEL, env_file=env_file)
        if not url or not model:
            raise ValueError(
                f"OpenAIPolicy needs an endpoint URL and a model name (--openai-url/--openai-model or "
                f"{envfile.OPENAI_URL}/{envfile.OPENAI_MODEL})"
            )
        key = envfile.get_setting(envfile.OPENAI_API_KEY, env_file=env_file)
        return cls(url, model, api_key=key, **kwargs)

    def request_body(self, messages: Sequence[Message], *, seed: int | None = None) -> dict[str, Any]:
        """The JSON body of one chat-completion request for ``messages``."""
        chat, mm_kwargs = encode_messages(messages, image_format=self.image_format)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "stop": list(STOP_STRINGS),
        }
        if self.top_k is not None:
            body["top_k"] = self.top_k
        if seed is not None:
            body["seed"] = int(seed)
        if self.logprobs:
            body["logprobs"] = True
        if mm_kwargs:
            body["mm_processor_kwargs"] = mm_kwargs
        body.update(self.extra_body)
        return body

    def generate(self, messages: Sequence[Message], *, unchanged_prefix: int = 0, seed: int | None = None) -> PolicyOutput:
        """One turn, blocking. A request that fails raises :class:`PolicyError`."""
        return openai_http.wait(self._start(messages, seed))

    def submit(self, key: str, messages: Sequence[Message], *, unchanged_prefix: int = 0, seed: int | None = None) -> None:
        """Queue one turn and return at once (media encoding happens off this thread)."""
        if key in self._pending:
            raise ValueError(f"turn {key!r} is already in flight")
        # The caller may extend its history once the turn is back; encoding later must see it as it is now.
        snapshot = [{**m, "content": copy.copy(m["content"])} for m in messages]
        future = self._start(snapshot, seed)
        self._pending[key] = future
        future.add_done_callback(lambda f: self._done.put((key, f)))

    def collect(self, timeout: float | None = None) -> list[tuple[str, PolicyOutput | Exception]]:
        """Every turn finished since the last call, waiting for at least one (``[]`` after ``timeout`` s,
        or at once when nothing is in flight). A failed turn comes back as a :class:`PolicyError`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        finished: list[tuple[str, PolicyOutput | Exception]] = []
        while True:
            try:
                if finished or not self._pending:
                    key, future = self._done.get_nowait()
                else:
                    wait_s = None if deadline is None else max(0.0, deadline - time.monotonic())
                    key, future = self._done.get(timeout=wait_s)
            except queue.Empty:
                return finished
            if self._pending.get(key) is not future:
                continue  # cancelled (or a key reused after cancel: its new turn is still in flight)
            del self._pending[key]
            finished.append((key, _outcome(future)))

    def cancel(self, key: str) -> None:
        """Drop a turn: never sent if still queued, its connection closed if in flight; never collected."""
        future = self._pending.pop(key, None)
        if future is not None:
            future.cancel()

    def close(self) -> None:
        """Cancel every turn in flight and close the connection pools."""
        for key in list(self._pending):
            self.cancel(key)
        for client in self.clients:
            client.close()

    def __enter__(self) -> OpenAIPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, messages: Sequence[Message], seed: int | None) -> concurrent.futures.Future[PolicyOutput]:
        with self._lock:
            n = len(self.clients)
            index = min(((self._next + i) % n for i in range(n)), key=lambda j: self._load[j])
            self._next = (index + 1) % n
            self._load[index] += 1
        future = openai_http.run_in_background(self._turn(index, messages, seed))
        future.add_done_callback(lambda _: self._release(index))
        return future

    def _release(self, index: int) -> None:
        with self._lock:
            self._load[index] -= 1

    async def _turn(self, index: int, messages: Sequence[Message], seed: int | None) -> PolicyOutput:
        t0 = time.perf_counter()
        # PNG/WAV encoding of a turn's media takes a while: off the request loop, which serves every turn.
        body = await asyncio.get_running_loop().run_in_executor(None, lambda: self.request_body(messages, seed=seed))
        n = len(self.clients)
        for tried in range(n):
            client = self.clients[(index + tried) % n]
            async with client.slots:
                t1 = time.perf_counter()
                try:
                    response = await client.send(body)
                    break
                except OpenAIError as e:
                    # An endpoint that cannot be connected to never saw the turn: the next one may take it.
                    if not e.unreachable or tried == n - 1:
                        raise PolicyError(str(e) if n == 1 else f"{e} ({tried + 1} of {n} endpoints tried)") from None
        t2 = time.perf_counter()
        try:
            return self._output(response, prep_seconds=t1 - t0, generation_seconds=t2 - t1)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise PolicyError(f"{client.url} returned a malformed completion ({type(e).__name__}: {e})") from None

    def _output(self, response: dict[str, Any], *, prep_seconds: float, generation_seconds: float) -> PolicyOutput:
        choice = response["choices"][0]
        text = (choice["message"].get("content") or "").strip()
        content_lp = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
        logprobs = [float(t["logprob"]) for t in content_lp] if content_lp else None
        # `omniagent serve` also reports each token's entropy (TAURA's turn entropy needs it).
        entropies = [float(t["entropy"]) for t in content_lp] if content_lp and all("entropy" in t for t in content_lp) else None
        usage = response.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
        metrics = PolicyMetrics(
            prompt_tokens=_count(usage.get("prompt_tokens")),
            cached_prompt_tokens=_count(details.get("cached_tokens")) if isinstance(details, dict) else None,
            completion_tokens=_count(usage.get("completion_tokens")),
            prep_seconds=prep_seconds,
            generation_seconds=generation_seconds,
            prefix_caching=self.prefix_caching,
        )
        # `omniagent serve` returns the generated ids when the request asks (`return_token_ids`).
        ids = choice.get("token_ids")
        token_ids = [int(t) for t in ids] if isinstance(ids, list) else None
        return PolicyOutput(text, token_ids=token_ids, logprobs=logprobs, entropies=entropies,
                            finish_reason=choice.get("finish_reason"), metrics=metrics)


def endpoint_urls(url: str | Sequence[str]) -> list[str]:
    """The endpoints named by one URL, a comma-separated list, or a sequence of URLs."""
    parts = url.split(",") if isinstance(url, str) else list(url)
    urls = [u.strip() for u in parts if u and u.strip()]
    if not urls:
        raise ValueError(f"no endpoint URL in {url!r}")
    return urls


def _outcome(future: concurrent.futures.Future[PolicyOutput]) -> PolicyOutput | Exception:
    """A finished turn's output, or its failure as a PolicyError (never raised)."""
    try:
        return future.result()
    except PolicyError as e:
        return e
    except Exception as e:  # e.g. media that cannot be encoded: it still ends only this turn
        error = PolicyError(f"turn failed: {type(e).__name__}: {e}")
        error.__cause__ = e
        return error


def _count(value: Any) -> int | None:
    """A token count from a response's usage, or None when the endpoint did not report it."""
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
