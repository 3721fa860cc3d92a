"""Device mesh and the training-side shardings built on the logical-axis rules of
`omniagent_jax.model.sharding` (`LOGICAL_RULES`, `logical_to_spec` and `state_shardings` live there,
where the loader places checkpoint tensors; they are part of this module's interface too).

Models are materialised directly in their shardings: `nnx.eval_shape` gives the abstract state, a
jit with `out_shardings` creates each parameter on its own shards — never a replicated copy per device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from omniagent_jax.model.sharding import AXES, BATCH_AXES, LOGICAL_RULES, logical_to_spec, state_shardings
from omniagent_jax.train.config import MeshConfig

__all__ = [
    "AXES",
    "BATCH_AXES",
    "LOGICAL_RULES",
    "abstract_with_shardings",
    "batch_sharding",
    "create_sharded",
    "dtype_of",
    "is_sharded",
    "logical_to_spec",
    "make_mesh",
    "replicated",
    "resolve_mesh_shape",
    "state_shardings",
]


def resolve_mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Mesh sizes with the one `-1` axis filled in; errors when the product does not match."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise ValueError(f"mesh {tuple(sizes)}: {num_devices} devices are not divisible by {fixed}")
        sizes[sizes.index(-1)] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(f"mesh {tuple(sizes)} needs {math.prod(sizes)} devices, {num_devices} available")
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `(data, fsdp, tensor)` mesh over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(cfg, len(devices))
    # Auto axes: GSPMD propagates the parameter and batch shardings through the step.
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=auto)


def batch_sharding(mesh: Mesh, ndim: int, batch_dim: int = 0) -> NamedSharding:
    """Shard dimension `batch_dim` over the data-parallel axes, replicate the rest."""
    spec: list = [None] * ndim
    axes = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
    spec[batch_dim] = axes if axes else None
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def create_sharded(build: Callable[[], nnx.Module], mesh: Mesh, rules=LOGICAL_RULES) -> nnx.Module:
    """Builds `build()` with every parameter created directly in its sharding.

    The abstract model (no memory) gives the shapes and logical names; one jit whose outputs
    carry the target shardings runs the initialisers, so each device computes only its shards.
    """
    abstract = nnx.eval_shape(build)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)
    state = jax.jit(lambda: nnx.state(build()), out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def abstract_with_shardings(abstract_state: nnx.State, mesh: Mesh, rules=LOGICAL_RULES) -> nnx.State:
    """The same state with every value a `ShapeDtypeStruct` carrying its sharding: the restore target
    that makes orbax read each shard in place. Variables keep their wrappers and metadata, so the
    restored tree merges back into the module."""
    shardings = state_shardings(abstract_state, mesh, rules)
    return jax.tree.map(
        lambda v, s: v.replace(jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype, sharding=s)),
        abstract_state,
        shardings,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def is_sharded(x: jax.Array) -> bool:
    """True when no single device holds the whole array."""
    return any(s.data.shape != x.shape for s in x.addressable_shards) or not x.sharding.is_fully_replicated


def dtype_of(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]
