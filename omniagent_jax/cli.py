"""`omniagent` command line.

    omniagent run   --video V --question Q [...]   one OTA episode; prints each turn, writes latest_run.json
    omniagent serve --model PATH [--port 8000]      OpenAI-compatible /v1/chat/completions over the JAX engine
    omniagent train sft --config configs/sft/tiny.yaml [key=value ...]   agentic SFT (sharded, resumable)
    omniagent eval --dataset X.jsonl --output-dir D [...]   a benchmark, resumable and sharded; `eval merge D1 D2 ...`
    omniagent sweep / collect / export-sft   turn-budget sweep (sweep.png), best-of-N SFT trajectories, the SFT filter
    omniagent demo  [--model PATH] [--port 8080]    the Gradio demo on 127.0.0.1 (watch each turn, timeline, export)
    omniagent toy   generate|score|tokenizer|pipeline   the CPU-scale toy world and `make toy` (docs/toy.md)

`run` uses the JAX engine by default (`--model PATH`, an HF or converted JAX checkpoint); without
`--model` it builds the tiny preset with RANDOM weights (created once, cached on disk), which only
exercises the machinery. `--policy scripted|openai` swaps in the agent's other policies.

Every command checks its arguments, files and video before it loads a model; bad input exits 2 with
one `omniagent <command>: error: ...` line on stderr.
"""

from __future__ import annotations

import argparse
import sys

from omniagent_jax.policy_flags import TINY_SEED, engine_arguments, load_jax_policy

__all__ = ["TINY_SEED", "build_parser", "main"]

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
    engine_arguments(run)
    run.set_defaults(func=_cmd_run)

    serve = sub.add_parser("serve", help="OpenAI-compatible chat completions over the JAX engine")
    engine_arguments(serve)
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

    from omniagent_jax.demo.cli import add_demo_command
    from omniagent_jax.eval.cli import add_eval_commands
    from omniagent_jax.toy.cli import add_toy_command
    from omniagent_jax.train.cli import add_train_arguments

    add_eval_commands(sub)
    add_train_arguments(sub)
    add_demo_command(sub)
    add_toy_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
