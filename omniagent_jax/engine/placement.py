"""Where a sharded engine's arrays live (docs/architecture.md §2.4.1).

One engine per process shards over the `tensor` axis of its mesh: attention heads and KV heads, MLP
columns and the vocabulary split Megatron-style by the model's logical axis names (`model.sharding`, with
head counts so a head is never cut; KV heads stay replicated when there are fewer than the axis size),
the KV pages split on their KV-head axis the same way, and the page table, token ids and sampling
arrays replicated. Processes are data-parallel: each serves its own requests with its own engine.

Weights move tensor by tensor (`place`, `reshard`): each one goes straight from wherever it is (one
device, the trainer's FSDP/tensor layout over every device) to its engine shards, and the engine's old
copy of it is freed before the next, so no device ever holds the whole model, let alone two copies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from omniagent_jax.model.sharding import AXES, state_shardings, thinker_head_units

TENSOR = "tensor"


def engine_mesh(tensor_parallel: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `(data, fsdp, tensor)` = `(1, 1, tensor_parallel)` mesh over the first devices of this process."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not 1 <= tensor_parallel <= len(devices):
        raise ValueError(f"tensor parallelism {tensor_parallel} needs 1 to {len(devices)} devices (this process's)")
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    return Mesh(np.asarray(devices[:tensor_parallel]).reshape(1, 1, tensor_parallel), AXES, axis_types=auto)


def check_mesh(mesh: Mesh) -> Mesh:
    """`mesh`, after a ValueError unless it has a `tensor` axis and no other axis larger than 1 (engines are
    data-parallel by process, not inside one)."""
    if TENSOR not in mesh.axis_names:
        raise ValueError(f"an engine mesh needs a {TENSOR!r} axis, got axes {mesh.axis_names}")
    other = {a: n for a, n in mesh.shape.items() if a != TENSOR and n > 1}
    if other:
        raise ValueError(f"an engine shards over {TENSOR!r} only (run one engine per data-parallel process), got {other}")
    return mesh


def param_shardings(state, mesh: Mesh | None, config) -> list[NamedSharding | None]:
    """The engine sharding of every leaf of a thinker's state (`jax.tree.leaves` order); None without a mesh."""
    if mesh is None:
        return [None] * len(jax.tree.leaves(state))
    return jax.tree.leaves(state_shardings(state, mesh, units=thinker_head_units(config)))


def kv_sharding(mesh: Mesh | None, num_kv_heads: int) -> NamedSharding | None:
    """Pages `[L, KV, P, S, D]` split on KV heads when they divide over the tensor axis, else replicated."""
    if mesh is None:
        return None
    split = mesh.shape[TENSOR] > 1 and num_kv_heads % mesh.shape[TENSOR] == 0
    return NamedSharding(mesh, PartitionSpec(None, TENSOR if split else None))


def allocate_pages(shape: tuple[int, ...], dtype, sharding: NamedSharding | None) -> tuple[jax.Array, jax.Array]:
    """Zeroed K and V page buffers, created on their shards."""
    if sharding is None:
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
    make = jax.jit(lambda: (jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)), out_shardings=(sharding, sharding))
    return make()


def same_layout(old: Sequence[jax.Array], new: Sequence[object]) -> bool:
    """True when every new array already lives as the old one does (then one jitted copy moves them all)."""
    return all(isinstance(n, jax.Array) and n.sharding == o.sharding for o, n in zip(old, new))


@functools.lru_cache(maxsize=64)
def _copier(sharding: NamedSharding):
    return jax.jit(jnp.copy, out_shardings=sharding)


def reshard(sources: Sequence[object], shardings: Sequence[jax.sharding.Sharding], *, free: Sequence[jax.Array | None] = (),
            copy: bool = True, on_tensor: Callable[[int], None] | None = None) -> list[jax.Array]:
    """Each source moved onto its sharding, one tensor at a time; `free[i]` (the engine's old copy) is
    deleted as soon as tensor i is in place. With `copy`, a source already in its place is copied so the
    result never aliases the caller's arrays. `on_tensor(i)` runs when tensor i has landed, before its old
    copy is freed (the sync's high-water mark: progress bars, memory probes)."""
    out = []
    for i, (src, sharding) in enumerate(zip(sources, shardings)):
        moved = jax.device_put(src, sharding)
        if copy and _aliases(moved, src):
            moved = _copier(sharding)(moved)
        out.append(moved)
        if on_tensor is not None:
            on_tensor(i)
        if i < len(free) and free[i] is not None and free[i] is not src:
            free[i].delete()
    return out


def _aliases(moved: jax.Array, src: object) -> bool:
    """True when `moved` shares a device buffer with `src` (`device_put` reuses the shards a replicated
    source already has on the target devices): such a copy would die with the caller's donated arrays."""
    if moved is src:
        return True
    if not isinstance(src, jax.Array):
        return False
    theirs = {(s.device.id, s.data.unsafe_buffer_pointer()) for s in src.addressable_shards}
    return any((s.device.id, s.data.unsafe_buffer_pointer()) in theirs for s in moved.addressable_shards)


def place(leaves: Sequence[jax.Array], shardings: Sequence[NamedSharding | None]) -> tuple[list[jax.Array], list[bool]]:
    """A model's arrays on the engine's shardings (tensor by tensor; None: left where they are) and, per
    array, whether the engine owns it (a copy it may overwrite) or shares the caller's (never copied twice)."""
    placed = [x if s is None else reshard([x], [s], copy=False)[0] for x, s in zip(leaves, shardings)]
    return placed, [not _aliases(p, x) for p, x in zip(placed, leaves)]
