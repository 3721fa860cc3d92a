"""`omniagent serve`: an OpenAI-compatible server over the JAX engine, on FastAPI + uvicorn.

Routes: `POST /v1/chat/completions` (OpenAI's chat completions, `stream` and `n` included; the schema
is `server_protocol`, the handling `server_chat`), `GET /v1/models`, `GET /health`. One thread owns
the engine (`server_worker.EngineWorker`); requests reach it through a queue, results come back to
the event loop. Every refusal is OpenAI's error object, with `param` naming the field: 400 for a bad
value (FastAPI's 422 included), 401 without the key, 404 for an unknown model or route, 408 for a body
that stops arriving, 413 for one over the size limit; 500 only for the server's own failures, which
end that request alone.

Media come only as base64 data URLs (the server fetches nothing); see
`omniagent_jax.processing.content_codec` for the parts. A request without `seed` gets a fresh random
one, returned in the response's `seed` field so the answer can be reproduced. The API key, when
wanted, comes from the environment variable `OMNIAGENT_SERVE_API_KEY` (`Authorization: Bearer <key>`
on every `/v1` route), never from the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import random
import secrets
import threading
import time
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from omniagent_jax.engine.policy import JaxPolicy
from omniagent_jax.engine.server_chat import Chat, EngineFailed, prepare
from omniagent_jax.engine.server_protocol import (
    BadRequest,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    error_body,
    validation_error,
)
from omniagent_jax.engine.server_worker import EngineWorker
from omniagent_jax.processing.policy_contract import SEED_RANGE

log = logging.getLogger(__name__)

API_KEY_ENV = "OMNIAGENT_SERVE_API_KEY"
MAX_BODY_BYTES = 64 * 2**20  # an episode's history of frames, clips and audio fits in a few MB
BODY_TIMEOUT_S = 30.0  # longest wait for the next piece of a request body
KEEP_ALIVE_S = 5.0  # idle keep-alive connections are closed after this


def _error(status: int, message: str, param: str | None = None, *, close: bool = False) -> JSONResponse:
    return JSONResponse(error_body(message, status, param), status, headers={"connection": "close"} if close else None)


class RequestGuard:
    """ASGI middleware in front of the app: the API key, then the body, read whole before the app sees it,
    within `max_body_bytes` (413) and with at most `body_timeout_s` between two pieces (408), so a
    client that declares more than it sends holds nothing for long. Refusals close the connection."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, body_timeout_s: float):
        self.app, self.api_key = app, api_key
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and scope["path"].startswith("/v1") and not self._authorized(headers.get("authorization", "")):
            refusal = _error(401, f"a valid API key is required (Authorization: Bearer <${API_KEY_ENV}>)")
            return await refusal(scope, receive, send)
        declared = headers.get("content-length", "")  # the HTTP layer has checked it is a number
        declared = int(declared) if declared.isdigit() else None
        # Past the limit the rest is still read (and dropped) up to twice the limit: answering while the
        # client still sends would reset the connection before it reads the 413.
        size, body, more = 0, bytearray(), (declared or 0) <= 2 * self.max_body_bytes
        while more:
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                return await _error(408, f"the request body stopped arriving for {self.body_timeout_s:g} s", "body",
                                    close=True)(scope, receive, send)
            if message["type"] == "http.disconnect":
                return
            chunk, more = message.get("body", b""), message.get("more_body", False)
            size += len(chunk)
            if size <= self.max_body_bytes:
                body += chunk
            more = more and size <= 2 * self.max_body_bytes
        too_big = max(size, declared or 0) > self.max_body_bytes
        if too_big:
            return await _error(413, f"the request body is over the limit of {self.max_body_bytes} bytes", "body",
                                close=True)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the disconnect, when the client goes away

        await self.app(scope, replay, send)

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())


def create_app(policy: JaxPolicy, *, model_name: str = "omniagent", api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, body_timeout_s: float = BODY_TIMEOUT_S, seed: int | None = None) -> FastAPI:
    """The server's ASGI app; its lifespan starts and stops the engine thread (`app.state.worker`).

    `api_key` None reads `$OMNIAGENT_SERVE_API_KEY` (unset or empty: no key needed). `seed` makes the
    seeds drawn for requests without one a reproducible sequence (None: fresh entropy).
    """
    api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    worker = EngineWorker(policy.engine)
    draw = secrets.randbelow if seed is None else random.Random(seed).randrange

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        await run_in_threadpool(worker.stop)

    app = FastAPI(title="omniagent", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.worker = worker
    app.add_middleware(RequestGuard, api_key=api_key, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError) -> JSONResponse:
        bad = validation_error(list(exc.errors()))
        return _error(bad.status, str(bad), bad.param)

    @app.exception_handler(BadRequest)
    async def bad_request(_, exc: BadRequest) -> JSONResponse:
        return _error(exc.status, str(exc), exc.param)

    @app.exception_handler(HTTPException)
    async def http_error(_, exc: HTTPException) -> JSONResponse:  # FastAPI's own: a body it cannot parse is a 400
        return _error(exc.status_code, str(exc.detail), "body" if exc.status_code == 400 else None)

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"} if worker.is_alive() else {"status": "engine thread stopped"},
                            200 if worker.is_alive() else 503)

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, created=int(time.time()))])

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        try:
            return await _chat(req, request)
        except BadRequest:
            raise
        except Exception as e:  # answered here: Starlette's last-resort handler would also drop the connection
            log.exception("internal error")
            return _error(500, f"internal error: {type(e).__name__}: {e}")

    async def _chat(req: ChatCompletionRequest, request: Request) -> Response:
        if req.model is not None and req.model != model_name:
            raise BadRequest(f"model: {req.model!r} is not served here (this server serves {model_name!r})", "model", 404)
        if req.stream_options is not None and not req.stream:
            raise BadRequest("stream_options: only allowed when stream is true", "stream_options")
        request_seed = req.seed if req.seed is not None else draw(SEED_RANGE)
        chat_id = f"chatcmpl-{uuid.uuid4().hex}"
        requests = await run_in_threadpool(prepare, policy, req, request_seed, chat_id)
        chat = Chat(policy, worker, req, requests, chat_id=chat_id, model=model_name, seed=request_seed)
        await chat.start()
        if req.stream:
            return StreamingResponse(chat.stream(), media_type="text/event-stream", headers={"cache-control": "no-cache"})
        try:
            response = await chat.complete(lambda: _disconnected(request))
        except EngineFailed as e:
            return _error(500, str(e))
        if response is None:
            return Response(status_code=499)  # the client closed the connection: nobody reads this
        return JSONResponse(response.model_dump(mode="json"))

    return app


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone away (the body was read already: only the disconnect is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def uvicorn_config(app: FastAPI, host: str, port: int, *, log_level: str = "info", **kwargs: Any) -> uvicorn.Config:
    """Uvicorn's settings for the app: idle keep-alive connections closed after `KEEP_ALIVE_S`."""
    return uvicorn.Config(app, host=host, port=port, timeout_keep_alive=KEEP_ALIVE_S, log_level=log_level, **kwargs)


def serve(policy: JaxPolicy, host: str = "127.0.0.1", port: int = 8000, model_name: str = "omniagent", *,
          max_body_bytes: int = MAX_BODY_BYTES, body_timeout_s: float = BODY_TIMEOUT_S, seed: int | None = None,
          limit_concurrency: int | None = None) -> None:
    """Serves until interrupted."""
    app = create_app(policy, model_name=model_name, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s, seed=seed)
    auth = "API key required" if os.environ.get(API_KEY_ENV) else f"no API key (set ${API_KEY_ENV} to require one)"
    print(f"serving {model_name} on http://{host}:{port}/v1/chat/completions ({auth}; Ctrl-C to stop)", flush=True)
    uvicorn.Server(uvicorn_config(app, host, port, limit_concurrency=limit_concurrency)).run()


class ServerThread:
    """The app served by uvicorn on a background thread (tests, benchmarks): `with ServerThread(app) as s: s.url`."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, **kwargs: Any):
        self.server = uvicorn.Server(uvicorn_config(app, host, port, log_level="warning", **kwargs))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn")
        self.host = host

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

