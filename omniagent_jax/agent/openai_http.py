"""A client for OpenAI-compatible ``/v1/chat/completions`` endpoints, on httpx.

One :class:`ChatCompletionsClient` per endpoint. Its requests run on one asyncio loop in a daemon thread
(:func:`background_loop`), so the blocking :meth:`~ChatCompletionsClient.create` (the FF judge, a single
policy turn) and the concurrent :meth:`~ChatCompletionsClient.submit` (batched episodes) share one
connection pool, one bound on requests in flight and one retry path.

Retried, with exponential backoff and jitter: connection errors and timeouts, HTTP 408, 429 and 5xx (a
``Retry-After`` header is honoured, up to ``max_backoff_s``). Any other 4xx fails at once with the
server's own message. A cancelled submission that was not sent yet is never sent; one in flight is
aborted, which closes its connection (a server such as ``omniagent serve`` then cancels the request and
frees its pages). The API key travels only as the ``Authorization`` header: it is in no repr, log line
or error message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import json
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx

CHAT_COMPLETIONS_PATH = "/chat/completions"
DEFAULT_TIMEOUT_S = 300.0  # a whole turn of a 7B model can take minutes
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF_S = 0.5
DEFAULT_MAX_BACKOFF_S = 30.0
DEFAULT_MAX_CONCURRENCY = 8
RETRY_STATUS = frozenset({408, 429})  # plus every 5xx
_ERROR_BODY_CHARS = 500

T = TypeVar("T")


class OpenAIError(RuntimeError):
    """The endpoint failed or answered with something that is not a chat completion.

    ``status`` is the HTTP status when the server answered (None: no answer). ``unreachable``: the last
    attempt could not even connect, so the request surely never reached the server (safe to send elsewhere)."""

    def __init__(self, message: str, *, status: int | None = None, unreachable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.unreachable = unreachable


def chat_completions_url(url: str) -> str:
    """Accept a server root (``http://h:8000``), an API base (``.../v1``) or the full endpoint."""
    url = url.strip().rstrip("/")
    if url.endswith(CHAT_COMPLETIONS_PATH):
        return url
    if not url.endswith("/v1"):
        url += "/v1"
    return url + CHAT_COMPLETIONS_PATH


def _display_url(url: str) -> str:
    """The URL without any ``user:password@`` part, for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class _LoopThread:
    """An asyncio loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="openai-http-loop", daemon=True)
        self.thread.start()


_loop_lock = threading.Lock()
_loop_thread: _LoopThread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's request loop, started on first use (and again in a forked child, which has no threads)."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is None or _loop_thread.pid != os.getpid() or not _loop_thread.thread.is_alive():
            _loop_thread = _LoopThread()
        return _loop_thread.loop


def run_in_background(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the request loop; cancelling the returned future cancels the coroutine."""
    loop = background_loop()
    return asyncio.run_coroutine_threadsafe(coro, loop)


def wait(future: concurrent.futures.Future[T]) -> T:
    """Block on a background future; an interrupt (Ctrl-C) while waiting cancels it."""
    if _loop_thread is not None and threading.current_thread() is _loop_thread.thread:
        raise RuntimeError("a blocking request cannot be made from the request loop itself")
    try:
        return future.result()
    except BaseException:
        future.cancel()
        raise


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def server_message(response: httpx.Response) -> str:
    """The error message a server put in its reply: OpenAI's ``error.message``, FastAPI's ``detail``, or the text."""
    text = response.text
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:_ERROR_BODY_CHARS]
        for value in (error, payload.get("detail"), payload.get("message")):
            if value:
                return (value if isinstance(value, str) else json.dumps(value))[:_ERROR_BODY_CHARS]
    return " ".join(text.split())[:_ERROR_BODY_CHARS]


class ChatCompletionsClient:
    """POSTs chat-completion bodies to one endpoint: at most ``max_concurrency`` requests in flight, each
    retried up to ``retries`` times (delays ``backoff_s * 2**attempt`` scaled by a random factor in
    [0.5, 1], at most ``max_backoff_s``). ``timeout_s`` bounds each wait for the server (read, write,
    pool), ``connect_timeout_s`` each connection attempt."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_backoff_s: float = DEFAULT_MAX_BACKOFF_S,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        if not url.strip().startswith(("http://", "https://")):
            raise ValueError(f"endpoint URL must start with http:// or https://, got {_display_url(url)!r}")
        if retries < 0 or max_concurrency < 1 or timeout_s <= 0 or connect_timeout_s <= 0 or backoff_s < 0:
            raise ValueError(
                f"bad client settings: retries={retries} (>= 0), max_concurrency={max_concurrency} (>= 1), "
                f"timeout_s={timeout_s} and connect_timeout_s={connect_timeout_s} (> 0), backoff_s={backoff_s} (>= 0)"
            )
        self.url = chat_completions_url(url)
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_concurrency = max_concurrency
        # The semaphore and connection pool of the loop they were made on (a forked child has a new loop).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        key = "set" if self._api_key else "unset"
        return f"ChatCompletionsClient(url={_display_url(self.url)!r}, api_key=<{key}>)"

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._slots, self._http = loop, asyncio.Semaphore(self.max_concurrency), None

    @property
    def slots(self) -> asyncio.Semaphore:
        """Held around each request, retries included: at most ``max_concurrency`` in flight. Request loop only."""
        self._bind()
        assert self._slots is not None
        return self._slots

    def _client(self) -> httpx.AsyncClient:
        self._bind()
        if self._http is None:
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            self._http = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
                limits=httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency),
            )
        return self._http

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt + 1``: exponential with jitter, at least ``Retry-After``."""
        delay = self.backoff_s * (2**attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_backoff_s)

    async def send(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion with retries, not counted against ``slots`` (see :meth:`acreate`)."""
        where = _display_url(self.url)
        attempts = self.retries + 1
        for attempt in range(attempts):
            retry_after = None
            try:
                response = await self._client().post(self.url, json=body)
            except httpx.TimeoutException as e:
                error = OpenAIError(f"{where} timed out ({type(e).__name__}) after {attempt + 1} attempt(s)",
                                    unreachable=isinstance(e, httpx.ConnectTimeout))
            except httpx.TransportError as e:
                error = OpenAIError(f"cannot reach {where} after {attempt + 1} attempt(s): {type(e).__name__}: {e}",
                                    unreachable=isinstance(e, httpx.ConnectError))
            else:
                if response.status_code < 300:
                    return _completion(response, where)
                error = OpenAIError(f"{where} answered HTTP {response.status_code}: {server_message(response)}",
                                    status=response.status_code)
                if response.status_code not in RETRY_STATUS and response.status_code < 500:
                    raise error
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            if attempt + 1 == attempts:
                raise error
            await asyncio.sleep(self.backoff(attempt, retry_after))
        raise AssertionError("unreachable")

    async def acreate(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion, waiting for a free slot first; runs on the request loop."""
        async with self.slots:
            return await self.send(body)

    def submit(self, body: dict[str, Any]) -> concurrent.futures.Future[dict[str, Any]]:
        """Start one request and return at once; ``future.cancel()`` drops it (never sent if still queued)."""
        return run_in_background(self.acreate(body))

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send one chat-completion request and return the decoded JSON response (blocking)."""
        return wait(self.submit(body))

    def close(self) -> None:
        """Close the connection pool (the client opens a new one if used again)."""
        http, self._http = self._http, None
        if http is not None and self._loop is background_loop():
            wait(run_in_background(http.aclose()))

    def __enter__(self) -> ChatCompletionsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _completion(response: httpx.Response, where: str) -> dict[str, Any]:
    """The decoded chat completion, or an OpenAIError when the reply is not one."""
    try:
        payload = response.json()
        payload["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise OpenAIError(f"{where} returned no chat completion: {response.text[:_ERROR_BODY_CHARS]!r}",
                          status=response.status_code) from None
    return payload
