"""`Engine.update_weights`'s check of new parameters against the engine's own, by name, shape and dtype,
and the copy into the engine's buffers and layout."""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from omniagent_jax.engine import placement, steps


def named_leaves(params) -> list[tuple[str, object]]:
    """(name, array) of every parameter, named as in `nnx.to_pure_dict` (`['model']['layers'][0]...`)."""
    tree = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    return [(jax.tree_util.keystr(path), x) for path, x in jax.tree_util.tree_leaves_with_path(tree)]


def matching_leaves(old_leaves: list[tuple[tuple, jax.Array]], params) -> list[object]:
    """The arrays of `params` in the order of `old_leaves` ((path, array) pairs, `tree_flatten_with_path`
    of the engine's pure dict); ValueError naming the first parameter that is missing, unknown, or of
    another shape or dtype."""
    given = dict(named_leaves(params))
    new_leaves = []
    for path, old in old_leaves:
        name = jax.tree_util.keystr(path)
        if name not in given:
            raise ValueError(f"update_weights: parameter {name} is missing")
        new = given.pop(name)
        if getattr(new, "shape", None) != old.shape or getattr(new, "dtype", None) != old.dtype:
            raise ValueError(
                f"update_weights: parameter {name} is {getattr(new, 'dtype', type(new).__name__)}{getattr(new, 'shape', '')}"
                f", the engine's is {old.dtype}{old.shape}"
            )
        new_leaves.append(new)
    if given:
        raise ValueError(f"update_weights: unknown parameter {next(iter(given))}")
    return new_leaves


def copy_in(
    old: list[jax.Array], new: list[object], owned: list[bool], on_tensor: Callable[[int], None] | None
) -> list[jax.Array]:
    """Copies of `new` in the layout of `old` (the engine's current weights; `owned[i]`: the engine's own
    buffer, free to overwrite). In the same layout one jitted copy writes into the old buffers (donated when
    all are owned); from another layout (the trainer's shardings, host arrays) tensor by tensor, each owned
    old buffer freed as its replacement lands, so the engine never holds two copies of the model."""
    if placement.same_layout(old, new):
        copies = steps.copy_into(old, new, donate=all(owned))
        for i in range(len(copies) if on_tensor else 0):
            on_tensor(i)
        return copies
    free = [x if mine else None for x, mine in zip(old, owned)]
    return placement.reshard(new, [x.sharding for x in old], free=free, on_tensor=on_tensor)
