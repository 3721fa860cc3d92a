"""The shipped toy agent (`assets/toy_agent`, docs/toy.md §5): small, loads, scores what the README says on
held-out test tasks (random weights score far less), and answers `make run`'s example."""

from __future__ import annotations

import json
import pathlib
import re
import shlex

import pytest

from omniagent_jax.agent.episode_card import read_episode_card
from omniagent_jax.cli import main
from omniagent_jax.policy_flags import SHIPPED_AGENT
from omniagent_jax.toy import settings, splits
from omniagent_jax.toy.pipeline.config import load_pipeline_config
from omniagent_jax.toy.pipeline.full import RANDOM_MAX_NEW_TOKENS
from omniagent_jax.toy.pipeline.stages import stage_init

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = SHIPPED_AGENT
HELD_OUT = 50  # test tasks 0..49: never trained on (the train split shares no video), part of the README's 100
MAX_MB = 20
RANDOM_CEILING = 0.30


def readme_accuracy() -> float:
    """The shipped agent's test accuracy as the README states it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"The shipped agent \(`assets/toy_agent`\) answers \*\*(\d+(?:\.\d+)?) %\*\*", text)
    assert found, "README.md states no accuracy for the shipped agent"
    return float(found.group(1)) / 100


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> pathlib.Path:
    return splits.write_split(tmp_path_factory.mktemp("held_out"), "test", HELD_OUT, progress=False, workers=2)


def run_eval(model: pathlib.Path, rows: pathlib.Path, out: pathlib.Path, *extra: str) -> dict:
    assert main(["eval", "--model", str(model), "--dataset", str(rows), "--output-dir", str(out), "--no-progress",
                 "--max-batch", "16", "--no-compilation-cache", *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_shipped_agent_is_small_and_carries_the_toy_episode():
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size <= MAX_MB * 2**20, f"{size / 2**20:.1f} MB"
    card = read_episode_card(SHIPPED)
    assert card["temperature"] == 0.0 and card["max_frames"] == settings.MAX_FRAMES and card["fixed_steps"]
    assert pathlib.Path(card["system_prompt_file"]).read_text(encoding="utf-8") == settings.SYSTEM_PROMPT_TEMPLATE


def test_shipped_agent_scores_what_the_readme_says(held_out, tmp_path):
    summary = run_eval(SHIPPED, held_out, tmp_path / "shipped")  # greedy, toy episode: from its episode card
    assert summary["runtime_config"]["temperature"] == 0.0 and summary["runtime_config"]["max_frames"] == settings.MAX_FRAMES
    assert summary["num_samples"] == HELD_OUT and summary["num_error"] == 0
    assert summary["accuracy_all_samples"] >= readme_accuracy() - 0.05, summary["accuracy_all_samples"]


def test_sweep_plays_the_shipped_agent_from_its_card(held_out, tmp_path):
    """`omniagent sweep --model` with no sampling flag: the card's greedy decoding and toy limits, per budget."""
    out = tmp_path / "sweep"
    assert main(["sweep", "--model", str(SHIPPED), "--dataset", str(held_out), "--output-dir", str(out), "--no-progress",
                 "--max-steps", "1,3", "--fixed-steps", "--sample-indices", "0-3", "--max-batch", "16",
                 "--no-compilation-cache"]) == 0
    config = json.loads((out / "steps-1" / "run_metadata.json").read_text())["config"]
    assert config["temperature"] == 0.0 and config["max_frames"] == settings.MAX_FRAMES and config["max_steps"] == 1
    assert (out / "sweep.png").is_file()


def test_random_weights_score_low(held_out, tmp_path):
    cfg = load_pipeline_config(None, [f"run_dir={tmp_path}"])
    random_agent = stage_init(cfg)  # the toy thinker at its random init, with the toy tokenizer and episode card
    # Random weights never stop on their own: short turns, as make toy-full's row of the table plays them.
    summary = run_eval(random_agent, held_out, tmp_path / "random", "--max-new-tokens", str(RANDOM_MAX_NEW_TOKENS))
    assert summary["num_samples"] == HELD_OUT
    assert summary["accuracy_all_samples"] <= RANDOM_CEILING


def make_run_arguments() -> list[str]:
    """The `omniagent run` arguments of `make run` (the Makefile's recipe with its default variables)."""
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    variables = dict(re.findall(r"^([A-Z_]+) \?= (.*)$", text, re.M))
    recipe = re.search(r"^run: .*\n((?:\t.*\n)+)", text, re.M).group(1)
    line = " ".join(part.strip().rstrip("\\") for part in recipe.splitlines())
    variables.update(re.findall(r"^([A-Z_]+) := (.*)$", text, re.M))
    variables["RUN_ARGS"] = ""  # its default is empty unless MODEL=random
    line = re.sub(r"\$\(([A-Z_]+)\)", lambda m: variables[m.group(1)], line)
    args = shlex.split(line)
    return args[args.index("run") + 1:]


def test_make_run_plays_the_first_example_and_answers_it(tmp_path, capsys):
    args = make_run_arguments()
    example = json.loads((REPO / "assets" / "examples.json").read_text())[0]
    assert args[args.index("--video") + 1] == f"assets/{example['video']}"
    assert args[args.index("--question") + 1] == example["question"]
    assert args[args.index("--question-type") + 1] == example["question_type"]
    assert args[args.index("--answer") + 1] == example["answer"]
    assert REPO / args[args.index("--model") + 1] == SHIPPED
    args = [a if not a.startswith("assets/") else str(REPO / a) for a in args]
    record = tmp_path / "run.json"
    assert main(["run", *args, "--output", str(record), "--no-compilation-cache"]) == 0
    result = json.loads(record.read_text())
    printed = capsys.readouterr().out
    assert result["correct"] is True, printed
    assert printed.count("[Step ") >= 2 and "observation:" in printed  # a multi-turn episode, observations shown
