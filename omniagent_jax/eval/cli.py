"""`omniagent eval | eval merge | sweep | collect | export-sft` (docs/protocol.md §11).

Each command takes `omniagent run`'s runtime flags (agent.cli.add_run_arguments: sampling, limits, budget,
seed, policy) and the engine flags (`--model` ...), with the run's own `--video/--question/--output` hidden.
The engine flags and the JAX policy loader are `omniagent_jax.policy_flags`'s, shared with run, serve and demo.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from omniagent_jax.agent.cli import UsageError, add_run_arguments, report_usage_error
from omniagent_jax.policy_flags import engine_arguments, load_jax_policy

_RUN_ONLY = ("--video", "--question", "--options", "--question-type", "--answer", "--output")


def _action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def steps_list(text: str) -> list[int]:
    """`--max-steps 6,12,22`: the sweep's budgets."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("no budgets given")
    return values


def add_eval_arguments(parser: argparse.ArgumentParser, *,
                       policies: tuple[str, ...] = ("scripted", "openai")) -> None:
    """The run flags, the engine flags and the eval flags on `parser`."""
    add_run_arguments(parser)
    for flag in _RUN_ONLY:  # questions come from --dataset
        action = _action(parser, flag)
        action.required, action.help = False, argparse.SUPPRESS
    _action(parser, "--policy").choices = policies
    _action(parser, "--policy").help = "default: the JAX engine on --model; " + (_action(parser, "--policy").help or "")
    engine_arguments(parser)
    g = parser.add_argument_group("evaluation")
    g.add_argument("--dataset", default=None, help="eval JSONL (video, question_type, question, options, answer, ...)")
    g.add_argument("--output-dir", default=None, help="where results.jsonl and the summaries go; rerun to resume")
    g.add_argument("--video-root", default=None, help="relative video paths are under this folder (default: the dataset's)")
    g.add_argument("--max-samples", type=int, default=None, help="the first N rows (default: all)")
    g.add_argument("--sample-indices", default=None, help="rows to play, e.g. 0,3,10-12 (0-based row numbers)")
    g.add_argument("--num-shards", type=int, default=1, help="split the samples over this many processes")
    g.add_argument("--shard-index", type=int, default=0, help="this process's shard (writes results.shard-K.jsonl)")
    g.add_argument("--distributed", action="store_true",
                   help="jax.distributed.initialize() and take the shard from the process index/count")
    g.add_argument("--retry-errors", action="store_true", help="on resume, play again the samples whose row is an error")
    g.add_argument("--force", action="store_true", help="resume even if the directory's run had another configuration")
    g.add_argument("--max-live", type=int, default=None,
                   help="episodes in flight (default: --max-batch for the engine, 8 per endpoint for openai)")
    g.add_argument("--workers", type=int, default=4, help="threads cutting media for the episodes")
    g.add_argument("--sample-timeout", type=float, default=None, help="seconds an episode may take; then it is an error row")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _jax_loader(args: argparse.Namespace) -> Callable:
    """The JAX policy on `--model` and its prompt-length counter, loaded when called."""
    def load():
        policy = load_jax_policy(args, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                 max_new_tokens=args.max_new_tokens)
        return policy, policy.count_tokens

    return load


def _cmd_eval(args: argparse.Namespace) -> int:
    from omniagent_jax.eval.command import eval_command

    return eval_command(args, load_policy=_jax_loader(args))


def _cmd_merge(args: argparse.Namespace) -> int:
    from omniagent_jax.eval.merge import MergeError, merge_dirs
    from omniagent_jax.eval.results_file import ResultsError
    from omniagent_jax.eval.summary import breakdowns, format_table

    try:
        if not args.merge_output_dir:
            raise UsageError("--output-dir is required")
        summary = merge_dirs(args.dirs, args.merge_output_dir, force=args.merge_force)
    except (UsageError, MergeError, ResultsError) as e:
        return report_usage_error("omniagent eval merge", e)
    import json
    import pathlib

    rows = [json.loads(line) for line in (pathlib.Path(args.merge_output_dir) / "results.jsonl").read_text().splitlines()]
    print(format_table(summary, breakdowns(rows)))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from omniagent_jax.eval.sweep import sweep_command

    return sweep_command(args, load_policy=_jax_loader(args))


def _cmd_collect(args: argparse.Namespace) -> int:
    from omniagent_jax.eval.collect import collect_command

    return collect_command(args, load_policy=_jax_loader(args))


def _cmd_export(args: argparse.Namespace) -> int:
    from omniagent_jax.eval.collect import export_command

    return export_command(args)


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    """Registers eval (with `eval merge`), sweep, collect and export-sft on the top-level subparsers."""
    ev = sub.add_parser("eval", help="evaluate a policy on a dataset (resumable, sharded); `eval merge D1 D2 ...`")
    add_eval_arguments(ev)
    ev.set_defaults(func=_cmd_eval)
    nested = ev.add_subparsers(dest="eval_command", metavar="{merge}")
    mg = nested.add_parser("merge", help="merge eval output directories (shards, hosts) into one")
    mg.add_argument("dirs", nargs="+", help="eval output directories")
    mg.add_argument("--output-dir", dest="merge_output_dir", default=None, help="where the merged files go")
    mg.add_argument("--force", dest="merge_force", action="store_true", help="merge runs of different configurations")
    mg.set_defaults(func=_cmd_merge)

    sw = sub.add_parser("sweep", help="eval at several step budgets; sweep.csv and sweep.png (test-time scaling)")
    add_eval_arguments(sw)
    _action(sw, "--max-steps").type = steps_list
    _action(sw, "--max-steps").default = [6, 12, 22, 32, 42, 52]
    _action(sw, "--max-steps").help = "comma-separated step budgets (default 6,12,22,32,42,52)"
    sw.set_defaults(func=_cmd_sweep)

    co = sub.add_parser("collect", help="best-of-N trajectories with a teacher policy, as SFT step logs")
    add_eval_arguments(co, policies=("scripted", "openai", "jax"))
    co.add_argument("--attempts", type=int, default=1,
                    help="attempts per sample, stopping at the first win (-1: options+1 for MCQ, else 5)")
    co.set_defaults(func=_cmd_collect)

    ex = sub.add_parser("export-sft", help="the reference's SFT filter over collected step logs")
    ex.add_argument("logs", nargs="+", help="step-log JSONL files (collect's steps.jsonl)")
    ex.add_argument("--out", required=True, help="the SFT JSONL to write")
    ex.add_argument("--base-path", default="", help="media paths are rebased under this folder")
    ex.add_argument("--strip-prefix", default=None, help="an absolute path prefix replaced by --base-path")
    ex.add_argument("--max-steps", type=int, default=50, help="keep won trajectories of at most this many steps")
    ex.set_defaults(func=_cmd_export)
