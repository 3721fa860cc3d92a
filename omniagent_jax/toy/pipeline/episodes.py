"""What did a toy agent's episodes do? (docs/toy.md §5): from an eval's ``results.jsonl``, per question type, the
answers it gave (one value for every task is a guess, not perception), whether its media covered the question's
event and how often it was right with and without that evidence, and how many frame-log labels it copied right
from the environment's timestamps (whole-video scans apart from later looks) and whether the summary's "dot from"
names the log's own first ``dot``.

    python -m omniagent_jax.toy.pipeline.episodes runs/toy/eval_sft/results.jsonl runs/toy/eval_taura/results.jsonl
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from omniagent_jax.agent.prompts import format_seconds
from omniagent_jax.toy.expert import read_log
from omniagent_jax.toy.world import BEEP_PERIOD, QUESTION_TYPES

_DOT_FROM = re.compile(r"dot from (\d+\.\d\d)s")


@dataclasses.dataclass
class TypeStats:
    """One question type's episodes."""

    episodes: int = 0
    answers: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    covered: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # [right, episodes] that saw the event
    missed: list[int] = dataclasses.field(default_factory=lambda: [0, 0])  # [right, episodes] that did not


@dataclasses.dataclass
class LabelStats:
    """Frame-log labels against the timestamps the environment printed."""

    right: int = 0
    labels: int = 0
    exact_logs: int = 0
    logs: int = 0
    dot_from_right: int = 0  # summaries whose "dot from" names the log's own first `dot` entry
    dot_from: int = 0  # logs with a `dot` entry and a "dot from" summary


def covers_event(result: Mapping[str, Any]) -> bool:
    """Whether the episode's media covered its question's event: a frame inside the lit span (MCQ, TR, SIZE), audio
    over it (MCQ, NUM; for NUM the beeps), or a clip over it."""
    info = result["extra_info"]
    event = info["events"][info["target"]]
    start, end = float(event["start"]), float(event["end"])
    qtype = result["question_type"]
    sound_end = min(end, start + BEEP_PERIOD * event["beeps"]) if event.get("beeps") else end
    for step in result.get("steps") or []:
        media = step.get("media") or {}
        kind = media.get("kind")
        if kind == "frames" and qtype != "NUM" and any(start <= t < end for t in media.get("timestamps") or []):
            return True
        if kind in ("audio", "clip") and (kind == "clip" or qtype in ("MCQ", "NUM")):
            if float(media["start"]) < sound_end and float(media["end"]) > start:
                return True
    return False


def episode_stats(results: Iterable[Mapping[str, Any]]) -> tuple[dict[str, TypeStats], dict[str, LabelStats]]:
    """Answers and evidence by question type; label copying for ``scan`` (an episode's first frames call) and
    ``look`` (later ones). A frames call is scored on the observation of the turn after it."""
    by_type = {q: TypeStats() for q in QUESTION_TYPES}
    labels = {"scan": LabelStats(), "look": LabelStats()}
    for result in results:
        stats = by_type.setdefault(result["question_type"], TypeStats())
        stats.episodes += 1
        stats.answers[str(result.get("final_answer") or "")] += 1
        tally = stats.covered if covers_event(result) else stats.missed
        tally[0] += bool(result.get("correct"))
        tally[1] += 1
        steps = result.get("steps") or []
        first = True
        for step, after in zip(steps, steps[1:]):
            media = step.get("media") or {}
            if media.get("kind") != "frames":
                continue
            want = [format_seconds(t) for t in media.get("timestamps") or []]
            observation = after.get("observation") or ""
            log = [(e.label.removesuffix("s"), e.word) for e in read_log(observation)]
            s = labels["scan" if first else "look"]
            first = False
            right = sum(a == b for (a, _), b in zip(log, want))
            s.right += right
            s.labels += len(want)
            s.exact_logs += right == len(want) == len(log)
            s.logs += 1
            dots = [label for label, what in log if what == "dot"]
            said = _DOT_FROM.search(observation)
            if dots and said:
                s.dot_from_right += said.group(1) == dots[0]
                s.dot_from += 1
    return by_type, labels


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f} %" if b else "—"


def report(by_type: Mapping[str, TypeStats], labels: Mapping[str, LabelStats]) -> str:
    """The statistics as a Markdown table and two lines on labels."""
    lines = ["| type | episodes | most common answer | distinct answers | right, media covered the event | right, it did not |",
             "|---|---|---|---|---|---|"]
    for q, s in by_type.items():
        if not s.episodes:
            continue
        answer, count = s.answers.most_common(1)[0]
        right = " | ".join(f"{a} of {b} ({_pct(a, b)})" for a, b in (s.covered, s.missed))
        lines.append(f"| {q} | {s.episodes} | `{answer}` on {count} | {len(s.answers)} | {right} |")
    for name, s in labels.items():
        lines.append(f"{name} labels right: {s.right} of {s.labels} ({_pct(s.right, s.labels)}); "
                     f"logs with every label right: {s.exact_logs} of {s.logs}; "
                     f"\"dot from\" = the log's first dot: {s.dot_from_right} of {s.dot_from}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="an eval's results.jsonl (one report each)")
    args = parser.parse_args(argv)
    for path in args.results:
        try:
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        except (OSError, json.JSONDecodeError) as e:
            print(f"{path}: cannot read eval results: {e}", file=sys.stderr)
            return 2
        print(f"## {path} ({len(rows)} episodes)\n\n{report(*episode_stats(rows))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
