"""`omniagent` command line.

    omniagent run   --video V --question Q [...]   one OTA episode; prints each turn, writes latest_run.json
    omniagent serve --model PATH [--port 8000]      OpenAI-compatible /v1/chat/completions over the JAX engine
    omniagent train sft --config configs/sft/tiny.yaml [key=value ...]   agentic SFT (sharded, resumable)
    omniagent eval --dataset X.jsonl --output-dir D [...]   a benchmark, resumable and sharded; `eval merge D1 D2 ...`
    omniagent sweep / collect / export-sft   turn-budget sweep (sweep.png), best-of-N SFT trajectories, the SFT filter
    omniagent demo  [--model PATH] [--port 8080]    the Gradio demo on 127.0.0.1 (watch each turn, timeline, export)

`run` uses the JAX engine by default (`--model PATH`, an HF or converted JAX checkpoint); without
`--model` it builds the tiny preset with RANDOM weights (created once, cached on disk), which only
exercises the machinery. `--policy scripted|openai` swaps in the agent's other policies.

Every command checks its arguments, files and video before it loads a model; bad input exits 2 with
one `omniagent <command>: error: ...` line on stderr.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

TINY_SEED = 0


def cache_root() -> pathlib.Path:
    """Where the tiny model and compiled programs are kept: `$OMNIAGENT_CACHE` or ~/.cache/omniagent_jax."""
    return pathlib.Path(os.environ.get("OMNIAGENT_CACHE", pathlib.Path.home() / ".cache" / "omniagent_jax"))


def enable_compilation_cache() -> None:
    """Persists XLA compilations under the cache root, so a second run skips recompiling its shapes."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(cache_root() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def tiny_checkpoint() -> pathlib.Path:
    """The tiny random model as a JAX checkpoint, created on first use under the cache directory."""
    path = cache_root() / f"tiny-random-seed{TINY_SEED}"
    if not (path / "config.json").exists():
        import jax.numpy as jnp
        from flax import nnx

        from omniagent_jax.model import Thinker, config
        from omniagent_jax.model.jax_checkpoint import save_jax_checkpoint

        print(f"creating the tiny random model at {path} (first use)", file=sys.stderr)
        save_jax_checkpoint(Thinker(config.tiny(), dtype=jnp.float32, rngs=nnx.Rngs(TINY_SEED)), path)
    return path


def _engine_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine (JAX policy)")
    g.add_argument("--model", default=None, help="HF or converted JAX checkpoint directory (default: tiny random model)")
    g.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="parameter dtype (default: the checkpoint's)")
    g.add_argument("--page-size", type=int, default=16, help="KV page size in tokens")
    g.add_argument("--num-pages", type=int, default=2048, help="KV pages in the pool")
    g.add_argument("--max-batch", type=int, default=16, help="sequences decoded together")
    g.add_argument("--decode-steps", type=int, default=8, help="decode steps per dispatch (host work once per this many tokens)")
    g.add_argument("--no-compilation-cache", action="store_true", help="do not keep compiled programs under $OMNIAGENT_CACHE/xla")
    g.add_argument("--tensor-parallel", type=int, default=1, help="shard the engine over this many local devices (heads, MLP)")


def check_engine_args(args: argparse.Namespace) -> None:
    """The engine settings within the ranges the engine takes (UsageError otherwise)."""
    from omniagent_jax.agent.cli import UsageError

    # The page pool reserves page 0 as the null page.
    for flag, value, low in (("--page-size", args.page_size, 1), ("--num-pages", args.num_pages, 2),
                             ("--max-batch", args.max_batch, 1), ("--decode-steps", args.decode_steps, 1)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    tp = getattr(args, "tensor_parallel", 1)
    if tp != 1:
        import jax

        if not 1 <= tp <= jax.local_device_count():
            raise UsageError(f"--tensor-parallel must be in [1, {jax.local_device_count()}] (this process's devices), got {tp}")


def check_model_dir(path: str) -> None:
    """Cheap checks of a checkpoint directory, no tensor read: it exists; its config.json parses; its weight
    files' headers (or the JAX checkpoint's marker and metadata) are sound; its tokenizer and processor
    settings load and agree with the config on the special ids. UsageError naming the file otherwise."""
    from omniagent_jax.agent.cli import UsageError
    from omniagent_jax.model.loading import open_params
    from omniagent_jax.model.safetensors_io import CheckpointError
    from omniagent_jax.processing.processor import OmniProcessor
    from omniagent_jax.processing.qwen_bpe import TokenizerError

    try:
        config = open_params(path).config
        processor = OmniProcessor.from_pretrained(path)  # cached: the load reuses it
        config.check_special_ids(processor.special_ids, source=f"the tokenizer in {path}")
    except (CheckpointError, FileNotFoundError, TokenizerError, ValueError) as e:
        raise UsageError(f"--model {path}: {e}") from None


def load_jax_policy(args: argparse.Namespace, *, temperature: float, top_p: float, top_k: int, max_new_tokens: int):
    """The engine's policy on `--model` (or the tiny random model), after the engine settings and the
    model directory pass their cheap checks. UsageError for bad settings or a checkpoint that fails to load."""
    import jax.numpy as jnp

    from omniagent_jax.agent.cli import UsageError
    from omniagent_jax.engine import SamplingParams
    from omniagent_jax.engine.placement import engine_mesh
    from omniagent_jax.engine.policy import JaxPolicy
    from omniagent_jax.model.safetensors_io import CheckpointError

    check_engine_args(args)
    if args.model:
        check_model_dir(args.model)
    if not args.no_compilation_cache:
        enable_compilation_cache()
    path = args.model or tiny_checkpoint()
    sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, seed=args.seed)
    tp = getattr(args, "tensor_parallel", 1)
    try:
        policy = JaxPolicy.from_pretrained(
            path, dtype=getattr(jnp, args.dtype) if args.dtype else None, sampling=sampling,
            page_size=args.page_size, num_pages=args.num_pages, max_batch=args.max_batch,
            decode_steps=args.decode_steps, **({"mesh": engine_mesh(tp)} if tp > 1 else {}),
        )
    except CheckpointError as e:  # found while loading: a shape or key mismatch, a tensor cut short
        raise UsageError(f"--model {path}: {e}") from None
    label = str(path) if args.model else f"tiny preset with RANDOM WEIGHTS ({path}); pass --model for a real checkpoint"
    model = policy.engine.model
    print(f"model: {label} — {model.num_params():,} parameters, {model.dtype}", file=sys.stderr)
    return policy


def _cmd_run(args: argparse.Namespace) -> int:
    from omniagent_jax.agent.cli import run_command

    if args.policy is not None:
        return run_command(args)

    def load():
        policy = load_jax_policy(
            args, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_new_tokens=args.max_new_tokens
        )
        # The real prompt length (placeholders expanded) enforces --max-prompt-tokens as the reference does.
        return policy, policy.count_tokens

    return run_command(args, load_policy=load)


def _check_serve_args(args: argparse.Namespace) -> None:
    from omniagent_jax.agent.cli import UsageError, check_sampling_flags
    from omniagent_jax.processing.policy_contract import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in [0, 65535], got {args.port}")
    # Only these two sampling values are flags of serve; the rest come with each request.
    check_sampling_flags(temperature=DEFAULT_TEMPERATURE, top_p=DEFAULT_TOP_P, top_k=DEFAULT_TOP_K,
                         max_new_tokens=args.max_new_tokens, seed=0 if args.seed is None else args.seed)
    for flag, value in (("--max-body-mb", args.max_body_mb), ("--body-timeout", args.body_timeout)):
        if value is not None and not value > 0:
            raise UsageError(f"{flag} must be > 0, got {value}")
    if args.limit_concurrency is not None and args.limit_concurrency < 1:
        raise UsageError(f"--limit-concurrency must be >= 1, got {args.limit_concurrency}")


def _cmd_serve(args: argparse.Namespace) -> int:
    from omniagent_jax.agent.cli import UsageError, report_usage_error
    from omniagent_jax.processing.policy_contract import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P

    try:
        _check_serve_args(args)
        # Every request carries a seed (drawn when it names none): the policy's own default seed is never used.
        policy = load_jax_policy(argparse.Namespace(**{**vars(args), "seed": 0}), temperature=DEFAULT_TEMPERATURE,
                                 top_p=DEFAULT_TOP_P, top_k=DEFAULT_TOP_K, max_new_tokens=args.max_new_tokens)
    except UsageError as e:
        return report_usage_error("omniagent serve", e)
    from omniagent_jax.engine import server

    limits = {"max_body_bytes": server.MAX_BODY_BYTES if args.max_body_mb is None else int(args.max_body_mb * 2**20),
              "body_timeout_s": server.BODY_TIMEOUT_S if args.body_timeout is None else args.body_timeout}
    server.serve(policy, host=args.host, port=args.port, model_name=args.served_model_name, seed=args.seed,
                 limit_concurrency=args.limit_concurrency, **limits)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from omniagent_jax.agent.cli import add_run_arguments
    from omniagent_jax.processing.policy_contract import DEFAULT_MAX_NEW_TOKENS

    parser = argparse.ArgumentParser(prog="omniagent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one OTA episode on a video")
    add_run_arguments(run)
    _engine_arguments(run)
    run.set_defaults(func=_cmd_run)

    serve = sub.add_parser("serve", help="OpenAI-compatible chat completions over the JAX engine")
    _engine_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", default="omniagent")
    serve.add_argument("--seed", type=int, default=None,
                       help="makes the seeds drawn for requests that carry none a reproducible sequence (default: fresh "
                            "randomness); each response returns the seed it used. The API key, if any, is read from "
                            "$OMNIAGENT_SERVE_API_KEY, never from the command line")
    serve.add_argument(
        "--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="default per request (max_tokens overrides)"
    )
    serve.add_argument("--max-body-mb", type=float, default=None, help="largest request body in MB (413 beyond; default 64)")
    serve.add_argument("--body-timeout", type=float, default=None,
                       help="seconds a request body may stall before the request is dropped (408; default 30)")
    serve.add_argument("--limit-concurrency", type=int, default=None,
                       help="most connections at once; more get 503 (default: no limit)")
    serve.set_defaults(func=_cmd_serve)

    from omniagent_jax.eval.cli import add_eval_commands; add_eval_commands(sub, _engine_arguments, load_jax_policy)  # noqa: E702, I001, E501
    from omniagent_jax.train.cli import add_train_arguments

    add_train_arguments(sub)
    from omniagent_jax.demo.cli import add_demo_command; add_demo_command(sub, _engine_arguments, load_jax_policy)  # noqa: E702, I001
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
