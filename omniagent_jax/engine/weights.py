"""`Engine.update_weights`'s check of new parameters against the engine's own, by name, shape and dtype."""

from __future__ import annotations

import jax
from flax import nnx


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
