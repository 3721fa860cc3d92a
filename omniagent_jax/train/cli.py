"""`omniagent train sft --config configs/sft/tiny.yaml key=value ...` (and `train rl`: train/rl/cli.py).

Wire into the top-level CLI with `add_train_arguments(subparsers)` and dispatch
`args.func(args)`; or run `python -m omniagent_jax.train.cli sft ...` directly.

Before it prints (`--dry-run`) or trains, the config is checked as the run would read it: values in
range, the model a known preset or a readable config, the `init` checkpoint sound and of that config,
the train file present with its first rows parsing. A problem exits 2 with one line naming it.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from omniagent_jax.train.config import ConfigError, DataConfig, SFTConfig, load_config
from omniagent_jax.train.model_check import check_model as _check_model

PROG = "omniagent train sft"
# Rows of the train file parsed before a run (the run itself skips, and counts, bad rows later on).
ROWS_CHECKED = 5


def add_train_arguments(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds `train` with its `sft` sub-command to an existing sub-parser set."""
    train = subparsers.add_parser("train", help="training stages")
    stages = train.add_subparsers(dest="stage", required=True)
    sft = stages.add_parser("sft", help="agentic SFT on step logs")
    sft.add_argument("--config", help="YAML file (configs/sft/*.yaml)")
    sft.add_argument("--dry-run", action="store_true", help="check the config and its inputs, print it resolved, and exit")
    sft.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-5 data.batch_size=8")
    sft.set_defaults(func=run_sft)
    from omniagent_jax.train.rl.cli import add_rl_command

    add_rl_command(stages)
    return train


def _check_data(data: DataConfig) -> None:
    from omniagent_jax.train.sft_data import SampleError, parse_line

    if not data.train_file.strip():
        raise ConfigError("data.train_file is not set")
    path = Path(data.train_file)
    if not path.is_file():
        raise ConfigError(f"data.train_file {path} " + ("is not a file" if path.exists() else "not found"))
    if not Path(data.data_root).is_dir():
        raise ConfigError(f"data.data_root {data.data_root} is not a directory")
    try:
        with open(path, encoding="utf-8") as f:
            first = list(itertools.islice(((n, line) for n, line in enumerate(f, 1) if line.strip()), ROWS_CHECKED))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"data.train_file {path}: cannot read it ({e})") from None
    if not first:
        raise ConfigError(f"data.train_file {path} holds no rows")
    for lineno, line in first:
        try:
            parse_line(line, f"{path}:{lineno}")
        except SampleError as e:
            raise ConfigError(f"data.train_file {e}") from None


def check_run_inputs(cfg: SFTConfig) -> None:
    """What a run reads before its first step, checked as the run reads it but without loading anything:
    the model config, the `init` checkpoint's config and headers, the output directory, the train file and
    its first `ROWS_CHECKED` rows. ConfigError naming the key and file."""
    _check_model(cfg)
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file")
    _check_data(cfg.data)


def run_sft(args: argparse.Namespace) -> int:
    from omniagent_jax.train.config import resolved, run_config_command

    def run(cfg: SFTConfig) -> str:
        from omniagent_jax.train.sft import train

        result = train(cfg)
        return f"done: {result.steps} steps, {result.bad_rows} bad rows skipped, output in {result.output_dir}"

    return run_config_command(args, PROG, load=load_config, check=check_run_inputs, resolve=resolved, run=run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omniagent")
    add_train_arguments(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
