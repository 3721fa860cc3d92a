"""`POST /v1/chat/completions` of `omniagent serve`: a validated request → engine requests → a response.

`prepare` (run on a worker thread: media decoding and the processor are CPU work) turns the request
into the engine requests of its `n` samples, sharing one prompt (the prefix cache then shares its
pages) with seeds `seed + i`. `Chat` hands them to the engine thread and either gathers the
completions into one `ChatCompletion`, or streams `ChatCompletionChunk`s as server-sent events: a
chunk per decode block, the last one with the usage when `stream_options.include_usage`, then
`data: [DONE]`. A client that goes away has its requests cancelled (their pages freed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from omniagent_jax.engine.policy import JaxPolicy
from omniagent_jax.engine.requests import Completion, Request, RequestError
from omniagent_jax.engine.sampling import SamplingParams
from omniagent_jax.engine.server_protocol import (
    AssistantMessage,
    BadRequest,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    PromptTokensDetails,
    TokenLogprob,
    Usage,
    error_body,
    stop_token_ids,
)
from omniagent_jax.engine.server_worker import EngineWorker, Event
from omniagent_jax.processing.policy_contract import SEED_RANGE

# Engine fields as the request names them.
_PARAMS = {"max_new_tokens": "max_tokens", "input_ids": "messages", "media": "messages"}


class EngineFailed(RuntimeError):
    """The engine finished a request with finish_reason "error" (its own failure, not the client's)."""


def prepare(policy: JaxPolicy, req: ChatCompletionRequest, seed: int, request_id: str) -> list[Request]:
    """The `n` engine requests of `req` (ids `<request_id>-<i>`, seeds `seed + i`); BadRequest for media
    the codec or the processor refuse and for `stop` strings the tokenizer does not have."""
    messages = req.decoded_messages()
    default = policy.sampling
    stops = policy.engine.stop_token_ids + stop_token_ids(req.stop, policy.processor.tokenizer) + tuple(req.stop_token_ids or ())
    sampling = SamplingParams(
        temperature=default.temperature if req.temperature is None else req.temperature,
        top_p=default.top_p if req.top_p is None else req.top_p,
        top_k=default.top_k if req.top_k is None else max(0, req.top_k),
        max_new_tokens=req.max_new_tokens or default.max_new_tokens,
        stop_token_ids=tuple(dict.fromkeys(stops)),
        seed=seed,
        logprobs=req.logprobs,
    )
    try:
        base = policy.request(messages, sampling)
    except ValueError as e:  # media the processor cannot lay out (too short an audio, a clip with no frames...)
        raise BadRequest(f"messages: {e}", "messages") from e
    seeds = [(seed + i) % SEED_RANGE for i in range(req.n)]
    return [dataclasses.replace(base, sampling=dataclasses.replace(sampling, seed=s), request_id=f"{request_id}-{i}")
            for i, s in enumerate(seeds)]


def rejection(error: Exception) -> Exception:
    """The engine refusing a request at submit → a BadRequest naming the request's field."""
    if isinstance(error, RequestError):
        param = _PARAMS.get(error.field, error.field)
        return BadRequest(f"{param}: {str(error).split(': ', 1)[-1]}", param)
    return error


class _Text:
    """A choice's text as its tokens arrive: each delta extends what was sent (never a broken character)."""

    def __init__(self, policy: JaxPolicy):
        self.policy, self.tokens, self.sent = policy, [], ""

    def add(self, tokens: list[int] | tuple[int, ...], final: bool = False) -> str:
        self.tokens += tokens
        text = self.policy.decode(self.tokens)
        if not final and (text.endswith("\ufffd") or not text.startswith(self.sent)):
            return ""  # an incomplete UTF-8 sequence: wait for the rest
        delta = text[len(self.sent):]
        self.sent = text
        return delta


class Chat:
    """One chat-completion request in flight: its engine requests, and the events the engine thread sends."""

    def __init__(self, policy: JaxPolicy, worker: EngineWorker, req: ChatCompletionRequest, requests: list[Request], *,
                 chat_id: str, model: str, seed: int):
        self.policy, self.worker, self.req, self.requests = policy, worker, req, requests
        self.chat_id, self.model, self.seed, self.created = chat_id, model, seed, int(time.time())
        self.index = {r.request_id: i for i, r in enumerate(requests)}
        self.pending = set(self.index)
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def deliver(event: Event) -> None:  # called on the engine thread
            loop.call_soon_threadsafe(self.events.put_nowait, event)

        self._deliver = deliver

    async def start(self) -> None:
        """Hands the requests to the engine thread; raises BadRequest when the engine refuses them."""
        self.worker.submit(self.requests, self._deliver, stream=self.req.stream)
        event = await self.events.get()
        if event.kind == "rejected":
            raise rejection(event.error)

    def cancel(self) -> None:
        if self.pending:
            self.worker.cancel(sorted(self.pending))
            self.pending.clear()

    async def _next(self) -> Event:
        event = await self.events.get()
        if event.kind == "done":
            self.pending.discard(event.request_id)
            if event.completion.finish_reason == "error":
                self.cancel()  # the other samples of a failed request are of no use
                raise EngineFailed(f"the engine failed this request: {event.completion.error}")
        return event

    # ------------------------------------------------------------------ whole responses

    async def complete(self, disconnected: Callable[[], Awaitable[None]]) -> ChatCompletion | None:
        """Every completion gathered into one response; None when the client went away first."""
        gather = asyncio.ensure_future(self._gather())
        gone = asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({gather, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not gather.done():
                gather.cancel()
                self.cancel()
        return gather.result() if gather.done() and not gather.cancelled() else None

    async def _gather(self) -> ChatCompletion:
        done: dict[str, Completion] = {}
        while self.pending:
            event = await self._next()
            if event.kind == "done":
                done[event.request_id] = event.completion
        ordered = [done[r.request_id] for r in self.requests]
        choices = [
            Choice(index=i, message=AssistantMessage(content=self.policy.decode(c.tokens)), finish_reason=c.finish_reason,
                   logprobs=self._logprobs(c), token_ids=list(c.tokens) if self.req.return_token_ids else None)
            for i, c in enumerate(ordered)
        ]
        return ChatCompletion(id=self.chat_id, created=self.created, model=self.model, choices=choices,
                              usage=self._usage(ordered), seed=self.seed)

    # ------------------------------------------------------------------ streams

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events; an engine failure after the stream began is an `error` event before `[DONE]`."""
        texts = [_Text(self.policy) for _ in self.requests]
        finished: dict[int, Completion] = {}
        try:
            yield self._sse([ChunkChoice(index=i, delta=Delta(role="assistant", content="")) for i in range(len(texts))])
            while self.pending:
                try:
                    event = await self._next()
                except EngineFailed as e:
                    yield f"data: {json.dumps(error_body(str(e), 500))}\n\n"
                    break
                i = self.index[event.request_id]
                if event.kind == "tokens":
                    delta = texts[i].add(event.tokens)
                    ids = list(event.tokens) if self.req.return_token_ids else None
                    if delta or ids:
                        yield self._sse([ChunkChoice(index=i, delta=Delta(content=delta), token_ids=ids)])
                elif event.kind == "done":
                    c = finished[i] = event.completion
                    new = c.tokens[len(texts[i].tokens):]
                    yield self._sse([ChunkChoice(
                        index=i, delta=Delta(content=texts[i].add(new, final=True)), finish_reason=c.finish_reason,
                        logprobs=self._logprobs(c), token_ids=list(new) if self.req.return_token_ids else None,
                    )])
            else:  # every choice finished
                if self.req.stream_options is not None and self.req.stream_options.include_usage:
                    yield self._sse([], usage=self._usage([finished[i] for i in range(len(texts))]))
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()  # the client went away mid-stream (or the stream failed): free what is left

    def _sse(self, choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(id=self.chat_id, created=self.created, model=self.model, choices=choices, usage=usage,
                                    seed=self.seed)
        return f"data: {chunk.model_dump_json()}\n\n"

    # ------------------------------------------------------------------ shared

    def _usage(self, completions: list[Completion]) -> Usage:
        """Prompt tokens counted once (the samples share their prompt), cached as the least any sample had."""
        prompt = completions[0].prompt_tokens
        generated = sum(len(c.tokens) for c in completions)
        return Usage(prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=min(c.cached_tokens for c in completions)))

    def _logprobs(self, c: Completion) -> ChoiceLogprobs | None:
        if c.logprobs is None:
            return None
        stops = set(self.policy.engine.stop_token_ids)  # as the text: `JaxPolicy.decode` drops the model's stops
        decode = self.policy.processor.tokenizer.decode
        return ChoiceLogprobs(content=[
            TokenLogprob(token=decode([t]), logprob=lp, entropy=ent)
            for t, lp, ent in zip(c.tokens, c.logprobs, c.entropies) if t not in stops
        ])

