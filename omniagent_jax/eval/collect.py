"""`omniagent collect` (the reference's parallel_evaluate_gemini.py) and `omniagent export-sft` (its
filter_and_export_sft.py), docs/protocol.md §11.

collect plays up to N attempts per sample with a teacher policy and stops a sample at its first win
(best-of-N; `--attempts -1`: options+1 for MCQ, else 5). Attempt a of sample i is the episode seeded
`episode_seed(seed, i, a - 1)`; its step log lines (the reference's SFT layout, `question_id`
`v_<i>_0_<a>`, a `traj_id` derived from (seed, i, a)) go to `steps.jsonl` — every attempt's, won or not,
as the reference — in one write per sample, followed by the sample's `results.jsonl` row (its best
attempt, with `attempts` and `win`). On resume, step lines of samples without a row (a kill between the
two writes) are dropped and the sample is played again. export-sft applies the reference's filter.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from omniagent_jax.agent.cli import EXIT_FAILED, EXIT_OK, UsageError, report_usage_error
from omniagent_jax.agent.driver import Episode, EpisodeDriver
from omniagent_jax.agent.environment import VideoEnvironment
from omniagent_jax.agent.episode import END_CANCELLED, END_ERROR, EpisodeResult
from omniagent_jax.agent.records import export_sft, step_log_lines
from omniagent_jax.agent.rewards import major_type
from omniagent_jax.eval import metadata, results_file
from omniagent_jax.eval.dataset import EvalItem
from omniagent_jax.eval.rows import result_row
from omniagent_jax.processing.policy_contract import episode_seed

_TRAJ_NAMESPACE = uuid.UUID("6f6d6e69-6167-656e-742d-636f6c6c6563")


def max_attempts(attempts: int, item: EvalItem) -> int:
    """`--attempts`, or for -1 the reference's default: options + 1 for MCQ, else 5."""
    if attempts != -1:
        return attempts
    return len(item.sample.options) + 1 if major_type(item.sample.question_type) == "MCQ" else 5


def traj_id(run_seed: int, index: int, attempt: int) -> str:
    return str(uuid.uuid5(_TRAJ_NAMESPACE, f"{run_seed}:{index}:{attempt}"))


def _drop_orphan_steps(steps_path: pathlib.Path, done: Mapping[int, Any]) -> None:
    """Keeps only the step lines of samples that have a results row (the torn tail cut off)."""
    if not steps_path.exists():
        return
    data = steps_path.read_bytes()
    lines = data[: data.rfind(b"\n") + 1].splitlines()
    kept = [ln for ln in lines if ln.strip() and json.loads(ln)["extra_info"].get("sample_index") in done]
    if len(kept) != len(lines) or len(data) != sum(len(ln) + 1 for ln in lines):
        results_file.write_rows(steps_path, (json.loads(ln) for ln in kept))


def _failed(result: EpisodeResult) -> bool:
    return result.end_reason in (END_ERROR, END_CANCELLED)


def collect_command(args: argparse.Namespace, policy=None, *, load_policy=None, out=None) -> int:
    """Runs `omniagent collect`; returns the exit code."""
    from omniagent_jax.eval.command import cli_policy, default_max_live, plan, runtime_config
    from omniagent_jax.eval.run import gpu_label, metadata_name, print_line

    prog = "omniagent collect"
    try:
        if args.attempts == 0 or args.attempts < -1:
            raise UsageError(f"--attempts must be >= 1 or -1 (options+1 for MCQ, else 5), got {args.attempts}")
        p = plan(args, token_limit=policy is None and args.policy in (None, "jax"))
        p.out_dir.mkdir(parents=True, exist_ok=True)
        limits = {item.index: max_attempts(args.attempts, item) for item in p.todo}
        keys = [f"{i}.{a}" for i, n in limits.items() for a in range(1, n + 1)]
        counter, load_seconds = None, 0.0
        if policy is None and p.todo:
            flags = argparse.Namespace(**{**vars(args), "policy": None if args.policy == "jax" else args.policy})
            policy, counter, load_seconds = cli_policy(flags, keys, load_policy)
    except UsageError as e:
        return report_usage_error(prog, e)
    metadata.write_json_atomic(p.out_dir / metadata_name(p.shard), p.meta)
    steps_path = p.out_dir / ("steps.jsonl" if p.shard[1] == 1 else f"steps.shard-{p.shard[0]}.jsonl")
    _drop_orphan_steps(steps_path, p.done)
    run = {"model_path": getattr(args, "model", None), "gpu_id": gpu_label(), "shard_index": p.shard[0],
           "model_load_seconds": load_seconds, "runtime_config": runtime_config(args, p.config)}
    print_line(out, f"collect: {len(p.items)} samples, {len(p.items) - len(p.todo)} already done, {len(p.todo)} to play "
                    f"(up to {max(limits.values(), default=0)} attempts each) -> {steps_path}")
    by_index = {item.index: item for item in p.todo}
    attempts: dict[int, list[tuple[EpisodeResult, VideoEnvironment | None, str]]] = {i: [] for i in by_index}
    envs: dict[str, VideoEnvironment] = {}
    t0 = time.perf_counter()
    with results_file.ResultsWriter(p.results_path) as rows_out, open(steps_path, "ab") as steps_out:
        def finish(index: int) -> None:
            tried = attempts.pop(index)
            lines = []
            for a, (result, env, started) in enumerate(tried, 1):
                if env is None or _failed(result):
                    continue
                for line in step_log_lines(result, env, question_id=f"v_{index}_0_{a}", traj_id=traj_id(args.seed, index, a)):
                    line["extra_info"].update({"sample_index": index, "attempt": a})
                    lines.append(json.dumps(line, ensure_ascii=False) + "\n")
            if lines:  # every attempt's lines in one write, then the row that marks the sample done
                steps_out.write("".join(lines).encode("utf-8"))
                steps_out.flush()
                os.fsync(steps_out.fileno())
            won = [a for a, (r, _, _) in enumerate(tried, 1) if r.won]
            best = won[0] if won else max(range(1, len(tried) + 1), key=lambda a: (not _failed(tried[a - 1][0]),
                                                                                     tried[a - 1][0].total_reward, -a))
            result, env, started = tried[best - 1]
            row = result_row(by_index[index], result, env, run=run, started_at=started, ended_at=metadata.utc_now())
            row.update({"attempts": len(tried), "attempt": best, "win": bool(won)})
            rows_out.write(row)

        live = sorted(by_index)
        attempt = 1
        while live:
            driver = EpisodeDriver(policy, max_live=default_max_live(args, policy), workers=args.workers)
            episodes = []
            for i in live:
                key = f"{i}.{attempt}"

                def make(key: str = key, item: EvalItem = by_index[i]) -> VideoEnvironment:
                    env = VideoEnvironment(item.sample, p.config, judge=p.judge, token_counter=counter)
                    envs[key] = env
                    return env

                episodes.append(Episode(key, make, seed=episode_seed(args.seed, i, attempt - 1)))
            started = metadata.utc_now()
            for i, result in zip(live, driver.run(episodes)):
                attempts[i].append((result, envs.pop(f"{i}.{attempt}", None), started))
            nxt = []
            for i in live:
                if attempts[i][-1][0].won or len(attempts[i]) >= limits[i]:
                    finish(i)
                else:
                    nxt.append(i)
            live, attempt = nxt, attempt + 1
    rows = results_file.compact(p.results_path)
    mine = [rows[i.index] for i in p.items if i.index in rows]
    won = sum(1 for r in mine if r.get("win"))
    print_line(out, f"collect: {len(mine)} samples, {won} won, {sum(r.get('attempts', 0) for r in mine)} attempts; "
                    f"{time.perf_counter() - t0:.1f}s; step logs in {steps_path}")
    return EXIT_OK if len(mine) == len(p.items) else EXIT_FAILED


def read_step_logs(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Step-log lines of a file; a torn last line (a kill mid-write) is skipped, any other bad line is an error."""
    p = pathlib.Path(path)
    try:
        data = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {p}: {getattr(e, 'strerror', None) or e}") from None
    lines = data.split("\n")
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "traj_id" not in row or "step" not in row:
                raise ValueError("not a step-log line (no traj_id/step)")
        except ValueError as e:
            if lineno == len(lines):  # no newline after it: torn
                continue
            raise UsageError(f"{p}:{lineno}: {e}") from None
        out.append(row)
    return out


def export_command(args: argparse.Namespace) -> int:
    """`omniagent export-sft LOGS --out F`: the reference's filter; prints its report."""
    prog = "omniagent export-sft"
    try:
        if args.max_steps < 1:
            raise UsageError(f"--max-steps must be >= 1, got {args.max_steps}")
        if pathlib.Path(args.out).is_dir():
            raise UsageError(f"--out {args.out} is a directory (pass the JSONL file to write)")
        lines = [row for path in args.logs for row in read_step_logs(path)]
    except UsageError as e:
        return report_usage_error(prog, e)
    kept, stats = export_sft(lines, base_path=args.base_path, max_steps=args.max_steps, strip_prefix=args.strip_prefix)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    results_file.write_rows(args.out, kept)
    print(f"unique samples: {stats['samples']}; trajectories: {stats['trajectories']}", file=sys.stdout)
    print(f"[env error] media failure turns: {stats['ffmpeg_err']}; [limits] step-limit turns: {stats['step_limit']}, "
          f"token-limit turns: {stats['token_limit']}")
    print(f"kept SFT trajectories (won): {stats['win_count']} ({stats['kept_steps']} steps); discarded (failed/over "
          f"{args.max_steps} steps): {stats['fail_count'] + stats['overstep_count']}; errored steps dropped: "
          f"{stats['dropped_error_steps']}")
    print(f"output: {args.out}")
    return EXIT_OK
