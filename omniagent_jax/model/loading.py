"""Filling a model's parameters from a checkpoint directory, one tensor at a time (docs/model.md §3.4).

`open_params` picks the reader (a converted JAX checkpoint if the directory has the marker, else
HF); `load_params` validates everything cheap first (config, keys, shapes, dtypes), then streams
the tensors into the model, each placed on the default device or, given a mesh, straight onto its
own shards. The model is built abstract by the caller's function, so this module knows no model
class: `omniagent_jax.model.thinker.load_thinker` is the thinker's loader on top of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from omniagent_jax.model.config import ThinkerConfig
from omniagent_jax.model.hf_checkpoint import HFParamReader
from omniagent_jax.model.jax_checkpoint import MARKER_FILE, JaxParamReader
from omniagent_jax.model.safetensors_io import CheckpointError
from omniagent_jax.model.sharding import state_shardings
from omniagent_jax.model.weight_keys import ParamSpec, Shape, shapes_of


class ParamReader(Protocol):
    """A checkpoint: its config and stored dtypes when opened; after `validate` (against the
    model's shapes) every parameter's NNX shape/dtype, and the tensors one at a time."""

    path: Path
    config: ThinkerConfig
    specs: dict[str, ParamSpec]

    def stored_dtypes(self) -> set[np.dtype]: ...

    def validate(self, expected: dict[str, Shape]) -> ParamReader: ...

    def read(self, name: str) -> np.ndarray: ...

    def iter_arrays(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]: ...


def open_params(path: str | os.PathLike) -> HFParamReader | JaxParamReader:
    """The reader for a checkpoint directory: a converted JAX checkpoint if it has the marker, else
    HF. Opening reads the config and the headers / metadata, no tensor; `validate` before reading."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory (it is a file)")
    return JaxParamReader(path) if (path / MARKER_FILE).exists() else HFParamReader(path)


def checkpoint_dtype(reader: ParamReader) -> np.dtype:
    """The one dtype of all thinker tensors; a mixed checkpoint needs an explicit dtype to load."""
    dtypes = reader.stored_dtypes()
    if len(dtypes) != 1:
        names = sorted(map(str, dtypes))
        raise CheckpointError(f"{reader.path}: parameters have mixed dtypes {names}; pass dtype= to choose one")
    return dtypes.pop()


def load_params(
    path: str | os.PathLike,
    build_abstract: Callable[[ThinkerConfig, np.dtype], nnx.Module],
    dtype=None,
    mesh: Mesh | None = None,
) -> nnx.Module:
    """The model `build_abstract(config, dtype)` (shapes and logical axes only, e.g. `nnx.eval_shape`)
    with every parameter read from the checkpoint at `path`.

    Tensors are read one at a time (JAX checkpoints: one ~512 MB group), so peak host memory is one
    tensor (group) beyond what is placed. Without `mesh` each goes whole to the default device; with
    one, each goes from host memory to its own shards with one `device_put` (shardings from the
    logical axis names, `sharding.state_shardings`), so no device ever holds more than its shards.
    `dtype=None` keeps the checkpoint's dtype.
    """
    reader = open_params(path)
    target = np.dtype(dtype) if dtype is not None else checkpoint_dtype(reader)
    abstract = build_abstract(reader.config, target)
    reader.validate(shapes_of(abstract))  # the same traced model: the 7B is traced once, not twice
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):  # they would stay abstract: only parameters come from the checkpoint
        raise TypeError(f"{type(abstract).__name__} holds non-parameter state; the loader only knows how to fill parameters")
    shardings = dict(nnx.to_flat_state(state_shardings(params, mesh))) if mesh is not None else {}
    flat = nnx.to_flat_state(params)
    variables = {".".join(map(str, p)): (var, shardings.get(p)) for p, var in flat}
    for name, value in reader.iter_arrays(list(variables)):
        if value.dtype != target:
            value = value.astype(target)
        var, sharding = variables[name]
        var.set_value(jnp.asarray(value) if sharding is None else jax.device_put(value, sharding))
        del value
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)
