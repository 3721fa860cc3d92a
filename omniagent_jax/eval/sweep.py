"""`omniagent sweep`: eval once per step budget (each in `<output-dir>/steps-<B>`, resumed like any eval),
then `sweep.csv` and `sweep.png` — accuracy and mean turns used against the budget, the paper's
test-time-scaling figure (docs/protocol.md §11)."""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from omniagent_jax.agent.cli import EXIT_OK, UsageError, report_usage_error
from omniagent_jax.agent.episode_card import EpisodeCardError, resolve_episode_settings
from omniagent_jax.eval.summary import write_csv

SWEEP_FIELDS = ("max_steps", "num_samples", "num_success", "num_error", "accuracy_reward_gt_0_5", "avg_reward", "avg_steps",
                "samples_per_minute", "output_dir")


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: pathlib.Path, *, title: str = "") -> None:
    """Accuracy (left axis) and mean turns used (right axis) against the step budget, headless (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [r["max_steps"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.plot(budgets, [100 * r["accuracy_reward_gt_0_5"] for r in rows], "o-", color="tab:blue", lw=2, label="accuracy")
    ax.set_xlabel("max steps (turn budget)")
    ax.set_ylabel("accuracy (%)", color="tab:blue")
    ax.set_xticks(budgets)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(budgets, [r["avg_steps"] for r in rows], "s--", color="tab:orange", lw=2, label="mean turns used")
    twin.set_ylabel("mean turns used", color="tab:orange")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, ["accuracy", "mean turns used"], loc="lower right")
    ax.set_title(title or "test-time scaling")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def sweep_command(args: argparse.Namespace, *, load_policy=None, policy_factory=None) -> int:
    """Runs eval per budget, reusing finished runs, and writes sweep.csv / sweep.png. `policy_factory()`
    (tests) gives each budget a fresh policy; otherwise a loaded policy is shared by the budgets."""
    from omniagent_jax.eval.command import cli_policy, eval_command

    prog = "omniagent sweep"
    budgets = list(args.max_steps)
    if not args.output_dir:
        return report_usage_error(prog, "--output-dir is required")
    if len(set(budgets)) != len(budgets) or any(b < 1 for b in budgets):
        return report_usage_error(prog, f"--max-steps budgets must be distinct and >= 1, got {budgets}")
    try:  # the policy is loaded from `args` (the budgets' copies resolve their own): its sampling flags too
        resolve_episode_settings(args)
    except EpisodeCardError as e:
        return report_usage_error(prog, e)
    root = pathlib.Path(args.output_dir)
    shared, counter = None, None
    rows = []
    for budget in budgets:
        sub = argparse.Namespace(**{**vars(args), "max_steps": budget, "output_dir": str(root / f"steps-{budget}")})
        policy = policy_factory() if policy_factory is not None else shared
        if policy is None and args.policy != "scripted" and policy_factory is None:
            try:  # loaded once, after the first budget's arguments pass eval's checks
                from omniagent_jax.eval.command import plan

                plan(sub, token_limit=args.policy is None)
                shared, counter, _ = cli_policy(sub, [], load_policy)
                policy = shared
            except UsageError as e:
                return report_usage_error(prog, e)
        code = eval_command(sub, policy, token_counter=counter if policy is shared else None)
        summary_path = root / f"steps-{budget}" / "summary.json"
        if code == 2 or not summary_path.exists():
            return code
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        rows.append({"max_steps": budget, **{k: summary.get(k) for k in SWEEP_FIELDS[1:-1]},
                     "output_dir": str(root / f"steps-{budget}")})
    rows.sort(key=lambda r: r["max_steps"])
    write_csv(root / "sweep.csv", rows, SWEEP_FIELDS)
    plot_sweep(rows, root / "sweep.png", title=pathlib.Path(args.dataset).stem)
    print(f"sweep: {len(rows)} budgets -> {root / 'sweep.csv'}, {root / 'sweep.png'}")
    for r in rows:
        print(f"  max_steps={r['max_steps']:>3}  accuracy={r['accuracy_reward_gt_0_5']:.3f}  mean turns={r['avg_steps']:.2f}")
    return EXIT_OK  # error rows are counted in sweep.csv, as eval counts them in its summary
