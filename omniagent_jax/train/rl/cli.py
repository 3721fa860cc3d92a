"""`omniagent train rl --config configs/rl/taura.yaml [key=value ...]` (docs/training.md §10.6).

Before it prints (`--dry-run`) or trains, the config is checked as the run would read it: values in range,
the model a known preset or a readable config, the `init` checkpoint sound, the RL file present with its
first rows parsing (or `bandit_dir` set: the toy task is built by the run). A problem exits 2 with one line.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from omniagent_jax.train.config import ConfigError
from omniagent_jax.train.rl.config import RLConfig, load_rl_config, resolved

PROG = "omniagent train rl"
ROWS_CHECKED = 5


def add_rl_command(stages: argparse._SubParsersAction) -> argparse.ArgumentParser:
    rl = stages.add_parser("rl", help="agentic RL (GRPO with TAURA) on the episode driver and the paged engine")
    rl.add_argument("--config", help="YAML file (configs/rl/*.yaml)")
    rl.add_argument("--dry-run", action="store_true", help="check the config and its inputs, print it resolved, and exit")
    rl.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algo.taura=false rollout.n=4")
    rl.set_defaults(func=run_rl)
    return rl


def check_rl_inputs(cfg: RLConfig) -> None:
    """What the run reads first, checked without loading anything; ConfigError naming the key."""
    from omniagent_jax.agent.data import DataError, sample_from_row
    from omniagent_jax.train.model_check import check_model

    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file")
    if cfg.bandit_dir:
        if Path(cfg.bandit_dir).exists() and not Path(cfg.bandit_dir).is_dir():
            raise ConfigError(f"bandit_dir {cfg.bandit_dir} is a file")
        return  # model, init and data come from the task the run builds
    check_model(cfg.model_setup())
    if cfg.env.system_prompt_file and not Path(cfg.env.system_prompt_file).is_file():
        raise ConfigError(f"env.system_prompt_file {cfg.env.system_prompt_file} not found")
    path = Path(cfg.data.train_file)
    if not cfg.data.train_file.strip():
        raise ConfigError("data.train_file is not set")
    if not path.is_file():
        raise ConfigError(f"data.train_file {path} " + ("is not a file" if path.exists() else "not found"))
    if not Path(cfg.data.data_root).is_dir():
        raise ConfigError(f"data.data_root {cfg.data.data_root} is not a directory")
    with open(path, encoding="utf-8") as f:
        first = list(itertools.islice(((n, line) for n, line in enumerate(f, 1) if line.strip()), ROWS_CHECKED))
    if not first:
        raise ConfigError(f"data.train_file {path} holds no rows")
    for lineno, line in first:
        try:
            sample_from_row(json.loads(line))
        except (ValueError, DataError) as e:
            raise ConfigError(f"data.train_file {path}:{lineno}: {e}") from None


def run_rl(args: argparse.Namespace) -> int:
    from omniagent_jax.train.config import run_config_command

    def run(cfg: RLConfig) -> str:
        from omniagent_jax.train.rl.trainer import train

        result = train(cfg)
        last = result.history[max(result.history)] if result.history else {}
        return (f"done: {result.steps} steps, {result.bad_rows} bad rows skipped, last reward "
                f"{last.get('reward/mean', float('nan')):.3f}, output in {result.output_dir}")

    return run_config_command(args, PROG, load=load_rl_config, check=check_rl_inputs, resolve=resolved, run=run)
