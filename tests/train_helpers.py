"""Shared builders for the training tests and their subprocess scripts (no test functions here)."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from omniagent_jax.train.labels import IGNORE


def synthetic_batch(k: int, b: int, t: int, vocab: int, seed: int = 0, prompt_lens=None) -> dict[str, np.ndarray]:
    """K micro-batches of B left-padded rows: random ids, a prompt then targets, a different number
    of target tokens per micro-batch (prompt length varies with k)."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, vocab, (k, b, t)).astype(np.int32)
    mask = np.ones((k, b, t), np.int32)
    labels = np.full((k, b, t), IGNORE, np.int32)
    for i in range(k):
        for j in range(b):
            pad = (i + j) % 3  # some left padding
            mask[i, j, :pad] = 0
            p = pad + (prompt_lens[i] if prompt_lens is not None else 2 + 2 * i)
            labels[i, j, p - 1 : t - 1] = ids[i, j, p:]
    pos = np.where(mask == 1, np.cumsum(mask, axis=-1) - 1, 1)
    positions = np.broadcast_to(pos[:, None], (k, 3, b, t)).astype(np.int32).copy()
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "positions": positions}


def text_row(i: int, traj: str = "t", step: int = 1, filler: int = 0) -> dict:
    """A text-only step-log row: ~70 tokens with its target, plus ~`filler` tokens of question."""
    question = f"Question {i}: what is {i} plus {i}?" + " Think about it." * (filler // 4)
    return {
        "question_id": f"q{i}", "traj_id": f"{traj}{i}", "step": step,
        "raw_input": [
            {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
            {"role": "user", "content": [{"type": "text", "text": question}]},
        ],
        "output": json.dumps(
            {"observation": f"sum of {i} and {i}", "think": "add", "action": {"type": "answer", "content": str(2 * i)}}
        ),
        "step_reward": "1.0", "done": "True", "extra_info": {"video": "none.mp4", "has_audio": False},
    }


def mixed_rows(n: int, long_every: int = 4, filler: int = 120) -> list[dict]:
    """n text rows, every `long_every`-th one longer by ~`filler` tokens (two length buckets)."""
    return [text_row(i, filler=filler if i % long_every == 0 else 0) for i in range(n)]


class LengthEncoder:
    """A stand-in for `SampleEncoder` where only lengths matter (no tokenizer to load): a row of
    `text_row(filler=f)` becomes 60 + f·(1.5) tokens, so short rows fit 128 and `mixed_rows` long ones 256."""

    def encode(self, row: dict, where: str = "row") -> dict:
        n = 60 + 6 * row["raw_input"][1]["content"][0]["text"].count("Think about it.")
        return {"input_ids": np.zeros(n, np.int32), "labels": np.full(n, IGNORE, np.int32)}


def write_jsonl(path: pathlib.Path, rows: list) -> pathlib.Path:
    """Rows (dicts, or raw strings for broken lines) as a JSONL file."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
