"""`make toy-full` (docs/toy.md §5): `make toy`, then the GRPO ablation and more seeds per RL variant, random
weights and the expert on the same test split, the TAURA agent's test-time-scaling sweep, and the results
table written into ``benchmarks/RESULTS.md`` and the README. Every run is resumable like `make toy`'s stages.

    python -m omniagent_jax.toy.pipeline.full [--config configs/toy/pipeline.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import pathlib
import shutil
import sys

from omniagent_jax.agent.cli import report_usage_error
from omniagent_jax.model.config import REPO_CONFIGS
from omniagent_jax.policy_flags import SHIPPED_AGENT
from omniagent_jax.toy import splits
from omniagent_jax.toy.pipeline import report
from omniagent_jax.toy.pipeline.config import PipelineConfig, PipelineError, add_pipeline_arguments, load_pipeline_config
from omniagent_jax.toy.pipeline.stages import check_exit, log, run_omniagent, run_pipeline, stage_eval, stage_init, stage_rl

PROG = "omniagent toy full"
REPO = REPO_CONFIGS.parent
GRPO_CONFIG = REPO_CONFIGS / "toy" / "grpo.yaml"
SEEDS = (0, 1, 2)
SWEEP_BUDGETS = (2, 3, 4, 5, 6)
RANDOM_MAX_NEW_TOKENS = 48  # random weights never stop on their own; their JSON never parses at any length


def rl_runs(cfg: PipelineConfig, rows: dict[str, pathlib.Path]) -> dict[str, list[dict[str, float]]]:
    """TAURA and GRPO from the SFT checkpoint, one run per seed, each evaluated on the test split."""
    sft = cfg.root / "sft" / "export_jax"
    out: dict[str, list[dict[str, float]]] = {"taura": [], "grpo": []}
    for variant, path in (("taura", cfg.rl_config), ("grpo", str(GRPO_CONFIG))):
        for seed in SEEDS:
            name = variant if seed == cfg.seed and variant == "taura" else f"{variant}_seed{seed}"
            seeded = dataclasses.replace(cfg, rl=(*cfg.rl, f"seed={seed}"))
            export = stage_rl(seeded, sft, rows["train"], name, path)
            stage_eval(cfg, export, rows["test"], name)
            out[variant].append(report.eval_metrics(cfg.root / f"eval_{name}"))
    return out


def random_metrics(cfg: PipelineConfig, test_rows: pathlib.Path) -> dict[str, float]:
    """The toy thinker at its random init (`make toy`'s init stage), evaluated like the trained agents."""
    init = stage_init(cfg)
    short = dataclasses.replace(cfg, eval_max_new_tokens=RANDOM_MAX_NEW_TOKENS)
    stage_eval(short, init, test_rows, "random")
    return report.eval_metrics(cfg.root / "eval_random")


def sweep(cfg: PipelineConfig, model: pathlib.Path, test_rows: pathlib.Path) -> list[dict[str, str]]:
    """`omniagent sweep` of ``model`` over fixed step budgets (the toy episode from its card); its `sweep.csv` rows."""
    out = cfg.root / "sweep_taura"
    check_exit(run_omniagent(["sweep", "--model", str(model), "--dataset", str(test_rows), "--output-dir", str(out),
                       "--max-steps", ",".join(map(str, SWEEP_BUDGETS)), "--fixed-steps", "--seed", str(cfg.seed),
                       "--max-batch", str(cfg.eval_max_live), "--no-progress", "--no-compilation-cache"]), "sweep")
    with open(out / "sweep.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def ship_agent(model: pathlib.Path, dst: pathlib.Path = SHIPPED_AGENT) -> pathlib.Path:
    """The agent as `make run` ships it: safetensors + config + toy tokenizer + episode card (loads with
    `Thinker.from_pretrained`)."""
    from omniagent_jax.model.convert import jax_to_hf

    return jax_to_hf(model, dst, overwrite=True, progress=False)


def run_full(cfg: PipelineConfig, *, results_md: pathlib.Path = REPO / "benchmarks" / "RESULTS.md") -> str:
    """Every run, then the table (also returned) written into ``results_md`` with the sweep plot beside it, and the
TAURA agent (seed ``cfg.seed``) shipped to ``assets/toy_agent``."""
    run_pipeline(cfg)
    rows = {split: splits.rows_path(cfg.root / "data", split) for split in ("train", "test")}
    rl = rl_runs(cfg, rows)
    log("expert and random weights on the test split")
    expert = report.scripted_metrics(splits.score_policy(rows["test"], "expert", progress=False))
    table = report.results_table([
        ("random weights", [random_metrics(cfg, rows["test"])]),
        ("SFT", [report.eval_metrics(cfg.root / "eval_sft")]),
        ("SFT + GRPO", rl["grpo"]),
        ("SFT + TAURA", rl["taura"]),
        ("scripted expert", [expert]),
    ])
    sweep_rows = sweep(cfg, cfg.root / "taura" / "export_jax", rows["test"])
    shutil.copyfile(cfg.root / "sweep_taura" / "sweep.png", results_md.parent / "toy_sweep.png")
    budgets = " · ".join(f"{r['max_steps']} steps: {100 * float(r['accuracy_reward_gt_0_5']):.0f} % "
                         f"({float(r['avg_steps']):.2f} turns)" for r in sweep_rows)
    body = (f"### Toy world (`make toy-full`: {cfg.test_tasks} test tasks, {cfg.train_tasks} train tasks; "
            f"± is half the range over seeds {', '.join(map(str, SEEDS))})\n\n{table}\n\n"
            f"TAURA agent (seed {cfg.seed}) by step budget — {budgets}\n\n![toy sweep](toy_sweep.png)\n")
    report.write_section(results_md, body)
    ship_agent(cfg.root / "taura" / "export_jax")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omniagent_jax.toy.pipeline.full", description=__doc__)
    add_pipeline_arguments(parser)
    args = parser.parse_args(argv)
    try:
        table = run_full(load_pipeline_config(args.config, args.overrides))
    except PipelineError as e:
        return report_usage_error(PROG, e)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
