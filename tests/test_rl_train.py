"""`omniagent train rl` end to end on the toy bandit (configs/rl/tiny.yaml): the dry run and its checks,
kill-and-resume equal to an uninterrupted run, and learning that comes from the reward signal only."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from rl_helpers import bandit_task

from omniagent_jax.train.rl.cli import PROG
from omniagent_jax.train.rl.config import load_rl_config
from omniagent_jax.train.rl.trainer import reward_gain, train

CONFIG = "configs/rl/tiny.yaml"


def run_cli(argv, capsys):
    from omniagent_jax.cli import main

    code = main(["train", "rl", *argv])
    return code, capsys.readouterr()


def test_dry_run_prints_the_resolved_config_and_refuses_bad_input(capsys, tmp_path):
    code, out = run_cli(["--config", CONFIG, "--dry-run", "algo.taura=false"], capsys)
    assert code == 0 and "taura: false" in out.out and "bandit_dir: runs/rl_tiny_task" in out.out
    for argv, message in [
        (["rollout.n=0"], "rollout.n must be >= 1, got 0"),
        (["algo.taura_entropy=both"], "algo.taura_entropy must be trainer|sampler"),
        (["data.mix=[MCQ=2,FF=1]"], "data.mix entry 'FF=1' must be TYPE=COUNT"),
        (["algo.kl=k3"], "algo.kl=k3 needs algo.kl_coef > 0"),
        (["bandit_dir=", f"data.train_file={tmp_path / 'none.jsonl'}"], "data.train_file"),
        (["nope=1"], "unknown config key(s) ['nope']"),
    ]:
        code, out = run_cli(["--config", CONFIG, "--dry-run", *argv], capsys)
        assert code == 2 and f"{PROG}: error:" in out.err and message in out.err, (argv, out.err)
    bad = tmp_path / "rl.jsonl"
    row = {"video": "v.mp4", "question_type": "MCQ", "question": "q", "options": ["A. x"], "answer": 7}
    bad.write_text(json.dumps(row) + "\n")
    code, out = run_cli(["--config", CONFIG, "--dry-run", "bandit_dir=", "model=tiny", f"data.train_file={bad}",
                         f"data.data_root={tmp_path}"], capsys)
    assert code == 2 and f"{bad}:1" in out.err


def tiny(tmp_path, task, name, *overrides):
    return load_rl_config(CONFIG, [f"bandit_dir={task.root}", f"output_dir={tmp_path / name}", "progress=false", *overrides])


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path_factory, tmp_path):
    """The run killed after step 1 is the uninterrupted run's directory cut back to its step-1 checkpoint
    (what a kill right after that save leaves; the run is deterministic), resumed to step 3."""
    task = bandit_task(tmp_path_factory)
    small = ["steps=3", "rollout.prompts=2", "rollout.n=2", "checkpoint.every=1", "checkpoint.keep=3"]
    whole = train(tiny(tmp_path, task, "whole", *small))
    killed = tmp_path / "killed" / "checkpoints"
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "1", killed / "1")
    resumed = train(tiny(tmp_path, task, "killed", *small))
    assert sorted(whole.history) == [1, 2, 3] and sorted(resumed.history) == [2, 3]
    for step in (2, 3):
        a, b = whole.history[step], resumed.history[step]
        assert a["reward/mean"] == b["reward/mean"] and a["rows"] == b["rows"]
        assert abs(a["loss"] - b["loss"]) <= 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5
    lines = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and (tmp_path / "whole" / "tensorboard").is_dir()


@pytest.fixture(scope="module")
def learning(tmp_path_factory):
    task = bandit_task(tmp_path_factory)
    out = tmp_path_factory.mktemp("rl_learning")
    signal = train(tiny(out, task, "signal"))
    zeroed = train(tiny(out, task, "zeroed", "algo.zero_advantages=true"))
    return signal, zeroed


def test_rl_learns_from_the_reward_and_not_without_it(learning):
    signal, zeroed = learning
    assert len(signal.history) <= 20
    assert reward_gain(signal.history) >= 0.3, [round(m["reward/mean"], 3) for m in signal.history.values()]
    assert reward_gain(zeroed.history) < 0.3 - 0.15, [round(m["reward/mean"], 3) for m in zeroed.history.values()]
    assert all(m["advantage/abs_mean"] == 0 for m in zeroed.history.values())
    m = signal.history[max(signal.history)]
    for key in ("entropy_weight/mean", "entropy_weight/std", "entropy_weight/min", "entropy_weight/max", "entropy/mean",
                "clip_frac/low", "clip_frac/high", "clip_frac/dual", "is_weight/mean", "is_weight/truncated_frac",
                "grad_norm", "rollout_seconds", "update_seconds", "sync_seconds", "prefilled_tokens", "reused_tokens",
                "reward/MCQ/mean", "accuracy", "turns_per_episode", "invalid_action_rate"):
        assert key in m and np.isfinite(m[key]), key
    assert m["reused_tokens"] > 0  # later turns and a group's rollouts reuse prompt pages
