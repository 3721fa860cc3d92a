"""The toy results table (docs/toy.md §5): accuracy by question type, mean reward, mean turns and invalid-action
rate on the test split, per agent, mean ± spread over seeds, written between markers into a Markdown file."""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

TYPES = ("MCQ", "TR", "NUM", "SIZE")
BEGIN, END = "<!-- toy-results:begin -->", "<!-- toy-results:end -->"


def eval_metrics(eval_dir: str | pathlib.Path) -> dict[str, float]:
    """One `omniagent eval` run's table metrics (accuracy = reward > 0.5, over every sample)."""
    folder = pathlib.Path(eval_dir)
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    by_type = json.loads((folder / "breakdowns.json").read_text(encoding="utf-8"))["question_type"]
    valid, invalid = summary["avg_valid_step_count"], summary["avg_invalid_step_count"]
    out = {"accuracy": summary["accuracy_all_samples"], "reward": summary["avg_reward"], "turns": summary["avg_steps"],
           "invalid": invalid / max(valid + invalid, 1e-9), "n": summary["num_samples"]}
    for t in TYPES:
        out[t] = by_type[t]["accuracy_all_samples"] if t in by_type else float("nan")
    return out


def scripted_metrics(score: Mapping[str, Any]) -> dict[str, float]:
    """A scripted policy's `splits.score_policy` result as table metrics (its turns are always valid)."""
    overall = score["overall"]
    out = {"accuracy": overall["accuracy"], "reward": overall["mean_reward"], "turns": overall["mean_steps"], "invalid": 0.0,
           "n": overall["n"]}
    for t in TYPES:
        out[t] = score["by_type"][t]["accuracy"] if t in score["by_type"] else float("nan")
    return out


def _cell(values: Sequence[float], percent: bool) -> str:
    scale, fmt = (100, "{:.0f}") if percent else (1, "{:.2f}")
    mean = sum(values) / len(values)
    text = fmt.format(mean * scale)
    if len(values) > 1:  # the spread: half the range over seeds
        text += " ± " + fmt.format((max(values) - min(values)) / 2 * scale)
    return text + (" %" if percent else "")


def results_table(rows: Iterable[tuple[str, Sequence[Mapping[str, float]]]]) -> str:
    """A Markdown table, one line per agent: (label, its runs' metrics — one per seed)."""
    head = ["agent", "runs", "overall", *TYPES, "mean reward", "mean turns", "invalid turns"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, runs in rows:
        runs = list(runs)
        cells = [label, str(len(runs)), _cell([r["accuracy"] for r in runs], True),
                 *(_cell([r[t] for r in runs], True) for t in TYPES), _cell([r["reward"] for r in runs], False),
                 _cell([r["turns"] for r in runs], False), _cell([r["invalid"] for r in runs], True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_section(path: str | pathlib.Path, body: str) -> None:
    """Puts ``body`` between the toy-results markers of a Markdown file (appended with them when absent)."""
    path = pathlib.Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{BEGIN}\n{body.strip()}\n{END}"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text, encoding="utf-8")
