"""Logical-axis sharding rules: where each named dimension of a parameter lives on a device mesh
(the MaxText / NNX GSPMD pattern; docs/training.md §3).

Parameters carry logical axis names in their `out_sharding` metadata (`embed`, `heads`, `mlp`,
`vocab`, …). `LOGICAL_RULES` maps each name to axes of a `(data, fsdp, tensor)` mesh; a dimension
that the mapped axes do not divide evenly, or a mesh axis already used by an earlier dimension of
the same array, stays replicated (small tower weights, the vision merger's `('mlp', 'mlp')`).
The loader places checkpoint tensors with these shardings; training builds its mesh and states on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over every data-parallel axis

# logical name -> mesh axes (None = replicated). FSDP shards the model width; tensor parallelism
# the head / MLP / vocabulary dimensions (Megatron-style column/row split).
LOGICAL_RULES: dict[str, tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "embed": ("fsdp",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "vocab": ("tensor",),
    "vocab_embed": None,
    "norm": None,
    "length": None,
}


def logical_to_spec(
    names: Sequence[str | None] | None,
    shape: Sequence[int],
    mesh: Mesh,
    rules: dict[str, tuple[str, ...] | None] = LOGICAL_RULES,
    units: Mapping[str, int] | None = None,
) -> PartitionSpec:
    """PartitionSpec for an array of `shape` with logical dimension `names`. `units` gives, per logical
    name, how many indivisible units its dimension holds (attention heads): such a dimension is split only
    when its unit count divides evenly, so a head is never cut across devices (fewer KV heads than the
    tensor axis: they stay replicated)."""
    if names is None:
        return PartitionSpec()
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[tuple[str, ...] | None] = []
    for name, dim in zip(names, shape, strict=True):
        if name is not None and name not in rules:
            raise KeyError(f"no sharding rule for logical axis {name!r}; known: {sorted(rules)}")
        axes = tuple(a for a in (rules.get(name) or ()) if mesh.shape[a] > 1) if name is not None else ()
        size = math.prod(mesh.shape[a] for a in axes)
        count = (units or {}).get(name, dim) if name is not None else dim
        if not axes or used & set(axes) or dim % size or count % size:
            spec.append(None)
        else:
            used |= set(axes)
            spec.append(axes if len(axes) > 1 else axes[0])
    return PartitionSpec(*spec)


def state_shardings(
    abstract_state: nnx.State, mesh: Mesh, rules=LOGICAL_RULES, units: Callable[[tuple], Mapping[str, int]] | None = None
) -> nnx.State:
    """The NamedSharding of every variable of an (abstract) NNX state, from its logical names; `units(path)`
    gives a variable's head counts (`logical_to_spec`)."""

    def one(path, var):
        names = var.get_metadata().get("out_sharding")
        found = None if units is None else units(path)
        return NamedSharding(mesh, logical_to_spec(names, var.get_value().shape, mesh, rules, found))

    return jax.tree_util.tree_map_with_path(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def thinker_head_units(config) -> Callable[[tuple], Mapping[str, int]]:
    """`units` for a thinker's state (a `ThinkerConfig`): each tower's attention head counts by the path's first key."""
    by_part = {
        "model": {"heads": config.text.num_attention_heads, "kv_heads": config.text.num_key_value_heads},
        "visual": {"heads": config.vision.num_heads},
        "audio_tower": {"heads": config.audio.encoder_attention_heads},
    }

    def units(path: tuple) -> Mapping[str, int]:
        first = path[0]
        return by_part.get(getattr(first, "key", getattr(first, "name", first)), {})

    return units
