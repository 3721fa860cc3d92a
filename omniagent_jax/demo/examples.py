"""The demo's bundled examples: `assets/examples.json`, each a video in `assets/` and its question.

Examples are looked up by name only; the video a name resolves to must lie inside the examples
folder (a name, or an entry naming `../x`, cannot reach any other file).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from omniagent_jax.agent import rewards

ASSETS = pathlib.Path(__file__).resolve().parents[2] / "assets"
EXAMPLES_FILE = "examples.json"


class ExampleError(ValueError):
    """An unknown example name, or an examples file that names a video outside its folder."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One bundled question: `video` is an absolute path inside the examples folder."""

    name: str
    video: pathlib.Path
    question: str
    question_type: str
    options: tuple[str, ...] = ()
    answer: str | None = None


def _inside(folder: pathlib.Path, name: str) -> pathlib.Path:
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise ExampleError(f"example video {name!r} is not a file inside {folder}")
    return path


def load_examples(folder: pathlib.Path = ASSETS) -> dict[str, Example]:
    """The examples of `folder/examples.json` by name ({} when the folder has no examples file)."""
    path = folder / EXAMPLES_FILE
    if not path.is_file():
        return {}
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ExampleError(f"{path} is not valid JSON: {e}") from None
    examples: dict[str, Example] = {}
    for i, row in enumerate(rows):
        try:
            example = Example(name=str(row["name"]), video=_inside(folder, str(row["video"])), question=str(row["question"]),
                              question_type=str(row["question_type"]), options=tuple(row.get("options") or ()),
                              answer=row.get("answer"))
            rewards.check_ground_truth(example.question_type, example.answer, example.options)
        except (KeyError, TypeError, ValueError) as e:
            raise ExampleError(f"{path} entry {i}: {e}") from None
        examples[example.name] = example
    return examples


def example_by_name(examples: dict[str, Example], name: str) -> Example:
    """The example called `name` (only names in the examples file are known)."""
    if name not in examples:
        raise ExampleError(f"unknown example {name!r}")
    return examples[name]
