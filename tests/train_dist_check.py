"""Subprocess script: one of two `jax.distributed` CPU processes running a sharded train step.

Environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES=2, JAX_PROCESS_ID, and 2 CPU devices per
process. Each process feeds its own half of the global batch. Process 0 also runs the same step on
one of its local devices alone (the single-process reference) and prints both losses as JSON. Both
also print the padded length of each length-grouped SFT step they read from their own data shard.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

sys.path.insert(0, os.path.dirname(__file__))
from train_helpers import LengthEncoder, mixed_rows, synthetic_batch, write_jsonl  # noqa: E402

from omniagent_jax.train import mesh as mesh_lib  # noqa: E402
from omniagent_jax.train import optim, setup  # noqa: E402
from omniagent_jax.train import step as step_lib  # noqa: E402
from omniagent_jax.train.config import MeshConfig, load_config  # noqa: E402
from omniagent_jax.train.distributed import initialize  # noqa: E402


def loss_on(mesh, batch, cfg) -> float:
    model = setup.build_model(cfg, mesh)
    graphdef, trainable, frozen, other = setup.split(model, cfg)
    tx = optim.make_optimizer(cfg.optim, total_steps=10)
    fns = step_lib.StepFns(graphdef, tx, loss_chunk=cfg.loss_chunk)
    state = step_lib.init_state(trainable, tx, cfg.seed)
    _, metrics = fns.jit_train_step(state, frozen, other, step_lib.put_batch(batch, mesh))
    return float(metrics["loss"])


def main() -> None:
    assert initialize(), "no distributed environment"
    cfg = load_config(None, ["model=tiny", "data.vocab_remap=4096", "loss_chunk=64"])
    batch = synthetic_batch(1, 8, 16, vocab=4096, seed=2)
    assert jax.process_count() == 2 and len(jax.devices()) == 4
    pid = jax.process_index()
    local = {k: (v[:, :, 4 * pid : 4 * pid + 4] if k == "positions" else v[:, 4 * pid : 4 * pid + 4]) for k, v in batch.items()}
    mesh = mesh_lib.make_mesh(MeshConfig(2, 2, 1))
    dist_loss = loss_on(mesh, local, cfg)
    out = {"process": pid, "dist_loss": dist_loss, "groups": grouped_lengths(pid)}
    if pid == 0:
        out["single_loss"] = _single(batch, cfg)
    print(json.dumps(out), flush=True)
    jax.distributed.shutdown()


def grouped_lengths(pid: int) -> list[list[int]]:
    """Length-grouped SFT batches over mixed-length rows, each process reading its own shard and
    agreeing on the bucket through the real `process_allgather`: [padded length, local size] per step."""
    from omniagent_jax.train.pipeline import SFTBatches

    with tempfile.TemporaryDirectory() as tmp:
        train_file = write_jsonl(pathlib.Path(tmp) / "mixed.jsonl", mixed_rows(16))
        data = load_config(None, [f"data.train_file={train_file}", "data.buckets=[128,256]", "data.batch_size=4"]).data
        batches = SFTBatches(data, LengthEncoder(), seed=3, process_index=pid, process_count=jax.process_count())
        return [[g.length, len(g.samples)] for g in (next(batches) for _ in range(6))]


def _single(batch, cfg) -> float:
    """The reference: the whole batch on one local device, no collectives."""
    mesh = mesh_lib.make_mesh(MeshConfig(1, 1, 1), jax.local_devices()[:1])
    model = setup.build_model(cfg, mesh)
    graphdef, trainable, frozen, other = setup.split(model, cfg)
    tx = optim.make_optimizer(cfg.optim, total_steps=10)
    fns = step_lib.StepFns(graphdef, tx, loss_chunk=cfg.loss_chunk)
    state = step_lib.init_state(trainable, tx, cfg.seed)
    dev = jax.local_devices()[0]
    _, metrics = fns.jit_train_step(state, frozen, other, {k: jax.device_put(v, dev) for k, v in batch.items()})
    return float(metrics["loss"])


if __name__ == "__main__":
    main()
