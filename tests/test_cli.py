"""`omniagent run` with its default JAX policy (tiny random model created on first use), and KV reuse
across the turns of a real OTA episode driven by the JaxPolicy."""

from __future__ import annotations

import json

import media_factory
import numpy as np
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


# ------------------------------------------------------------------------------ input checks before loading


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if a model is created or loaded: every check must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input checks")

    from omniagent_jax import policy_flags
    from omniagent_jax.model import thinker

    monkeypatch.setattr(policy_flags, "tiny_checkpoint", refuse)
    monkeypatch.setattr(JaxPolicy, "from_pretrained", refuse)
    monkeypatch.setattr(thinker, "load_thinker", refuse)


def one_error_line(capsys, prog: str) -> str:
    """The single stderr line of a rejected command (argparse style, no traceback)."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


def checkpoint_dir(path, tensors=None, *, config=True):
    """A checkpoint directory with the tiny config and the given tensors (enough for every cheap check)."""
    from omniagent_jax.model.config import save_hf_config, tiny
    from omniagent_jax.model.safetensors_io import TensorSource, write_safetensors

    path.mkdir()
    tensors = {"thinker.model.norm.weight": np.ones(64, np.float32)} if tensors is None else tensors
    write_safetensors(path / "model.safetensors",
                      [TensorSource(k, "F32", v.shape, lambda v=v: v) for k, v in tensors.items()])
    if config:
        save_hf_config(tiny(), path)
    return path


def _truncated(path):
    ckpt = checkpoint_dir(path)
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) - 100)
    return ckpt


def _write(path, name, data):
    path.mkdir(exist_ok=True)
    (path / name).write_bytes(data)
    return path


# Each: the checkpoint directory to pass as --model (built under a temporary directory), and what the line says.
BAD_MODELS = {
    "missing": (lambda d: d / "nowhere", "checkpoint directory not found: {d}/nowhere"),
    "a file": (lambda d: _write(d, "x", b"") / "x", "{d}/x is not a checkpoint directory (it is a file)"),
    "no weights": (lambda d: _write(d / "c", "config.json", b"{}"), "is not a checkpoint directory: no model.safetensors"),
    "no config": (lambda d: checkpoint_dir(d / "c", config=False), "{d}/c: no config.json next to the weights"),
    "bad config JSON": (lambda d: _write(checkpoint_dir(d / "c"), "config.json", b"{"), "{d}/c/config.json is not valid JSON"),
    "empty weights": (lambda d: _write(d / "c", "model.safetensors", b""),
                      "{d}/c/model.safetensors: corrupt safetensors file (only 0 bytes"),
    "truncated weights": (lambda d: _truncated(d / "c"), "{d}/c/model.safetensors: corrupt safetensors file (truncated"),
    "unknown key": (lambda d: checkpoint_dir(d / "c", {"thinker.model.extra.weight": np.ones(2, np.float32)}),
                    "unknown checkpoint key(s): 'thinker.model.extra.weight' (in model.safetensors)"),
    "bad JAX marker": (lambda d: _write(d / "c", "omniagent_checkpoint.json", b"{"),
                       "{d}/c/omniagent_checkpoint.json: not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_run_names_a_bad_model_directory_before_loading(case, video, tmp_path, capsys, no_model_load):
    make, message = BAD_MODELS[case]
    model = make(tmp_path)
    assert cli.main(["run", "--video", str(video), "--question", "q", "--model", str(model)]) == 2
    line = one_error_line(capsys, "omniagent run")
    assert f"--model {model}: " in line and message.format(d=tmp_path) in line, line


def test_a_shape_mismatch_with_the_config_is_named_before_any_tensor_is_read(video, tmp_path, capsys, monkeypatch):
    from omniagent_jax.model.safetensors_io import SafetensorsFile

    def refuse(self, key):
        raise AssertionError(f"tensor {key} read before the shapes were checked")

    monkeypatch.setattr(SafetensorsFile, "read", refuse)
    model = checkpoint_dir(tmp_path / "c", {"thinker.model.norm.weight": np.ones(63, np.float32)})
    argv = ["run", "--video", str(video), "--question", "q", "--model", str(model), "--no-compilation-cache"]
    assert cli.main(argv) == 2
    line = one_error_line(capsys, "omniagent run")
    assert ("shape mismatch for 'thinker.model.norm.weight' (in model.safetensors): checkpoint [63], model expects [64]"
            in line and "missing key(s): thinker." in line), line


# Each: the arguments after --video V --question q, and the problem the line names.
BAD_RUN_ARGS = [
    (["--question-type", "ESSAY"], "unknown question_type 'ESSAY'"),
    (["--question-type", "MCQ"], "an MCQ question needs options (pass them with --options)"),
    (["--options", "A. red", "B. blue", "--answer", "7"], "bad MCQ answer '7': expected an option letter"),
    (["--question-type", "TR", "--answer", "soon"], "bad TR answer 'soon'"),
    (["--max-steps", "0"], "--max-steps must be a positive int, got 0"),
    (["--min-max-steps", "0"], "--min-max-steps must be >= 1, got 0"),
    (["--max-clip", "0"], "--max-clip must be > 0, got 0"),
    (["--max-prompt-tokens", "0"], "--max-prompt-tokens must be positive, got 0"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0, got -1.0"),
    (["--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
    (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    (["--top-k", "-1"], "--top-k must be an integer >= 0 (0: off), got -1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
    (["--seed", str(2**32)], f"--seed must be an integer in [0, 2**32), got {2**32}"),
    (["--page-size", "0"], "--page-size must be >= 1, got 0"),
    (["--num-pages", "1"], "--num-pages must be >= 2, got 1"),
    (["--max-batch", "0"], "--max-batch must be >= 1, got 0"),
    (["--decode-steps", "0"], "--decode-steps must be >= 1, got 0"),
    (["--output", "."], "--output . is a directory"),
    (["--system-prompt-file", "/nonexistent/p.txt"], "cannot read system prompt file"),
    (["--judge"], "--judge needs OMNIAGENT_JUDGE_URL"),
]


@pytest.mark.parametrize("tail, message", BAD_RUN_ARGS, ids=[" ".join(t) for t, _ in BAD_RUN_ARGS])
def test_run_checks_its_arguments_before_loading(tail, message, video, tmp_path, capsys, monkeypatch, no_model_load):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("OMNIAGENT_JUDGE_URL", "OMNIAGENT_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    assert cli.main(["run", "--video", str(video), "--question", "q", *tail]) == 2
    assert message in one_error_line(capsys, "omniagent run")


def test_run_checks_the_video_before_loading(tmp_path, capsys, no_model_load):
    assert cli.main(["run", "--video", str(tmp_path / "none.mp4"), "--question", "q"]) == 2
    assert f"video not found: {tmp_path / 'none.mp4'}" in one_error_line(capsys, "omniagent run")
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    assert cli.main(["run", "--video", str(tmp_path / "bad.mp4"), "--question", "q"]) == 2
    assert f"cannot read video {tmp_path / 'bad.mp4'}: " in one_error_line(capsys, "omniagent run")
    sound = media_factory.make_audio_only(tmp_path / "sound.m4a", duration=1.0)
    assert cli.main(["run", "--video", str(sound), "--question", "q"]) == 2
    assert "has no video stream" in one_error_line(capsys, "omniagent run")


@pytest.mark.parametrize("tail, message", [
    (["--port", "70000"], "--port must be in [0, 65535], got 70000"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
    (["--num-pages", "0"], "--num-pages must be >= 2, got 0"),
    (["--model", "/nonexistent/ckpt"], "--model /nonexistent/ckpt: checkpoint directory not found"),
])
def test_serve_checks_its_arguments_before_loading(tail, message, capsys, no_model_load):
    assert cli.main(["serve", *tail]) == 2
    assert message in one_error_line(capsys, "omniagent serve")
