"""`omniagent train sft --config configs/sft/tiny.yaml key=value ...`.

Wire into the top-level CLI with `add_train_arguments(subparsers)` and dispatch
`args.func(args)`; or run `python -m omniagent_jax.train.cli sft ...` directly.
"""

from __future__ import annotations

import argparse
import logging
import sys

from omniagent_jax.train.config import ConfigError, load_config


def add_train_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds `train` with its `sft` sub-command to an existing sub-parser set."""
    train = subparsers.add_parser("train", help="training stages")
    stages = train.add_subparsers(dest="stage", required=True)
    sft = stages.add_parser("sft", help="agentic SFT on step logs")
    sft.add_argument("--config", help="YAML file (configs/sft/*.yaml)")
    sft.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    sft.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-5 data.batch_size=8")
    sft.set_defaults(func=run_sft)
    return train


def run_sft(args: argparse.Namespace) -> int:
    import yaml

    from omniagent_jax.train.config import resolved

    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump(resolved(cfg), sort_keys=False), end="")
        return 0
    from omniagent_jax.train.sft import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = train(cfg)
    print(f"done: {result.steps} steps, {result.bad_rows} bad rows skipped, output in {result.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omniagent")
    add_train_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
