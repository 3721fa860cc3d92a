"""Run checkpoints with orbax's CheckpointManager: async, keep-N, atomic (orbax writes to a
temporary directory and renames it on commit), and sharded in both directions.

A checkpoint holds one tree (the trainer saves its `TrainState` — trainable params, optimizer state,
step, RNG — plus the frozen parameters) keyed by readable paths, and the data iterator's state as
JSON. The restore target is abstract: `ShapeDtypeStruct`s carrying `NamedSharding`s (from
`jax.eval_shape` and the mesh's logical rules), so every process reads only its own shards straight
onto its devices and nothing is allocated before the read.
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
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}  # metadata needs them
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: dict[str, Any], *, force: bool = False) -> None:
        flat, _ = _flat(state)
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(flat), data=ocp.args.JsonSave(data_state)),
            force=force,
        )

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """(tree with the structure, dtypes and shardings of `target`, data iterator state).

        `target`'s leaves need only `.shape`, `.dtype` and `.sharding`: `ShapeDtypeStruct`s (no
        memory) or live arrays. A checkpoint whose keys differ from the target's is an error naming them."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        flat, (treedef, keys) = _flat(target)
        stored = self.manager.item_metadata(step)["state"]
        if set(stored.keys()) != set(keys):
            missing, extra = sorted(set(keys) - set(stored.keys())), sorted(set(stored.keys()) - set(keys))
            raise ValueError(
                f"checkpoint step {step} does not match this run's state: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        wrong = [
            f"{k}: stored {tuple(stored[k].shape)}, expected {tuple(v.shape)}"
            for k, v in flat.items()
            if tuple(stored[k].shape) != tuple(v.shape)
        ]
        if wrong:
            raise ValueError(f"checkpoint step {step} has other shapes than this run's state: {wrong[:5]}")
        target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in flat.items()}
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
        )
        restored = out["state"]
        return jax.tree_util.tree_unflatten(treedef, [restored[k] for k in keys]), out["data"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
