"""`run_metadata.json`: the resolved configuration, the model's path and fingerprint, versions — and the
part of it that decides results (`result_config`), which a resumed run must share (docs/protocol.md §11)."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import socket
import sys
from collections.abc import Mapping
from typing import Any

# Flags that only say which samples run, where, how fast, or what is printed: a resumed run may change them.
NOT_RESULT_KEYS = frozenset({
    "command", "func", "output_dir", "max_samples", "sample_indices", "num_shards", "shard_index", "retry_errors", "force",
    "max_live", "workers", "progress", "openai_url", "page_size", "num_pages", "max_batch", "decode_steps",
    "no_compilation_cache", "output", "video", "question", "options", "question_type", "answer", "sample_timeout",
    "eval_command", "video_root", "dataset", "distributed",
})
_VERSIONED = ("omniagent-jax", "jax", "jaxlib", "flax", "numpy", "av", "transformers", "tokenizers", "httpx")


class ResumeError(ValueError):
    """The output directory holds a run with another configuration."""


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def file_sha256(path: str | pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(path: str | os.PathLike | None) -> str | None:
    """A cheap fingerprint of a checkpoint directory: the bytes of its small files (configs, indexes,
    tokenizer, checkpoint metadata) and the names and sizes of its large ones. Hashing the weights
    themselves (GBs) would cost minutes per run; any re-export changes a size or an index."""
    if path is None:
        return None
    root = pathlib.Path(path)
    if not root.exists():
        return None
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = p.relative_to(root).as_posix()
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if size <= 1 << 20:
            h.update(p.read_bytes())
    return h.hexdigest()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def result_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide a sample's result (sampling, limits, budget, seed, policy, model, dataset)."""
    return {k: v for k, v in sorted(config.items()) if k not in NOT_RESULT_KEYS and not callable(v)}


def build_metadata(config: Mapping[str, Any], *, dataset: str, model_path: str | None, policy: str,
                   num_selected: int, num_resumed: int, shard: tuple[int, int]) -> dict[str, Any]:
    resolved = {k: v for k, v in sorted(config.items()) if not callable(v)}
    dataset_hash, fingerprint = file_sha256(dataset), model_fingerprint(model_path)
    return {
        "created_at": utc_now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "dataset_jsonl": str(dataset),
        "dataset_sha256": dataset_hash,
        "model_path": model_path,
        "model_fingerprint": fingerprint,
        "policy": policy,
        "num_samples": num_selected,
        "num_resumed": num_resumed,
        "shard_index": shard[0],
        "num_shards": shard[1],
        "gpu_id": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "versions": versions(),
        "config": resolved,
        "result_config": {**result_config(config), "dataset_sha256": dataset_hash, "model_fingerprint": fingerprint},
    }


def check_resume(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """ResumeError naming every result setting that differs from the run already in the directory."""
    if previous is None:
        return
    old, new = previous.get("result_config") or {}, current["result_config"]
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    if diffs:
        raise ResumeError("the output directory holds results of another configuration (" + "; ".join(diffs) +
                          "); pass --force to continue anyway, or choose another --output-dir")


def read_metadata(path: pathlib.Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ResumeError(f"{path} is not valid JSON ({e}); move it away to start over") from None


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
    from omniagent_jax.eval.results_file import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
