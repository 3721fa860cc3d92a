"""``omniagent demo``: the Gradio page on 127.0.0.1:8080 (no public link unless ``--share``).

The policy is the JAX engine on ``--model`` (default: the shipped trained agent when it is present,
else the tiny preset with random weights, labelled so on the page), or ``--policy openai`` (an
OpenAI-compatible endpoint, key from the environment only) or ``--policy scripted`` (replayed turns).
Every argument is checked before a model loads; bad input exits 2 with one ``omniagent demo: error:`` line.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib.util
import signal
import sys
import threading

from omniagent_jax.demo.defaults import DEFAULT_CONCURRENCY, DEFAULT_HOST, DEFAULT_PORT
from omniagent_jax.demo.uploads import DEFAULT_MAX_UPLOAD_MB
from omniagent_jax.policy_flags import SHIPPED_AGENT, engine_arguments, is_random_model, load_jax_policy

PROG = "omniagent demo"
TINY_MAX_NEW_TOKENS = 256  # random weights never stop on their own; keep their turns short by default


def add_demo_command(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers ``demo`` on the top-level command's subparsers, with the engine flags."""
    p = sub.add_parser("demo", help="the Gradio demo: watch the agent look, listen and answer")
    p.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--policy", choices=("jax", "openai", "scripted"), default="jax")
    p.add_argument("--openai-url", default=None, help="endpoint(s) for --policy openai (default $OMNIAGENT_OPENAI_URL)")
    p.add_argument("--openai-model", default=None, help="served model name (default $OMNIAGENT_OPENAI_MODEL)")
    p.add_argument("--scripted-outputs", default=None, help="turns for --policy scripted: a JSON list, or one per line")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"default per turn, the page can change it (4096; {TINY_MAX_NEW_TOKENS} on the tiny random model)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, help="largest upload accepted")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="episodes played at once (all sessions)")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)  # the page's seed field overrides it per episode
    engine_arguments(p)
    p.set_defaults(func=cmd_demo)
    return p


def check_demo_args(args: argparse.Namespace) -> None:
    from omniagent_jax.agent.cli import UsageError

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in [0, 65535], got {args.port}")
    if not args.max_upload_mb > 0:
        raise UsageError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {args.concurrency}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.policy == "scripted" and not args.scripted_outputs:
        raise UsageError("--policy scripted needs --scripted-outputs FILE")
    if importlib.util.find_spec("gradio") is None:
        raise UsageError("the demo needs Gradio: pip install -e '.[demo]' (or `make demo`)")


def build_backend(args: argparse.Namespace):
    """The page's policy backend, its default max new tokens per turn, and the model's episode card resolved
    (the page's default settings and system prompt; empty for endpoints and scripted replays)."""
    from omniagent_jax.agent.cli import UsageError, read_scripted_outputs
    from omniagent_jax.agent.episode_card import EpisodeCardError, resolve_episode_settings
    from omniagent_jax.agent.policy import OpenAIPolicy, ScriptedPolicy
    from omniagent_jax.demo.hub import per_episode_backend, shared_backend
    from omniagent_jax.processing.policy_contract import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P

    if args.policy == "scripted":
        outputs = read_scripted_outputs(args.scripted_outputs)
        return per_episode_backend("scripted", f"scripted replay of {args.scripted_outputs}",
                                   lambda s: ScriptedPolicy(outputs)), args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, {}
    if args.policy == "openai":
        def make(s):
            return OpenAIPolicy.from_env(url=args.openai_url, model=args.openai_model, temperature=s.temperature, top_p=s.top_p,
                                         top_k=s.top_k, max_tokens=s.max_new_tokens)
        try:
            probe = OpenAIPolicy.from_env(url=args.openai_url, model=args.openai_model)
        except ValueError as e:
            raise UsageError(str(e)) from None
        label = f"OpenAI-compatible endpoint {', '.join(c.url for c in probe.clients)} (model {probe.model})"
        probe.close()
        return per_episode_backend("openai", label, make), args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, {}
    if args.model is None and (SHIPPED_AGENT / "config.json").is_file():
        args.model = str(SHIPPED_AGENT)
    tiny = is_random_model(args.model)
    episode = argparse.Namespace(model=args.model)
    try:
        resolve_episode_settings(episode)
    except EpisodeCardError as e:
        raise UsageError(f"--model {args.model}: {e}") from None
    max_new = args.max_new_tokens or (TINY_MAX_NEW_TOKENS if tiny else episode.max_new_tokens)
    policy = load_jax_policy(args, temperature=DEFAULT_TEMPERATURE, top_p=DEFAULT_TOP_P, top_k=DEFAULT_TOP_K,
                             max_new_tokens=max_new)
    label = ("JAX engine, tiny preset with RANDOM WEIGHTS — it exercises the machinery only; pass --model for a trained agent"
             if tiny else f"JAX engine on {args.model}")
    return shared_backend("jax", label, policy), max_new, vars(episode)


def cmd_demo(args: argparse.Namespace) -> int:
    from omniagent_jax.agent.cli import UsageError, report_usage_error

    try:
        check_demo_args(args)
        backend, max_new, episode = build_backend(args)  # the JAX loader checks the engine flags first
    except UsageError as e:
        return report_usage_error(PROG, e)
    from omniagent_jax.demo.app import DemoApp

    app = DemoApp([backend], max_upload_mb=args.max_upload_mb, concurrency=args.concurrency, max_new_tokens=max_new,
                  episode=episode)
    print(f"{PROG}: policy {backend.label}; serving on http://{args.host}:{args.port}"
          + (" (and a public share link)" if args.share else " (local only; --share for a public link)"), file=sys.stderr)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID` prints every thread's stack (a stuck page can be diagnosed)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Ctrl-C / SIGTERM only ask to stop: one that lands while Gradio is still starting (its launch makes its own
    # HTTP checks after the page already answers) must not interrupt it half-way and leave its threads running.
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        _, local_url, share_url = app.launch(host=args.host, port=args.port, share=args.share, block=False)
        print(f"{PROG}: ready at {local_url}" + (f" and {share_url}" if share_url else "") + "; Ctrl-C stops it", file=sys.stderr)
        while not stop.wait(0.5):
            pass
    finally:
        app.close()
    print(f"{PROG}: stopped", file=sys.stderr)
    return 0
