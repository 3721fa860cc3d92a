"""`omniagent eval`: check everything cheap, resume what the output directory holds, load the policy, play
the pending samples, write the summaries (docs/protocol.md §11). Bad input exits 2 with one line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from omniagent_jax.agent.cli import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    build_config,
    build_policy,
    check_sampling_args,
    read_scripted_outputs,
    report_usage_error,
)
from omniagent_jax.agent.environment import EnvConfig, TokenCounter
from omniagent_jax.agent.policy import ConcurrentPolicy, Policy, ScriptedPolicy
from omniagent_jax.agent.rewards import Judge
from omniagent_jax.eval import merge, metadata, results_file
from omniagent_jax.eval.dataset import EvalItem, SelectionError, load_dataset, parse_indices, select
from omniagent_jax.eval.run import gpu_label, metadata_name, pending, play, print_line, results_name
from omniagent_jax.eval.summary import breakdowns, format_table

# What `load_policy` returns: the policy and its prompt-length counter (None: no token limit).
PolicyLoader = Callable[[], tuple[Policy | ConcurrentPolicy, TokenCounter | None]]


@dataclasses.dataclass
class Plan:
    """An eval run, checked: its samples, where its rows go, what it resumes from."""

    args: argparse.Namespace
    out_dir: pathlib.Path
    shard: tuple[int, int]
    selection: list[EvalItem]  # every shard's samples
    items: list[EvalItem]  # this shard's
    todo: list[EvalItem]
    done: dict[int, dict[str, Any]]
    config: EnvConfig
    meta: dict[str, Any]
    judge: Judge | None = None

    @property
    def results_path(self) -> pathlib.Path:
        return self.out_dir / results_name(self.shard)


def policy_kind(args: argparse.Namespace) -> str:
    return args.policy or "jax"


def resolve_shard(args: argparse.Namespace) -> tuple[int, int]:
    """(`--shard-index`, `--num-shards`), or this process's place in a `jax.distributed` job with `--distributed`."""
    if getattr(args, "distributed", False):
        import jax

        jax.distributed.initialize()
        return jax.process_index(), jax.process_count()
    return args.shard_index, args.num_shards


def runtime_config(args: argparse.Namespace, config: EnvConfig) -> dict[str, Any]:
    """The reference's `runtime_config` block (its names), plus our settings."""
    return {
        "policy": policy_kind(args), "dynamic_step_enabled": config.budget.dynamic, "tito_enabled": False,
        "max_steps": config.budget.max_steps, "min_max_steps": config.budget.min_max_steps,
        "forced_answer": config.budget.forced_answer, "max_frames": config.limits.max_frames,
        "max_audio_seconds": config.limits.max_audio, "max_clip_seconds": config.limits.max_clip, "mode": "OmniAgent",
        "strict_confidence": config.strict_confidence, "mcq_mode": config.mcq_mode,
        "max_prompt_tokens": config.max_prompt_tokens, "temperature": args.temperature, "top_p": args.top_p,
        "top_k": args.top_k, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
    }


def check_eval_args(args: argparse.Namespace) -> None:
    """The eval-only flags (the run flags are checked by agent.cli's helpers)."""
    if args.video is not None or args.question is not None:
        raise UsageError("eval reads its questions from --dataset; --video/--question are for `omniagent run`")
    if not args.dataset:
        raise UsageError("--dataset is required")
    if not args.output_dir:
        raise UsageError("--output-dir is required")
    if pathlib.Path(args.output_dir).is_file():
        raise UsageError(f"--output-dir {args.output_dir} is a file")
    if args.num_shards < 1:
        raise UsageError(f"--num-shards must be >= 1, got {args.num_shards}")
    if args.max_live is not None and args.max_live < 1:
        raise UsageError(f"--max-live must be >= 1, got {args.max_live}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    if args.sample_timeout is not None and not args.sample_timeout > 0:
        raise UsageError(f"--sample-timeout must be > 0 seconds, got {args.sample_timeout}")
    if args.policy != "scripted" and args.scripted_outputs:
        raise UsageError("--scripted-outputs needs --policy scripted")


def plan(args: argparse.Namespace, *, token_limit: bool) -> Plan:
    """Checks the arguments, the dataset and the output directory; UsageError on the first problem."""
    check_eval_args(args)
    config = build_config(args, token_limit=token_limit)
    check_sampling_args(args)
    try:
        items = load_dataset(args.dataset, args.video_root)
        indices = parse_indices(args.sample_indices)
        shard = resolve_shard(args)
        selection = select(items, max_samples=args.max_samples, sample_indices=indices)
        mine = select(items, max_samples=args.max_samples, sample_indices=indices, num_shards=shard[1], shard_index=shard[0])
    except SelectionError as e:
        raise UsageError(str(e)) from None
    out_dir = pathlib.Path(args.output_dir)
    meta_path = out_dir / metadata_name(shard)
    try:
        previous = metadata.read_metadata(meta_path)
        done = results_file.read_rows(out_dir / results_name(shard))
    except (metadata.ResumeError, results_file.ResultsError) as e:
        raise UsageError(str(e)) from None
    todo = pending(mine, done, retry_errors=args.retry_errors)
    meta = metadata.build_metadata(vars(args), dataset=args.dataset, model_path=getattr(args, "model", None),
                                   policy=policy_kind(args), num_selected=len(mine), num_resumed=len(mine) - len(todo),
                                   shard=shard)
    if not args.force:
        try:
            metadata.check_resume(previous, meta)
        except metadata.ResumeError as e:
            raise UsageError(str(e)) from None
    return Plan(args, out_dir, shard, selection, mine, todo, done, config, meta, build_judge(args))


def build_judge(args: argparse.Namespace) -> Judge | None:
    """The LLM judge of FF answers with `--judge` (configured by the environment or .env), else None."""
    if not args.judge:
        return None
    from omniagent_jax.agent.judge import LLMJudge

    judge = LLMJudge.from_env()
    if judge is None:
        raise UsageError("--judge needs OMNIAGENT_JUDGE_URL and OMNIAGENT_JUDGE_MODEL (environment or .env)")
    return judge


def scripted_policy(path: str, keys: Sequence[str]) -> ScriptedPolicy:
    """`--scripted-outputs` for many episodes: a JSON object {sample index (or "index.attempt"): [turns]}, or
    one list (JSON or a turn per line) that every episode replays from its start."""
    text = pathlib.Path(path).read_text(encoding="utf-8") if pathlib.Path(path).is_file() else ""
    if text.lstrip().startswith("{"):
        try:
            table = json.loads(text)
        except ValueError as e:
            raise UsageError(f"--scripted-outputs {path} is not a JSON object: {e}") from None
        if not all(isinstance(v, list) and all(isinstance(o, str) for o in v) for v in table.values()):
            raise UsageError(f"--scripted-outputs {path}: every value must be a list of strings")
        scripts = {k: table.get(k, table.get(k.split(".")[0], [])) for k in keys}
        return ScriptedPolicy(scripts)
    outputs = read_scripted_outputs(path)
    return ScriptedPolicy({k: outputs for k in keys})


def cli_policy(args: argparse.Namespace, keys: Sequence[str], load_policy: PolicyLoader | None
               ) -> tuple[Policy | ConcurrentPolicy, TokenCounter | None, float]:
    """The policy the flags name (scripted, openai, or the JAX engine through `load_policy`) and its load time."""
    t0 = time.perf_counter()
    if args.policy == "scripted":
        if not args.scripted_outputs:
            raise UsageError("--policy scripted needs --scripted-outputs FILE")
        return scripted_policy(args.scripted_outputs, keys), None, 0.0
    if args.policy == "openai":
        return build_policy(args)[0], None, time.perf_counter() - t0
    if load_policy is None:
        raise UsageError("no policy: pass --model PATH, --policy openai --openai-url URL or --policy scripted")
    policy, counter = load_policy()
    return policy, counter, time.perf_counter() - t0


def default_max_live(args: argparse.Namespace, policy: object) -> int:
    if args.max_live is not None:
        return args.max_live
    if args.policy == "openai":
        return 8 * max(1, len(getattr(policy, "clients", [None])))
    return getattr(args, "max_batch", None) or 8


def eval_command(args: argparse.Namespace, policy: Policy | ConcurrentPolicy | None = None, *,
                 load_policy: PolicyLoader | None = None, token_counter: TokenCounter | None = None,
                 out: TextIO | None = None, media_opener=None) -> int:
    """Runs `omniagent eval`; returns the exit code. `policy` (with its `token_counter`) overrides the flags
    (tests, callers that own one); `load_policy` builds the JAX policy, called once every argument is checked."""
    prog = "omniagent eval"
    try:
        jax_loaded = load_policy is not None and policy is None and args.policy is None
        p = plan(args, token_limit=jax_loaded or token_counter is not None)
        p.out_dir.mkdir(parents=True, exist_ok=True)
        keys = [str(item.index) for item in p.todo]
        load_seconds = 0.0
        counter = token_counter
        if policy is None and p.todo:
            policy, counter, load_seconds = cli_policy(args, keys, load_policy)
    except UsageError as e:
        return report_usage_error(prog, e)
    metadata.write_json_atomic(p.out_dir / metadata_name(p.shard), p.meta)
    resumed = len(p.items) - len(p.todo)
    print_line(out, f"eval: {len(p.items)} samples (shard {p.shard[0]}/{p.shard[1]}), {resumed} already done, "
                    f"{len(p.todo)} to play -> {p.results_path}")
    run = {"model_path": getattr(args, "model", None), "gpu_id": gpu_label(), "shard_index": p.shard[0],
           "model_load_seconds": load_seconds, "runtime_config": runtime_config(args, p.config),
           "sample_timeout": args.sample_timeout}
    played = None
    if p.todo:
        played = play(p.todo, policy, config=p.config, run_seed=args.seed, results_path=p.results_path, run=run,
                      judge=p.judge, token_counter=counter, max_live=default_max_live(args, policy), workers=args.workers,
                      sample_timeout=args.sample_timeout, progress=args.progress, media_opener=media_opener)
    rows = results_file.compact(p.results_path)
    mine = [rows[i.index] for i in p.items if i.index in rows]
    extra = merge.summary_extra(args, p, played)
    summary = merge.write_shard_or_run_summary(p, mine, extra)
    groups = breakdowns(mine)
    print_line(out, format_table(summary, groups))
    if played is not None:
        print_line(out, f"{len(played.rows)} samples in {played.wall_seconds:.1f}s ({played.samples_per_minute:.1f}/min); "
                        f"{summary['num_error']} errors; outputs in {p.out_dir}")
    return EXIT_OK if summary["num_samples"] == len(p.items) else EXIT_FAILED
