"""`omniagent run` with its default JAX policy (tiny random model created on first use), and KV reuse
across the turns of a real OTA episode driven by the JaxPolicy."""

from __future__ import annotations

import json

import media_factory
import pytest

from omniagent_jax import cli
from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.environment import EnvConfig, VideoEnvironment
from omniagent_jax.agent.policy import ScriptedPolicy
from omniagent_jax.agent.runner import run_episode
from omniagent_jax.engine import Engine, SamplingParams
from omniagent_jax.engine.policy import JaxPolicy
from omniagent_jax.model.config import REPO_CONFIGS
from omniagent_jax.processing import OmniProcessor
from omniagent_jax.processing.policy_contract import turn_seed


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return media_factory.make_video(tmp_path_factory.mktemp("cli") / "v.mp4", duration=4.0, fps=5, audio=True)


@pytest.fixture
def restore_compilation_cache():
    """`omniagent run` turns on JAX's persistent compilation cache (global config): undone after the test."""
    import jax

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])


def test_omniagent_run_defaults_to_the_jax_policy_on_a_tiny_random_model(
    video, tmp_path, monkeypatch, capsys, restore_compilation_cache
):
    import jax

    monkeypatch.setenv("OMNIAGENT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "latest_run.json"
    argv = ["run", "--video", str(video), "--question", "Which colour?", "--options", "A. Red", "B. Blue",
            "--answer", "A", "--max-steps", "2", "--fixed-steps", "--max-new-tokens", "8", "--output", str(out)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "RANDOM WEIGHTS" in err and "first use" in err
    assert (tmp_path / "cache" / f"tiny-random-seed{cli.TINY_SEED}" / "config.json").exists()
    record = json.loads(out.read_text())
    assert record["gt_answer"] == "A" and record["question_type"] == "MCQ" and len(record["steps"]) == 2
    # the engine reuses prefix KV, and the record says so; each turn's seed derives from --seed (default 0)
    assert record["kvcache"]["prefix_caching_enabled"] is True and record["runtime_config"]["prefix_caching_enabled"] is True
    assert [s["seed"] for s in record["steps"]] == [turn_seed(0, 1), turn_seed(0, 2)]
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache" / "xla")
    jax.config.update("jax_compilation_cache_dir", None)
    assert cli.main(argv + ["--no-compilation-cache"]) == 0  # the second run reuses the cached model
    assert "first use" not in capsys.readouterr().err
    assert jax.config.jax_compilation_cache_dir is None


def test_episode_turns_reuse_the_kv_of_the_unchanged_history(video, reference_pairs):
    """Scripted turns drive the environment; the JaxPolicy is asked at every turn on the same history."""
    _, model, _ = reference_pairs("tiny.yaml")
    policy = JaxPolicy(Engine(model, page_size=16, num_pages=512), OmniProcessor.from_pretrained(),
                       SamplingParams(temperature=0.0, max_new_tokens=4, stop_token_ids=()))
    turns = [
        '{"observation": "", "think": "look", "confidence": 0.1, '
        '"action": {"type": "get_frames", "start": 0.0, "end": 3.0, "num": 2}}',
        '{"observation": "two frames", "think": "listen", "confidence": 0.2, '
        '"action": {"type": "get_audio", "start": 1.0, "end": 2.0}}',
        '{"observation": "a chirp", "think": "done", "confidence": 0.95, "action": {"type": "answer", "content": "A"}}',
    ]
    scripted = ScriptedPolicy(turns)

    class Both:
        """The scripted turns act; the JaxPolicy sees each history, to measure its reuse."""

        def __init__(self):
            self.metrics = []

        def generate(self, messages, *, unchanged_prefix=0, seed=None):
            self.metrics.append(policy.generate(messages, seed=seed).metrics)
            return scripted.generate(messages, unchanged_prefix=unchanged_prefix, seed=seed)

    both = Both()
    env = VideoEnvironment(
        Sample(video=str(video), question_type="MCQ", question="Which colour?", options=("A. Red", "B. Blue"), answer="A"),
        EnvConfig(budget=StepBudget(dynamic=False, max_steps=5)),
    )
    with env:
        result = run_episode(env, both)
    assert result.final_answer == "A" and result.total_reward == 1.0
    cached = [m.cached_prompt_tokens for m in both.metrics]
    prompts = [m.prompt_tokens for m in both.metrics]
    assert cached[0] == 0
    # Later turns reuse everything before the last consolidated media message: most of the prompt.
    assert all(c > 0.5 * p for c, p in zip(cached[1:], prompts[1:])), (cached, prompts)
    assert sum(m.prefilled_tokens for m in both.metrics) < 0.7 * sum(prompts)
    policy.engine.pool.check_no_leak()


def test_train_sft_is_wired_into_the_cli(capsys):
    import yaml

    config = str(REPO_CONFIGS / "sft" / "tiny.yaml")
    assert cli.main(["train", "sft", "--config", config, "--dry-run", "optim.lr=3e-5"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["optim"]["lr"] == 3e-5
    assert cli.main(["train", "sft", "--config", config, "--dry-run", "optim.nope=1"]) == 2
