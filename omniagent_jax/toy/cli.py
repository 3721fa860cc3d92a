"""The toy world's command line (docs/toy.md).

    python -m omniagent_jax.toy.cli generate --split test --count 50 --out data/toy   videos + test.jsonl, each checked
    python -m omniagent_jax.toy.cli score --rows data/toy/test.jsonl --policy expert   accuracy by type (JSON)
    python -m omniagent_jax.toy.cli tokenizer --rows data/toy/train.jsonl --out configs/toy/tokenizer   the toy BPE
    python -m omniagent_jax.toy.cli pipeline [key=value ...]   `make toy`: data -> expert -> SFT -> TAURA -> eval (§4)

The same commands are `omniagent toy generate|score|tokenizer|pipeline`.

Bad input exits 2 with one ``omniagent toy <command>: error: ...`` line.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

from omniagent_jax.agent.cli import UsageError, report_usage_error
from omniagent_jax.toy import splits, world


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omniagent toy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def add_toy_command(sub: argparse._SubParsersAction) -> None:
    """Registers `omniagent toy <command>` on the top-level subparsers."""
    toy = sub.add_parser("toy", help="the toy world: generate | score | tokenizer | pipeline (docs/toy.md)",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_commands(toy.add_subparsers(dest="command", required=True))
    toy.set_defaults(func=run)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The toy subcommands (their ``dest`` is ``command``)."""
    from omniagent_jax.toy.pipeline.config import add_pipeline_arguments

    gen = sub.add_parser("generate", help="write a split's videos and JSONL rows to a folder (resumable)")
    gen.add_argument("--split", required=True, choices=sorted(world.SPLITS))
    gen.add_argument("--count", type=int, required=True, help="number of tasks")
    gen.add_argument("--start", type=int, default=0, help="index of the first task (default 0)")
    gen.add_argument("--out", required=True, help="output folder (gets <split>.jsonl and videos/)")
    gen.add_argument("--no-verify", action="store_true", help="skip decoding each video to check its answer")
    score = sub.add_parser("score", help="play a scripted policy on a split's rows and print its accuracy")
    score.add_argument("--rows", required=True, help="a split's JSONL (videos relative to its folder)")
    score.add_argument("--policy", choices=sorted(splits.POLICIES), default="expert")
    score.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    score.add_argument("--output", default=None, help="also write the summary JSON here")
    tok = sub.add_parser("tokenizer", help="train the toy BPE on expert episodes of a split and report row lengths")
    tok.add_argument("--rows", required=True, help="a (train) split's JSONL")
    tok.add_argument("--limit", type=int, default=None, help="play only the first N rows")
    tok.add_argument("--out", required=True, help="folder for tokenizer.json / tokenizer_config.json")
    add_pipeline_arguments(sub.add_parser("pipeline", help="make toy: data -> expert -> SFT -> TAURA -> eval (resumable)"))


def check_args(args: argparse.Namespace) -> None:
    """UsageError for input that cannot work, before any work starts."""
    if args.command == "pipeline":
        return  # the pipeline checks its own config
    if args.command == "generate":
        if args.count < 1:
            raise UsageError(f"--count must be >= 1, got {args.count}")
        if args.start < 0 or args.start + args.count > 1_000_000:
            raise UsageError(f"--start/--count must stay within task indices [0, 1000000), got {args.start}+{args.count}")
        out = pathlib.Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
    else:
        if args.command == "tokenizer" and pathlib.Path(args.out).is_file():
            raise UsageError(f"--out {args.out} is a file, not a folder")
        if not pathlib.Path(args.rows).is_file():
            raise UsageError(f"--rows {args.rows}: no such file")
        if args.limit is not None and args.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {args.limit}")


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Runs a parsed toy command; returns the exit code."""
    prog = f"omniagent toy {args.command}"
    if args.command == "pipeline":  # imported here: the pipeline is the toy room's JAX code
        from omniagent_jax.toy.pipeline.__main__ import run_args

        return run_args(args)
    try:
        check_args(args)
    except UsageError as e:
        return report_usage_error(prog, e)
    if args.command == "generate":
        path = splits.write_split(args.out, args.split, args.count, start=args.start, verify=not args.no_verify)
        print(f"wrote {args.count} tasks to {path}")
        return 0
    try:
        if args.command == "tokenizer":
            return _tokenizer(args)
        summary = splits.score_policy(args.rows, args.policy, limit=args.limit)
    except ValueError as e:  # a broken row (DataError), an empty file, too small a corpus
        return report_usage_error(prog, e)
    text = json.dumps({"policy": args.policy, "rows": str(args.rows), **summary}, indent=2)
    if args.output:
        pathlib.Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    from omniagent_jax.processing.processor import OmniProcessor
    from omniagent_jax.processing.tokenizer import save_pretrained_tokenizer
    from omniagent_jax.toy import tokenizer

    results = [r for _, r in splits.play(args.rows, "expert", limit=args.limit)]
    tok = tokenizer.train_tokenizer(tokenizer.corpus(results))
    save_pretrained_tokenizer(tok, args.out)
    lengths = tokenizer.row_lengths(OmniProcessor(tok), results)
    system = len(tok(results[0].steps[0].raw_input[0]["content"][0]["text"])["input_ids"])
    print(json.dumps({"tokenizer": str(args.out), "vocab": len(tok), "episodes": len(results), "system_prompt_tokens": system,
                      "row_tokens_max": lengths.max, "row_tokens_mean": round(lengths.mean, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
