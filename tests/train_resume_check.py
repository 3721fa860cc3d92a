"""Subprocess script: kill-and-resume of the SFT trainer on a (2, 2, 2) mesh of 8 simulated CPU devices.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (set by the test before JAX starts);
argv[1] is a scratch directory. A tiny model trains on mixed-length text rows (length-grouped, so
samples wait in bucket queues at the checkpoint): once uninterrupted (with export), once killed
after step 2 and resumed. The resumed call counts the model initialisers, measures the device
memory alive when the restore starts, and records every restored leaf's sharding. Then the run's
export is loaded as `init` onto the mesh. Prints one JSON line.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(__file__))
from train_helpers import mixed_rows, write_jsonl  # noqa: E402

from omniagent_jax.model import Thinker  # noqa: E402
from omniagent_jax.processing import OmniProcessor  # noqa: E402
from omniagent_jax.train import checkpoint, setup, sft  # noqa: E402
from omniagent_jax.train import mesh as mesh_lib  # noqa: E402
from omniagent_jax.train import step as step_lib  # noqa: E402
from omniagent_jax.train.config import load_config  # noqa: E402

INITIALISERS = [(setup, "build_model"), (setup, "load_thinker"), (mesh_lib, "create_sharded"), (step_lib, "init_state")]


def count_calls(calls: collections.Counter) -> None:
    for module, name in INITIALISERS:
        original = getattr(module, name)

        @functools.wraps(original)
        def wrapper(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        setattr(module, name, wrapper)


def shardings(tree):
    return jax.tree.map(lambda x: x.sharding, tree)


def by_path(tree) -> dict:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays() if not a.is_deleted())


def main() -> None:
    work = pathlib.Path(sys.argv[1])
    train_file = write_jsonl(work / "train.jsonl", mixed_rows(16))
    common = [f"data.train_file={train_file}", "model=tiny", "data.vocab_remap=512", "data.buckets=[128,256]",
              "data.max_length=256", "data.batch_size=4", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "max_steps=4",
              "checkpoint.every=2", "checkpoint.keep=2", "optim.lr=3e-3", "optim.warmup_ratio=0", "progress=false",
              "loss_chunk=256"]
    cfg = lambda name, *extra: load_config(None, [*common, f"output_dir={work / name}", *extra])  # noqa: E731
    processor = OmniProcessor.from_pretrained()
    full = sft.train(cfg("a", "export_hf=true"), processor=processor)

    seen: dict = {}
    save, restore = checkpoint.Checkpointer.save, checkpoint.Checkpointer.restore

    def recording_save(self, step, tree, data_state, **kwargs):
        if step == 2:
            seen["saved"] = shardings(tree)
        return save(self, step, tree, data_state, **kwargs)

    def recording_restore(self, target, step=None):
        seen["live_bytes_at_restore"] = live_bytes()
        tree, data = restore(self, target, step)
        seen["restored"] = shardings(tree)  # before the first step donates the arrays
        seen["pending"] = len(data["pending"])
        return tree, data

    checkpoint.Checkpointer.save, checkpoint.Checkpointer.restore = recording_save, recording_restore
    sft.train(cfg("b"), processor=processor, stop_after=2)  # "killed" after step 2
    calls: collections.Counter = collections.Counter()
    count_calls(calls)
    resumed = sft.train(cfg("b"), processor=processor)
    resume_calls = dict(calls)
    saved, got = seen["saved"], seen["restored"]
    adam = got["train"].opt_state[1][0]
    params = jax.tree.leaves(got["train"].params)
    restored_params = {**by_path(got["train"].params), **by_path(got["frozen"])}

    # The export of run "a" as `init` on the mesh: placed tensor by tensor, no random init first.
    calls.clear()
    mesh = mesh_lib.make_mesh(cfg("c").mesh)
    loaded = nnx.state(setup.build_model(cfg("c", f"init={work / 'a' / 'export_jax'}"), mesh), nnx.Param)
    reference = nnx.state(Thinker.from_pretrained(work / "a" / "export_jax"), nnx.Param)
    print(json.dumps({
        "full": full.losses, "resumed": resumed.losses, "resume_calls": resume_calls, "pending": seen["pending"],
        "live_bytes_at_restore": seen["live_bytes_at_restore"],
        "state_bytes": sum(x.nbytes for x in jax.tree.leaves(reference)) * 3,
        "num_params": len(params), "sharded_params": sum(not s.is_fully_replicated for s in params),
        "restored_vs_saved_mismatch": sum(a != b for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(saved))),
        "moment_mismatch": sum(m != p for tree in (adam.mu, adam.nu) for m, p in zip(jax.tree.leaves(tree), params)),
        "lm_head": str(got["train"].params["lm_head"]["kernel"].get_value().spec),
        "init_calls": dict(calls),
        "init_vs_restored_mismatch": sum(by_path(shardings(loaded))[k] != v for k, v in restored_params.items()),
        "init_params": len(by_path(loaded)), "restored_params": len(restored_params),
        "init_max_abs_diff": max(
            float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(reference))
        ),
    }), flush=True)

if __name__ == "__main__":
    main()
