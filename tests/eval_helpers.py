"""Shared set-up of the eval tests: a dataset of synthetic videos (every question type, a corrupt video,
a policy failure mid-episode), its scripted turns, and eval arguments as the CLI parses them."""

from __future__ import annotations

import json
import pathlib

import media_factory
from agent_helpers import answer, audio, clip, frames  # noqa: F401 (re-exported to the tests)

from omniagent_jax.cli import build_parser

# (row, script): the script is the sample's model turns; None marks where the policy fails.
SAMPLES = [
    ({"video": "a.mp4", "question_type": "MCQ", "question": "Which colour?", "options": ["A. red", "B. blue"], "answer": "A",
      "ability": "perception", "data_source": "synth", "extra_info": {"split": "test"}},
     [frames(0.0, 3.0, 2), answer("A")]),
    ({"video": "b.mp4", "question_type": "MCQ_Synth", "question": "Which shape?", "options": ["A. disc", "B. box"],
      "answer": "B", "ability": "reasoning", "data_source": "synth"},
     [frames(0.0, 2.0, 2), answer("A")]),
    ({"video": "a.mp4", "question_type": "TR", "question": "When does it move?", "answer": "[1.0, 3.0]",
      "ability": "temporal", "data_source": "other"},
     [audio(0.0, 2.0), answer("[[1.5, 3.0]]")]),
    ({"video": "b.mp4", "question_type": "SIZE", "question": "How big?", "answer": "2.0", "ability": "spatial",
      "data_source": "other"},
     [frames(1.0, 2.0, 1), answer("2.5")]),
    ({"video": "a.mp4", "question_type": "NUM", "question": "How many?", "answer": "3", "data_source": "synth"},
     [clip(0.0, 2.0), answer("3")]),
    ({"video": "corrupt.mp4", "question_type": "MCQ", "question": "Broken?", "options": ["A. yes", "B. no"], "answer": "A"},
     [answer("A")]),
    ({"video": "b.mp4", "question_type": "MCQ", "question": "Fails?", "options": ["A. yes", "B. no"], "answer": "A"},
     [frames(0.0, 2.0, 1), None]),
    ({"video": "a.mp4", "question_type": "FF", "question": "Describe it.", "answer": "squares", "data_source": "synth"},
     ["not json at all", answer("squares")]),
]
N = len(SAMPLES)
ERROR_INDICES = {5, 6}


def make_dataset(root: pathlib.Path) -> pathlib.Path:
    """The videos and `data.jsonl` under `root`; returns the dataset path."""
    root.mkdir(parents=True, exist_ok=True)
    media_factory.make_video(root / "a.mp4", duration=4.0, fps=5, audio=True, width=32, height=32)
    media_factory.make_video(root / "b.mp4", duration=3.0, fps=5, width=32, height=32)
    (root / "corrupt.mp4").write_bytes((root / "a.mp4").read_bytes()[:600])  # a header and no frames
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row, _ in SAMPLES))
    return path


def scripts_file(path: pathlib.Path, *, cut_failures: bool = True) -> pathlib.Path:
    """The scripts as `--scripted-outputs` JSON {index: [turns]}; a failure is the script running out."""
    table = {str(i): [t for t in script if t is not None] for i, (_, script) in enumerate(SAMPLES)}
    path.write_text(json.dumps(table))
    return path


def eval_args(dataset: pathlib.Path, out: pathlib.Path, *extra: str, command: str = "eval"):
    return build_parser().parse_args([command, "--dataset", str(dataset), "--output-dir", str(out), "--fixed-steps",
                                      "--max-steps", "4", "--no-progress", *extra])


def read_results(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
