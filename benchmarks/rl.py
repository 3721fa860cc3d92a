"""RL steps on the tiny model (CPU, fp32): the toy bandit of configs/rl/tiny.yaml (train/rl/bandit.py).

(a) seconds per RL step split into rollout (episodes through the driver on the paged engine), update
    (rows → accumulated optimizer step) and weight sync (`engine.update_weights`), after the first step
    (compiles);
(b) prompt tokens the engine prefilled (prefix pages reused within an episode and across a group) vs
    re-encoding every turn of every rollout, as the reference's rollouts do (goal <= 1/5).

    .venv/bin/python benchmarks/rl.py [--steps 6] [--n 8] [--prompts 4]
"""

from __future__ import annotations

import argparse
import logging
import tempfile

import numpy as np

from omniagent_jax.train.rl.config import load_rl_config
from omniagent_jax.train.rl.trainer import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--n", type=int, default=8, help="rollouts per prompt")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--bandit-dir", default="runs/rl_tiny_task", help="the toy task (built there if missing)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as out:
        cfg = load_rl_config("configs/rl/tiny.yaml", [
            f"bandit_dir={args.bandit_dir}", f"output_dir={out}", f"steps={args.steps}", f"rollout.n={args.n}",
            f"rollout.prompts={args.prompts}", "progress=false", "checkpoint.every=0"])
        result = train(cfg)
    steps = [result.history[k] for k in sorted(result.history)]
    later = steps[1:] or steps
    split = {k: float(np.mean([m[f"{k}_seconds"] for m in later])) for k in ("rollout", "update", "sync")}
    prompt = sum(m["prompt_tokens"] for m in steps)
    prefilled = sum(m["prefilled_tokens"] for m in steps)
    episodes = args.n * args.prompts
    print(f"RL steps: {args.steps} x {args.prompts} prompts x {args.n} rollouts ({episodes} episodes, "
          f"{np.mean([m['turns_per_episode'] for m in steps]):.2f} turns each)")
    print(f"first step (compiles): rollout {steps[0]['rollout_seconds']:.2f} s, update {steps[0]['update_seconds']:.2f} s")
    total = sum(split.values())
    print(f"per step after it: {total:.2f} s = rollout {split['rollout']:.2f} + update {split['update']:.2f} "
          f"+ weight sync {split['sync']:.3f}")
    print(f"prompt tokens: {int(prompt)} if every turn re-encoded its history, {int(prefilled)} prefilled "
          f"({prefilled / max(prompt, 1):.3f}; goal <= 0.2), {int(sum(m['reused_tokens'] for m in steps))} reused")
    print(f"reward by step: {[round(m['reward/mean'], 3) for m in steps]}")


if __name__ == "__main__":
    main()
