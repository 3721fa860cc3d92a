"""Reading an HF checkpoint directory one tensor at a time (docs/model.md §3.3).

`model.safetensors`, or shards + `model.safetensors.index.json`; keys with or without the
`thinker.` prefix; `talker.*` / `token2wav.*` (the speech generator) are ignored. Every shard header
is read and checked up front. Any other key, a missing key or a shape mismatch is a
`CheckpointError` naming the key and file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from omniagent_jax.model.jax_checkpoint import MARKER_FILE
from omniagent_jax.model.safetensors_io import DTYPES, CheckpointError, SafetensorsFile
from omniagent_jax.model.weight_keys import ParamSpec, Rule, Shape, hf_to_nnx, nnx_to_hf, read_config, summarise

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
THINKER_PREFIX = "thinker."
# The speech generator of the full Omni model: not part of the thinker, skipped on load, carried
# through by `jax-to-hf --base`.
IGNORED_PREFIXES = ("talker.", "token2wav.")


class HFCheckpoint:
    """An HF safetensors directory: which file holds each key, with every shard header read and
    validated up front (corrupt or missing shards fail before any tensor is read)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path} is not a directory")
        if (self.path / SINGLE_FILE).is_file():
            single = SafetensorsFile(self.path / SINGLE_FILE)
            self.files = {SINGLE_FILE: single}
            self.weight_map = {k: SINGLE_FILE for k in single.keys()}
        elif (self.path / INDEX_FILE).is_file():
            self.weight_map = self._read_index()
            self.files = {}
            for fname in sorted(set(self.weight_map.values())):
                if not (self.path / fname).is_file():
                    keys = [k for k, f in self.weight_map.items() if f == fname]
                    raise CheckpointError(
                        f"{self.path / INDEX_FILE} lists shard {fname!r} (holding {summarise(keys, 3)}) but the file is missing"
                    )
                self.files[fname] = SafetensorsFile(self.path / fname)
            for key, fname in self.weight_map.items():
                if key not in self.files[fname].tensors:
                    raise CheckpointError(f"{self.path / INDEX_FILE} maps {key!r} to {fname!r}, which does not contain it")
        else:
            raise CheckpointError(f"{self.path} is not a checkpoint directory: no {SINGLE_FILE}, {INDEX_FILE} or {MARKER_FILE}")
        self.prefix = THINKER_PREFIX if any(k.startswith(THINKER_PREFIX) for k in self.weight_map) else ""

    def _read_index(self) -> dict[str, str]:
        index = self.path / INDEX_FILE
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
        return weight_map

    def file_of(self, key: str) -> SafetensorsFile:
        return self.files[self.weight_map[key]]

    def keys_in_layout_order(self) -> list[str]:
        """Keys by file, then by position inside the file: the order the bytes lie on disk."""
        order = []
        for fname, f in self.files.items():
            order += sorted((k for k in f.keys() if self.weight_map.get(k) == fname), key=lambda k: f.tensors[k].begin)
        return order

    def thinker_keys(self) -> dict[str, tuple[str, Rule]]:
        """Full on-disk key → (module path, rule) for every thinker tensor. Keys that are neither
        thinker tensors nor ignored (`talker.*`, `token2wav.*`) are errors."""
        out, unknown = {}, []
        for key in self.weight_map:
            if key.startswith(IGNORED_PREFIXES):
                continue
            mapped = hf_to_nnx(key[len(self.prefix) :]) if key.startswith(self.prefix) else None
            if mapped is None:
                unknown.append(f"{key!r} (in {self.weight_map[key]})")
            else:
                out[key] = mapped
        if unknown:
            raise CheckpointError(f"{self.path}: unknown checkpoint key(s): {summarise(unknown)}")
        return out


class HFParamReader:
    """Thinker parameters from an HF directory and its config.json."""

    def __init__(self, path: str | os.PathLike):
        self.ckpt = HFCheckpoint(path)
        self.path = self.ckpt.path
        self.config = read_config(self.path)
        self._found = self.ckpt.thinker_keys()  # full key → (module path, rule); unknown keys raise here
        self._keys: dict[str, tuple[str, Rule]] = {}  # module path → (full key, rule), once validated
        self.specs: dict[str, ParamSpec] = {}

    def _dtype(self, key: str) -> np.dtype:
        return DTYPES[self.ckpt.file_of(key).tensors[key].dtype]

    def stored_dtypes(self) -> set[np.dtype]:
        return {self._dtype(k) for k in self._found}

    def validate(self, expected: dict[str, Shape]) -> HFParamReader:
        """Checks every tensor against the model's parameters (module path → NNX shape)."""
        keys: dict[str, tuple[str, Rule]] = {}
        problems = []
        for key, (name, rule) in self._found.items():
            where = self.ckpt.weight_map[key]
            if name not in expected:
                problems.append(f"unknown key {key!r} (in {where}): the config has no parameter {name}")
                continue
            want = rule.transform.hf_shape(expected[name], self.config)
            got = self.ckpt.file_of(key).tensors[key].shape
            if got != want:
                problems.append(f"shape mismatch for {key!r} (in {where}): checkpoint {list(got)}, model expects {list(want)}")
            keys[name] = (key, rule)
        missing = [self.ckpt.prefix + nnx_to_hf(n)[0] for n in expected if n not in keys]
        if missing:
            problems.append(f"missing key(s): {summarise(missing)}")
        if problems:
            raise CheckpointError(f"{self.path}: " + "; ".join(problems))
        self._keys = keys
        self.specs = {name: ParamSpec(expected[name], self._dtype(keys[name][0])) for name in expected}
        return self

    def read(self, name: str) -> np.ndarray:
        """One parameter in the NNX layout (Linear kernels transposed: a view of the one copy read)."""
        key, rule = self._keys[name]
        return rule.transform.to_jax(self.ckpt.file_of(key).read(key))

    def iter_arrays(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        for name in names:
            yield name, self.read(name)
