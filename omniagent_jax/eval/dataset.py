"""Which samples an eval run plays: the dataset's rows, `--max-samples` / `--sample-indices`, and the shard.

A sample is named by its 0-based row number in the dataset file (`sample_index`, as the reference's
`results.jsonl`), whatever `extra_info.index` says. Shard k of K takes the selected samples whose
position in the selection is k mod K, so shards stay balanced after `--sample-indices` and together
cover the selection exactly once (docs/protocol.md §11).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

from omniagent_jax.agent.data import DataError, Sample, iter_samples


class SelectionError(ValueError):
    """A dataset that cannot be read or a selection that names rows it does not have."""


@dataclasses.dataclass(frozen=True)
class EvalItem:
    """One sample of the run: its dataset row number and the validated sample (video path resolved)."""

    index: int
    sample: Sample


def parse_indices(text: str | None) -> list[int] | None:
    """`--sample-indices`: comma-separated row numbers and ranges (`0,3,10-12`); None when not given."""
    if text is None or not text.strip():
        return None
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            if dash:
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                out.extend(range(a, b + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise SelectionError(f"--sample-indices: {part!r} is not an index or a range a-b") from None
    if any(i < 0 for i in out):
        raise SelectionError("--sample-indices: indices are row numbers, >= 0")
    if len(set(out)) != len(out):
        raise SelectionError("--sample-indices: an index is listed twice")
    return out


def load_dataset(path: str | pathlib.Path, video_root: str | pathlib.Path | None = None) -> list[EvalItem]:
    """Every row of the JSONL dataset, validated; relative video paths are taken under `video_root`
    (default: the dataset file's folder). A broken row raises SelectionError naming `path:line`."""
    p = pathlib.Path(path)
    root = pathlib.Path(video_root) if video_root is not None else p.parent
    try:
        items = [EvalItem(i, sample) for i, sample in enumerate(iter_samples(p, video_root=root))]
    except DataError as e:
        raise SelectionError(f"--dataset: {e}") from None
    if not items:
        raise SelectionError(f"--dataset {p} holds no rows")
    return items


def select(items: Sequence[EvalItem], *, max_samples: int | None = None, sample_indices: Sequence[int] | None = None,
           num_shards: int = 1, shard_index: int = 0) -> list[EvalItem]:
    """The run's samples: the listed indices (in the order given) or the first `max_samples` (None or
    a negative number: all), then this shard's share."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise SelectionError(f"--shard-index must be in [0, --num-shards), got {shard_index} of {num_shards}")
    if sample_indices is not None:
        by_index = {item.index: item for item in items}
        missing = [i for i in sample_indices if i not in by_index]
        if missing:
            raise SelectionError(f"--sample-indices not in the dataset ({len(items)} rows): {missing[:10]}")
        chosen = [by_index[i] for i in sample_indices]
    else:
        chosen = list(items) if max_samples is None or max_samples < 0 else list(items[:max_samples])
    return chosen[shard_index::num_shards]
