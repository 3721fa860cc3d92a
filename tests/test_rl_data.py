"""RL prompts: the reference's RL JSONL read (videos under data_root), bad rows counted and skipped with
their file:line, the per-type mix and its resumable position; rows refused without kept prompts; the RL
CLI's input checks."""

from __future__ import annotations

import dataclasses
import json

import pytest

from omniagent_jax.agent.data import DataError
from omniagent_jax.agent.episode import EpisodeResult
from omniagent_jax.train.config import ConfigError
from omniagent_jax.train.rl.cli import check_rl_inputs
from omniagent_jax.train.rl.config import RLDataConfig, load_rl_config
from omniagent_jax.train.rl.data import PromptSampler, read_rl_rows
from omniagent_jax.train.rl.rows import episode_rows


def test_reference_rl_rows_and_bad_rows(reference_dir, tmp_path):
    ref = (reference_dir / "example_train_rl.jsonl").read_text().splitlines()
    bad = [json.dumps({"video": "v.mp4", "question_type": "FF_x", "question": "q", "answer": "a"}), "{not json", ref[0]]
    path = tmp_path / "rl.jsonl"
    path.write_text("\n".join(ref + bad) + "\n")
    samples, skipped = read_rl_rows(RLDataConfig(train_file=str(path), data_root="/data"))
    assert len(samples) == len(ref) + 1 and len(skipped) == 2
    assert f"{path}:{len(ref) + 1}" in skipped[0] and "not one RL trains on" in skipped[0]
    assert f"{path}:{len(ref) + 2}" in skipped[1]
    assert samples[0].video == "/data/" + json.loads(ref[0])["video"] and [s.index for s in samples] == list(range(len(samples)))
    with pytest.raises(DataError, match="no usable row"):
        (tmp_path / "bad.jsonl").write_text(bad[1] + "\n")
        read_rl_rows(RLDataConfig(train_file=str(tmp_path / "bad.jsonl")))
    with pytest.raises(DataError, match="cannot read"):
        read_rl_rows(RLDataConfig(train_file=str(tmp_path / "missing.jsonl")))

    types = sorted({s.major_type for s in samples})
    mix = tuple(f"{t}=2" for t in types)
    sampler = PromptSampler(samples, RLDataConfig(mix=mix), 0, seed=3)
    first = [s.major_type for s in sampler.next_batch()]
    assert first == [t for t in types for _ in range(2)]
    state = sampler.get_state()
    again = PromptSampler(samples, RLDataConfig(mix=mix), 0, seed=3)
    again.set_state(json.loads(json.dumps(state)))
    assert [s.index for s in again.next_batch()] == [s.index for s in sampler.next_batch()]
    with pytest.raises(DataError, match=r"data.mix asks for \['NUM'\]"):
        PromptSampler([s for s in samples if s.major_type != "NUM"], RLDataConfig(mix=("NUM=1",)), 0, seed=0)


def test_rows_need_kept_prompts_and_log_probs():
    from omniagent_jax.processing.policy_contract import PolicyOutput

    record = type("R", (), {"result": None})()
    result = dataclasses.replace(EpisodeResult([record], [], "", 0.0, False, False, None, None, 2, 0.0))
    with pytest.raises(ValueError, match="turn 1 of episode e has no kept prompt"):
        episode_rows("g", "e", result, {"e#1": PolicyOutput(text="x", token_ids=[1], logprobs=[0.0])})


def test_cli_input_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    for overrides, message in [
        ([f"output_dir={tmp_path / 'file'}"], "is a file"),
        ([f"bandit_dir={tmp_path / 'file'}"], "bandit_dir"),
        (["bandit_dir=", "env.system_prompt_file=/nonexistent.txt"], "env.system_prompt_file"),
        (["bandit_dir=", "data.train_file="], "data.train_file is not set"),
        (["bandit_dir=", f"data.train_file={tmp_path / 'file'}", "data.data_root=/nonexistent"], "is not a directory"),
        (["bandit_dir=", f"data.train_file={tmp_path / 'empty.jsonl'}", f"data.data_root={tmp_path}"], "not found"),
        (["bandit_dir=", "model=nonexistent_model"], "model 'nonexistent_model'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_rl_inputs(load_rl_config("configs/rl/tiny.yaml", overrides))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="holds no rows"):
        check_rl_inputs(load_rl_config("configs/rl/tiny.yaml", ["bandit_dir=", f"data.train_file={tmp_path / 'empty.jsonl'}",
                                                               f"data.data_root={tmp_path}"]))


def test_launch_scripts_run_the_rl_stage():
    import subprocess

    gpu = subprocess.run(["bash", "launch/slurm_gpu.sh", "--dry-run", "--stage", "rl", "--", "--config", "configs/rl/taura.yaml"],
                         capture_output=True, text=True, timeout=30)
    assert gpu.returncode == 0 and "omniagent train rl --config configs/rl/taura.yaml" in gpu.stdout, gpu.stderr
    multi = subprocess.run(["bash", "launch/slurm_gpu.sh", "--dry-run", "--stage", "rl", "--nodes", "2", "--", "x"],
                           capture_output=True, text=True, timeout=30)
    assert multi.returncode == 2 and "use --nodes 1" in multi.stderr
    tpu = subprocess.run(["bash", "launch/tpu_pod.sh", "--dry-run", "--stage", "rl", "--tpu", "t", "--zone", "z", "--", "c"],
                         capture_output=True, text=True, timeout=30)
    assert tpu.returncode == 0 and "omniagent train rl c" in tpu.stdout
    wrong = subprocess.run(["bash", "launch/tpu_pod.sh", "--stage", "ppo", "--tpu", "t", "--zone", "z"], capture_output=True,
                           text=True, timeout=30)
    assert wrong.returncode == 2 and "--stage must be sft or rl" in wrong.stderr


def test_rl_refuses_several_processes(monkeypatch, tmp_path):
    import jax

    from omniagent_jax.train.rl import trainer

    monkeypatch.setattr(trainer, "initialize", lambda: None)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(RuntimeError, match="runs as one process"):
        trainer.train(load_rl_config("configs/rl/tiny.yaml", [f"output_dir={tmp_path}"]))
