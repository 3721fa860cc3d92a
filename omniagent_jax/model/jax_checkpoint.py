"""The converted JAX checkpoint directory: reading and writing the thinker's parameters with orbax
(docs/model.md §3.4).

Written by `save_jax_checkpoint` and `tools/convert_weights.py hf-to-jax`; read by `load_thinker`:

    DST/omniagent_checkpoint.json   marker: format, version, dtype
    DST/config.json                 the thinker config (`ThinkerConfig.to_hf_dict`)
    DST/generation_config.json      its stop and pad ids (`save_hf_config`), unless copied from the source
    DST/params/                     orbax checkpoint of the parameter tree, nested dicts keyed by
                                    module path (`{"model": {"layers": {"0": {...}}}}`), arrays in
                                    the NNX layout (Linear kernels `[in, out]`)

Parameters are read and written in groups of about `GROUP_BYTES`. A missing or unknown parameter
or a shape mismatch is a `CheckpointError` naming the parameter and directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from omniagent_jax.model.config import ThinkerConfig, save_hf_config
from omniagent_jax.model.safetensors_io import CheckpointError
from omniagent_jax.model.weight_keys import ParamSpec, Shape, read_config, summarise

MARKER_FILE = "omniagent_checkpoint.json"
MARKER_FORMAT = "omniagent-jax-thinker"
MARKER_VERSION = 1
PARAMS_DIR = "params"
# Orbax reads and writes parameters in groups of about this many bytes (a larger tensor goes
# alone): one call per tensor would cost ~1346 calls for the 7B thinker, and orbax's partial save
# re-reads every earlier save's metadata on each call (quadratic), while one call for the whole
# tree would hold the whole checkpoint in memory.
GROUP_BYTES = 512 << 20


def _orbax():
    # Imported late: orbax pulls in a lot, and HF-only users never need it.
    import orbax.checkpoint.experimental.v1 as ocp

    return ocp


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _nest(name: str, value: object) -> dict:
    out: dict = {}
    node = out
    parts = name.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


class JaxParamReader:
    """Thinker parameters from a converted JAX checkpoint directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).absolute()  # orbax reads absolute paths only
        marker_path = self.path / MARKER_FILE
        try:
            marker = json.loads(marker_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} is not a JAX checkpoint directory: no {MARKER_FILE}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{marker_path}: not valid JSON ({e})") from None
        if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
            raise CheckpointError(f"{marker_path}: not an {MARKER_FORMAT} checkpoint marker")
        if marker.get("version") != MARKER_VERSION:
            raise CheckpointError(
                f"{marker_path}: unsupported checkpoint version {marker.get('version')!r} (this code reads {MARKER_VERSION})"
            )
        self.marker = marker
        self.config = read_config(self.path)
        params = self.path / PARAMS_DIR
        try:
            stored = _flatten(_orbax().metadata(params).metadata)
        except Exception as e:  # orbax raises assorted types for an unreadable directory
            raise CheckpointError(f"{params}: cannot read the orbax checkpoint ({type(e).__name__}: {e})") from None
        self._meta = stored
        self.specs: dict[str, ParamSpec] = {}

    def stored_dtypes(self) -> set[np.dtype]:
        return {np.dtype(m.dtype) for m in self._meta.values()}  # type: ignore[attr-defined]

    def validate(self, expected: dict[str, Shape]) -> JaxParamReader:
        """Checks every stored parameter against the model's (module path → NNX shape)."""
        stored, params = self._meta, self.path / PARAMS_DIR
        problems = [f"unknown parameter {n!r} (in {params})" for n in stored if n not in expected]
        for n in expected:
            got = tuple(stored[n].shape) if n in stored else expected[n]  # type: ignore[attr-defined]
            if got != expected[n]:
                want = list(expected[n])
                problems.append(f"shape mismatch for {n!r} (in {params}): checkpoint {list(got)}, model expects {want}")
        missing = [n for n in expected if n not in stored]
        if missing:
            problems.append(f"missing parameter(s) in {params}: {summarise(missing)}")
        if problems:
            raise CheckpointError(f"{self.path}: " + "; ".join(problems))
        self.specs = {n: ParamSpec(expected[n], np.dtype(stored[n].dtype)) for n in expected}  # type: ignore[attr-defined]
        return self

    def read(self, name: str) -> np.ndarray:
        return self._load([name])[name]

    def iter_arrays(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        """The parameters in order, loaded in groups of about `GROUP_BYTES`."""
        for group in _groups(names, lambda n: _nbytes(self.specs[n])):
            arrays = self._load(group)
            for name in group:
                yield name, arrays.pop(name)

    def _load(self, names: list[str]) -> dict[str, np.ndarray]:
        ocp = _orbax()
        ctx = ocp.Context()
        ctx.pytree.loading.partial_load = True  # only these leaves: the rest stays on disk
        abstract: dict = {}
        for name in names:
            _merge(abstract, _nest(name, self._meta[name]))
        try:
            with ctx:
                tree = ocp.load(self.path / PARAMS_DIR, abstract)
        except Exception as e:  # tensorstore/orbax errors of assorted types: a truncated or deleted data file
            raise CheckpointError(f"{self.path / PARAMS_DIR}: cannot read {summarise(names, 3)} ({_root_cause(e)})") from None
        return {name: np.asarray(value) for name, value in _flatten(tree).items()}


def _root_cause(error: BaseException) -> str:
    """The innermost error of a chain, as `Type: first line` (tensorstore appends pages of spec to its messages)."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def _nbytes(spec: ParamSpec) -> int:
    return int(np.prod(spec.shape)) * spec.dtype.itemsize


def _groups(names: list[str], nbytes: Callable[[str], int], budget: int | None = None) -> Iterator[list[str]]:
    """Consecutive runs of names of at most `budget` bytes (a larger tensor forms a group alone)."""
    budget = GROUP_BYTES if budget is None else budget
    group: list[str] = []
    size = 0
    for name in names:
        n = nbytes(name)
        if group and size + n > budget:
            yield group
            group, size = [], 0
        group.append(name)
        size += n
    if group:
        yield group


def _merge(into: dict, tree: dict) -> None:
    for k, v in tree.items():
        if isinstance(v, dict):
            _merge(into.setdefault(k, {}), v)
        else:
            into[k] = v


# ---------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_output_dir(dst: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary directory next to `dst` that becomes `dst` only when the block succeeds.

    An existing `dst` is an error unless `overwrite`; it is then replaced at the very end, so a
    failed or interrupted conversion never leaves a half-written output (or a lost old one).
    """
    dst = Path(dst).absolute()
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite=True / --overwrite to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output should look like any new directory
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.rename(dst, old / dst.name)
    os.rename(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class JaxCheckpointWriter:
    """Writes a converted JAX checkpoint parameter by parameter: tensors are buffered up to
    `GROUP_BYTES` and each group goes out as one orbax partial save; `finish` finalizes."""

    def __init__(self, path: str | os.PathLike, config: ThinkerConfig):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        save_hf_config(config, self.path)
        self._dtypes: set[str] = set()
        self._count = 0
        self._pending: dict = {}
        self._pending_bytes = 0
        # Measured on a 1 GiB bf16 tensor: zstd (it buys ~10% on weights) and `chunk_byte_size`
        # chunking (strided chunks of a wide kernel) each leave about a tensor's worth of
        # tensorstore buffers resident after the save; plain whole-array chunks make one
        # transient copy and return it.
        self._ctx = _orbax().Context()
        self._ctx.array.saving.use_compression = False

    def add(self, name: str, value: np.ndarray | jax.Array) -> None:
        """Queues one parameter. Pass numpy arrays C-contiguous: orbax copies a strided view into
        yet another buffer (three copies of the tensor at once instead of two)."""
        nbytes = int(np.prod(value.shape)) * np.dtype(value.dtype).itemsize
        if self._pending and self._pending_bytes + nbytes > GROUP_BYTES:
            self._flush()
        _merge(self._pending, _nest(name, value))
        self._pending_bytes += nbytes
        self._dtypes.add(str(np.dtype(value.dtype)))
        self._count += 1
        if self._pending_bytes >= GROUP_BYTES:  # a big tensor goes out now, not while the next one is read
            self._flush()

    def _flush(self) -> None:
        with self._ctx:
            _orbax().partial.save(self.path / PARAMS_DIR, self._pending)
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> None:
        if self._pending:
            self._flush()
        _orbax().partial.finalize(self.path / PARAMS_DIR)
        marker = {
            "format": MARKER_FORMAT,
            "version": MARKER_VERSION,
            "dtype": next(iter(self._dtypes)) if len(self._dtypes) == 1 else "mixed",
            "num_tensors": self._count,
            "params": PARAMS_DIR,
        }
        (self.path / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def save_jax_checkpoint(model: nnx.Module, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Saves a model as a converted JAX checkpoint directory that `Thinker.from_pretrained` reads."""
    params = nnx.state(model, nnx.Param)
    with atomic_output_dir(path, overwrite=overwrite) as tmp:
        writer = JaxCheckpointWriter(tmp, model.config)
        for path_, var in nnx.to_flat_state(params):
            writer.add(".".join(map(str, path_)), var.get_value())
        writer.finish()
    return Path(path)
