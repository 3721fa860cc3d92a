"""`omniagent serve` under load on the tiny model (CPU): requests/s and p50/p95 latency at 1, 8 and 32
concurrent clients (closed loop: each client sends its next request when the last one is answered),
and the time to the first token with `stream: true` at the same concurrency.

Baseline: the same requests run straight on an engine of the same configuration with the same number
in flight (no HTTP, no JSON, no processor), so the ratio is what the server costs on top of the engine.
Every shape is compiled in a warm-up pass before anything is timed.

    .venv/bin/python benchmarks/serve.py [--new-tokens 32] [--requests-per-client 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import httpx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from omniagent_jax.engine import Engine, SamplingParams  # noqa: E402
from omniagent_jax.engine.policy import JaxPolicy  # noqa: E402
from omniagent_jax.engine.server import ServerThread, create_app  # noqa: E402
from omniagent_jax.engine.server_chat import prepare  # noqa: E402
from omniagent_jax.engine.server_protocol import parse_request  # noqa: E402
from omniagent_jax.model import Thinker, config  # noqa: E402
from omniagent_jax.processing import OmniProcessor  # noqa: E402

CLIENTS = (1, 8, 32)
ENGINE = {"page_size": 16, "num_pages": 2048, "max_batch": 32, "decode_steps": 8}


def body(i: int, new_tokens: int, stream: bool = False) -> dict:
    # distinct prompts of one length (no prefix-cache help beyond the chat template)
    return {"messages": [{"role": "user", "content": f"request {i:05d}: describe the scene in detail"}], "max_tokens": new_tokens,
            "seed": i, "stream": stream, "return_token_ids": True}


def percentile(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[round(q) - 1] if len(xs) > 1 else xs[0]


async def closed_loop(url: str, clients: int, bodies: list[dict]) -> tuple[float, list[float], list[float], int]:
    """(wall seconds, latencies, times to the first token (streams), tokens generated (whole responses))."""
    todo = list(reversed(bodies))
    latencies, first_tokens, tokens = [], [], 0

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal tokens
        while todo:
            b = todo.pop()
            t0 = time.perf_counter()
            if b["stream"]:
                first = None
                async with c.stream("POST", "/v1/chat/completions", json=b) as r:
                    async for line in r.aiter_lines():
                        if first is None and '"token_ids":[' in line:
                            first = time.perf_counter() - t0
                first_tokens.append(first)
            else:
                r = await c.post("/v1/chat/completions", json=b)
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]
            latencies.append(time.perf_counter() - t0)

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for _ in range(clients)))
        return time.perf_counter() - t0, latencies, first_tokens, tokens


def engine_alone(policy: JaxPolicy, clients: int, bodies: list[dict]) -> float:
    """Seconds for the same requests on a bare engine with at most `clients` in flight."""
    engine = Engine(policy.engine.model, **ENGINE)
    requests = [prepare(policy, parse_request(b), b["seed"], f"r{i}")[0] for i, b in enumerate(bodies)]
    t0 = time.perf_counter()
    queue, in_flight = list(reversed(requests)), 0
    while queue or in_flight:
        while queue and in_flight < clients:
            engine.submit(queue.pop())
            in_flight += 1
        engine.step()
        in_flight -= len(engine.pop_finished())
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--requests-per-client", type=int, default=4)
    args = parser.parse_args()
    model = Thinker(config.tiny(), dtype=jnp.float32, rngs=nnx.Rngs(0))
    policy = JaxPolicy(Engine(model, **ENGINE), OmniProcessor.from_pretrained(),
                       SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.new_tokens))
    print(f"tiny model ({model.num_params():,} parameters, vocab {model.config.text.vocab_size}, fp32), CPU threads "
          f"{os.cpu_count()}, engine {ENGINE}, {args.new_tokens} new tokens per request, temperature 1")
    with ServerThread(create_app(policy, api_key="")) as server:
        serial = iter(range(10**6))
        for clients in CLIENTS:  # warm-up: compile every batch and page-table shape the timed runs meet
            n = clients * args.requests_per_client
            asyncio.run(closed_loop(server.url, clients, [body(next(serial), args.new_tokens, s) for s in (False, True)
                                                          for _ in range(n // 2)]))
            engine_alone(policy, clients, [body(next(serial), args.new_tokens) for _ in range(n)])
        print("| clients | requests | requests/s | p50 / p95 latency | tokens/s | engine alone requests/s | server/engine "
              "| streaming: first token p50 / p95 |")
        print("|---|---|---|---|---|---|---|---|")
        for clients in CLIENTS:
            n = clients * args.requests_per_client
            bodies = [body(next(serial), args.new_tokens) for _ in range(n)]
            wall, lat, _, toks = asyncio.run(closed_loop(server.url, clients, bodies))
            alone = engine_alone(policy, clients, [body(next(serial), args.new_tokens) for _ in range(n)])
            _, _, ttft, _ = asyncio.run(closed_loop(server.url, clients, [body(next(serial), args.new_tokens, True)
                                                                          for _ in range(n)]))
            print(f"| {clients} | {n} | {n / wall:.2f} | {percentile(lat, 50) * 1e3:.0f} / {percentile(lat, 95) * 1e3:.0f} ms | "
                  f"{toks / wall:.0f} | {n / alone:.2f} | {alone / wall:.2f}x | "
                  f"{percentile(ttft, 50) * 1e3:.0f} / {percentile(ttft, 95) * 1e3:.0f} ms |")


if __name__ == "__main__":
    main()
