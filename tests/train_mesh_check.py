"""Subprocess script: the sharded train step on 8 simulated CPU devices vs one device.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (set by the test before JAX starts).
Prints one JSON line per mesh: max |Δ| of loss, gradients and updated parameters against the
single-device step, and the partition specs of a few parameters / optimizer moments.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from train_helpers import synthetic_batch  # noqa: E402

from omniagent_jax.train import mesh as mesh_lib  # noqa: E402
from omniagent_jax.train import optim, setup  # noqa: E402
from omniagent_jax.train import step as step_lib  # noqa: E402
from omniagent_jax.train.config import MeshConfig, load_config  # noqa: E402

MESHES = [(8, 1, 1), (1, 8, 1), (2, 2, 2)]


def run(mesh_shape, devices, batch, cfg):
    mesh = mesh_lib.make_mesh(MeshConfig(*mesh_shape), devices)
    model = setup.build_model(cfg, mesh)
    graphdef, trainable, frozen, other = setup.split(model, cfg)
    tx = optim.make_optimizer(cfg.optim, total_steps=10)
    fns = step_lib.StepFns(graphdef, tx, remat=cfg.remat, loss_chunk=cfg.loss_chunk)
    state = step_lib.init_state(trainable, tx, cfg.seed)
    mu_init = jax.tree.leaves(state.opt_state[1][0].mu["lm_head"])[0].sharding  # before the step donates it
    gbatch = step_lib.put_batch(batch, mesh)
    loss, grads, _ = fns.jit_grads(state.params, frozen, other, gbatch)
    new_state, metrics = fns.jit_train_step(state, frozen, other, gbatch)
    host = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]  # noqa: E731
    info = {
        "lm_head": str(new_state.params["lm_head"]["kernel"].get_value().sharding.spec),
        "embed": str(new_state.params["model"]["embed_tokens"]["embedding"].get_value().sharding.spec),
        "gate": str(new_state.params["model"]["layers"][0]["mlp"]["gate_proj"]["kernel"].get_value().sharding.spec),
        "frozen_qkv": str(frozen["visual"]["blocks"][0]["attn"]["q"]["kernel"].get_value().sharding.spec)
        if "blocks" in frozen["visual"]
        else "",
        "sharded_params": sum(mesh_lib.is_sharded(x) for x in jax.tree.leaves(new_state.params)),
        "num_params": len(jax.tree.leaves(new_state.params)),
        "adam_mu_lm_head": str(jax.tree.leaves(new_state.opt_state[1][0].mu["lm_head"])[0].sharding.spec),
        "adam_mu_lm_head_init": str(getattr(mu_init, "spec", mu_init)),
        "batch": str(gbatch["input_ids"].sharding.spec),
    }
    return float(loss), host(grads), host(new_state.params), float(metrics["loss"]), info


def main() -> None:
    # eps 1e-3: Adam's first update is ~lr·sign(g) where |g| ≫ eps, discontinuous at g ≈ 0, so 1e-8
    # reduction-order noise on near-zero gradients would flip whole updates; a larger eps keeps the
    # comparison of updated parameters well-conditioned without hiding a wrong gradient.
    cfg = load_config(
        None,
        ["model=tiny", "data.vocab_remap=4096", "loss_chunk=64", "optim.lr=1e-3", "optim.eps=1e-3", "optim.warmup_ratio=0.0",
         "remat=full"],
    )
    devices = jax.devices()
    assert len(devices) == 8, devices
    batch = synthetic_batch(2, 8, 16, vocab=4096, seed=1)
    ref_loss, ref_grads, ref_params, _, _ = run((1, 1, 1), devices[:1], batch, cfg)
    print(json.dumps({"mesh": [1, 1, 1], "loss": ref_loss}), flush=True)
    for shape in MESHES:
        loss, grads, params, step_loss, info = run(shape, devices, batch, cfg)
        out = {
            "mesh": list(shape),
            "loss": loss,
            "d_loss": abs(loss - ref_loss),
            "d_step_loss": abs(step_loss - ref_loss),
            "d_grads": max(float(np.max(np.abs(a - b))) for a, b in zip(grads, ref_grads)),
            "d_params": max(float(np.max(np.abs(a - b))) for a, b in zip(params, ref_params)),
            **info,
        }
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
