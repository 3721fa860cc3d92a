"""Run checkpoints with orbax's CheckpointManager: async, keep-N, atomic (orbax writes to a
temporary directory and renames it on commit), and sharded in both directions.

A checkpoint holds the whole `TrainState` (trainable params, optimizer state, step, RNG) keyed by
readable paths, plus the data iterator's state as JSON. Restore targets carry the live state's
shardings, so every process reads only its own shards straight onto its devices.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from omniagent_jax.train.config import CheckpointConfig


def _flat(tree: Any) -> tuple[dict[str, Any], Any]:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    keys = [jax.tree_util.keystr(path, simple=True, separator=".") for path, _ in leaves]
    if len(set(keys)) != len(keys):
        raise ValueError("checkpoint keys are not unique")
    return dict(zip(keys, (x for _, x in leaves))), (treedef, keys)


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, cfg: CheckpointConfig):
        options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, enable_async_checkpointing=cfg.async_save, create=True)
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any], *, force: bool = False) -> None:
        flat, _ = _flat(state)
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(flat), data=ocp.args.JsonSave(data_state)),
            force=force,
        )

    def restore(self, state_like: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """(state with the structure and shardings of `state_like`, data iterator state)."""
        step = self.manager.latest_step() if step is None else step
        flat, (treedef, keys) = _flat(state_like)
        target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in flat.items()}
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
        restored = out["state"]
        return jax.tree_util.tree_unflatten(treedef, [restored[k] for k in keys]), out["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
