"""Does a toy checkpoint read its frames? (docs/toy.md §5): teacher-forced on the expert's step rows, the
probability the model gives to each frame-log entry's first word, by question type and by what the frame showed
(``-``, ``lit``, ``dot``, a ``colour``).

A decoder that does not read the image tokens still scores well on ``-`` (most frames) and ``dot`` (once one frame
has a dot, the later ones do); ``lit`` and ``colour`` are the frames where perception shows.

    python -m omniagent_jax.toy.pipeline.perception --model runs/toy/sft/export_jax --rows runs/toy/sft.jsonl --step 2
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from omniagent_jax.toy.expert import read_log
from omniagent_jax.toy.world import COLOURS


def log_entries(output: str) -> list[tuple[int, str, bool]]:
    """For each entry of the frame log that opens ``output``'s observation: the character offset in ``output``
    of what the frame showed, its kind (``-``, ``lit``, ``dot``, ``colour``), and whether it says something other
    than the entry before it (a change: the text before it cannot predict it, only the image can). [] when the
    observation has no log. A reading row's output (``toy.reading``) is the log itself."""
    key = '"observation": "'
    at = output.find(key)
    if at < 0:
        observation, start = output, 0
    else:
        start = at + len(key)
        try:
            observation = json.loads(output)["observation"]
        except (json.JSONDecodeError, TypeError, KeyError):
            return []
    if not isinstance(observation, str):
        return []
    out, before = [], None
    for entry in read_log(observation):
        kind = entry.word if entry.word in ("-", "lit", "dot") else "colour" if entry.word in COLOURS else "other"
        out.append((start + entry.at, kind, before is not None and entry.word != before))
        before = entry.word
    return out


@dataclasses.dataclass
class Tally:
    """Log entries of one (question type, kind): how many, their summed log-probability, how many were the argmax."""

    count: int = 0
    logp: float = 0.0
    argmax: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"entries": self.count, "p": math.exp(self.logp / self.count) if self.count else float("nan"),
                "argmax": self.argmax / self.count if self.count else float("nan")}


def perception(model_dir: str, rows: Iterable[Mapping[str, Any]], *, step: int | None = None,
               limit: int | None = None) -> dict[str, dict[str, dict]]:
    """``{question type: {kind: {"entries", "p" (geometric mean), "argmax" (share right)}}}`` over the step rows whose
    output starts with a frame log (only those of episode step ``step`` when given; the first ``limit`` of them).
    Entries that change from the one before are their own kind (``lit new``, ``dot new``, ...): there the text
    pattern says nothing and only reading the image helps. Step 2 is the first frames turn: the coarse scan, where
    nothing but the images says which frames are lit."""
    import numpy as np

    from omniagent_jax.model.thinker import Thinker
    from omniagent_jax.processing import OmniProcessor
    from omniagent_jax.train.sft_data import SampleEncoder

    model = Thinker.from_pretrained(model_dir)
    processor = OmniProcessor.from_pretrained(model_dir)
    encoder = SampleEncoder(processor, data_root=".", max_length=1 << 16)
    tally: dict[tuple[str, str], Tally] = collections.defaultdict(Tally)
    scored = 0
    for row in rows:
        entries = log_entries(row["output"])
        if not entries or (step is not None and row.get("step") != step):
            continue
        if limit is not None and scored >= limit:
            break
        scored += 1
        sample = encoder.encode(row)
        ids, labels = sample.pop("input_ids"), sample.pop("labels")
        aiv = bool(sample.pop("use_audio_in_video"))
        logits = np.asarray(model(ids[None], None, use_audio_in_video=aiv, **sample))[0]
        positions = np.flatnonzero(labels >= 0)  # position i predicts labels[i], the output's tokens in order
        targets = labels[positions]
        ends = np.cumsum([len(processor.tokenizer.decode([int(t)])) for t in targets])  # each token's end in the output
        qtype = row["extra_info"].get("question_type", "?")
        for offset, kind, changed in entries:
            k = int(np.searchsorted(ends, offset, side="right"))  # the token holding the entry's first character
            i, target = positions[k], int(targets[k])
            row_logits = logits[i] - logits[i].max()
            t = tally[(qtype, f"{kind} new" if changed else kind)]
            t.count += 1
            t.logp += float(row_logits[target] - np.log(np.exp(row_logits).sum()))
            t.argmax += int(row_logits.argmax() == target)
    out: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    for (qtype, kind), t in sorted(tally.items()):
        out[qtype][kind] = t.as_dict()
    return dict(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omniagent_jax.toy.pipeline.perception", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a toy checkpoint directory (with its tokenizer)")
    parser.add_argument("--rows", required=True,
                        help="expert step rows (export-sft JSONL, e.g. runs/toy/sft.jsonl) or frame-log reading rows")
    parser.add_argument("--step", type=int, default=None, help="only rows of this episode step (2: the first frames turn)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N rows that hold a frame log")
    args = parser.parse_args(argv)
    with open(args.rows, encoding="utf-8") as f:
        report = perception(args.model, (json.loads(line) for line in f if line.strip()), step=args.step, limit=args.limit)
    for qtype, kinds in report.items():
        for kind, t in kinds.items():
            print(f"{qtype:5s} {kind:10s} entries {t['entries']:5d}  p {t['p']:.3f}  argmax right {100 * t['argmax']:.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
