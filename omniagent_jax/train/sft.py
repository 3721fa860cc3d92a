"""The SFT trainer: config → mesh → model → data → jitted steps → checkpoints, metrics, export.

`train(cfg)` is the whole run; it resumes from the latest checkpoint in `output_dir/checkpoints`
(params, optimizer, step, RNG, frozen towers, data-iterator state) unless `checkpoint.resume=false`.
A resume builds no model: every leaf is read from the checkpoint straight into its sharding.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any

import jax
import numpy as np
import yaml
from flax import nnx
from tqdm import tqdm

from omniagent_jax.processing import OmniProcessor
from omniagent_jax.train import collate as collate_lib
from omniagent_jax.train import mesh as mesh_lib
from omniagent_jax.train import optim, setup
from omniagent_jax.train import step as step_lib
from omniagent_jax.train.checkpoint import Checkpointer
from omniagent_jax.train.config import SFTConfig, resolved
from omniagent_jax.train.distributed import initialize
from omniagent_jax.train.metrics import EventWriter, JsonlWriter
from omniagent_jax.train.pipeline import SFTBatches
from omniagent_jax.train.sft_data import SampleEncoder

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RunResult:
    steps: int  # optimizer steps done in total (including before a resume)
    losses: dict[int, float]  # step → loss, for the steps this call ran
    bad_rows: int
    output_dir: str
    tokens_per_second: float


def total_steps(cfg: SFTConfig, num_samples: int) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_step = cfg.data.batch_size * cfg.data.grad_accum
    return max(1, math.ceil(cfg.epochs * num_samples / per_step))


def train(cfg: SFTConfig, *, stop_after: int | None = None, processor: Any = None) -> RunResult:
    """Runs (or resumes) an SFT run. `stop_after` ends the call after that many steps in total,
    as a kill would (the checkpoint schedule decides what survives)."""
    initialize()
    out = cfg.output_dir
    os.makedirs(out, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(out, "config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(resolved(cfg), f, sort_keys=False)

    mesh = mesh_lib.make_mesh(cfg.mesh)
    processor = processor or OmniProcessor.from_pretrained(cfg.init or None)
    encoder = SampleEncoder(processor, data_root=cfg.data.data_root, max_length=cfg.data.max_length, mode=cfg.data.mode,
                            use_audio_in_video=cfg.data.use_audio_in_video, vocab_remap=cfg.data.vocab_remap)
    batches = SFTBatches(cfg.data, encoder, seed=cfg.seed, process_index=jax.process_index(), process_count=jax.process_count())
    n_steps = total_steps(cfg, batches.num_samples)
    tx = optim.make_optimizer(cfg.optim, n_steps)

    ckpt = Checkpointer(os.path.join(out, "checkpoints"), cfg.checkpoint)
    resume_step = ckpt.latest_step() if cfg.checkpoint.resume else None
    if resume_step is None:
        graphdef, trainable, frozen, other = setup.split(setup.build_model(cfg, mesh), cfg)
        state = step_lib.init_state(trainable, tx, cfg.seed)
    else:
        # Read every leaf straight into its sharding: no parameter or moment exists before the read.
        graphdef, trainable, frozen, other = setup.abstract_model(cfg, mesh)
        target = {"train": step_lib.abstract_state(trainable, tx), "frozen": frozen, "other": other}
        restored, data_state = ckpt.restore(target, resume_step)
        state, frozen, other = restored["train"], restored["frozen"], restored["other"]
        batches.set_state(data_state)
        log.info("resumed from step %d", int(state.step))
    start = int(state.step)
    fns = step_lib.StepFns(graphdef, tx, remat=cfg.remat, loss_chunk=cfg.loss_chunk, skip_empty_chunks=mesh.size == 1)
    frozen_trainable = [optim.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.params)
                        if optim.path_str(p).startswith(("visual.", "audio_tower."))]
    # What `collate.prepare` needs: config, rope index, frozen towers. Trainable params stay abstract
    # here (the live ones are donated to every step).
    towers = nnx.merge(graphdef, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params), frozen, other)
    hidden, dtype = towers.config.text.hidden_size, np.dtype(mesh_lib.dtype_of(cfg.dtype))

    jsonl = JsonlWriter(os.path.join(out, "metrics.jsonl")) if jax.process_index() == 0 else None
    events = EventWriter(os.path.join(out, "tensorboard")) if jax.process_index() == 0 else None
    end = n_steps if stop_after is None else min(n_steps, stop_after)
    bar = tqdm(total=n_steps, initial=start, disable=not cfg.progress or jax.process_index() != 0, desc="sft", dynamic_ncols=True)
    losses: dict[int, float] = {}
    tokens_done, t0 = 0, time.perf_counter()
    try:
        for step in range(start, end):
            group = next(batches)
            if frozen_trainable and any(collate_lib.has_media(s) for s in group.samples):
                raise ValueError("media samples need frozen towers (media embeddings are computed outside the step); "
                                 f"trainable tower params: {frozen_trainable[:3]}")
            prepared = [collate_lib.prepare(towers, s) for s in group.samples]
            host = collate_lib.collate(prepared, cfg.data.grad_accum, group.length, hidden, dtype)
            state, metrics = fns.jit_train_step(state, frozen, other, step_lib.put_batch(host, mesh))
            n = step + 1
            if n % cfg.log_every == 0 or n == end:
                m = {k: float(v) for k, v in metrics.items()}
                tokens_done += int(host["attention_mask"].sum()) * jax.process_count()
                rate = tokens_done / max(time.perf_counter() - t0, 1e-9)
                m.update(
                    step=n, lr=float(optim.schedule(cfg.optim, n_steps)(n - 1)), tokens_per_second=rate, bad_rows=batches.bad_rows
                )
                losses[n] = m["loss"]
                if jsonl:
                    jsonl.write(m)
                    events.scalars(n, {k: m[k] for k in ("loss", "grad_norm", "lr", "tokens_per_second", "target_tokens")})
                bar.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{rate:.0f}")
            bar.update(1)
            if cfg.checkpoint.every and n % cfg.checkpoint.every == 0:
                ckpt.save(n, {"train": state, "frozen": frozen, "other": other}, batches.get_state())
        if end == n_steps and ckpt.latest_step() != n_steps:
            ckpt.save(n_steps, {"train": state, "frozen": frozen, "other": other}, batches.get_state(), force=True)
        ckpt.wait()
    finally:
        bar.close()
        ckpt.close()
        for w in (jsonl, events):
            if w:
                w.close()
    if cfg.export_hf and end == n_steps:
        export_hf(graphdef, state, frozen, other, out)
    rate = tokens_done / max(time.perf_counter() - t0, 1e-9)
    return RunResult(steps=end, losses=losses, bad_rows=batches.bad_rows, output_dir=out, tokens_per_second=rate)


def export_hf(graphdef, state: step_lib.TrainState, frozen, other, out: str) -> str:
    """The trained thinker as a converted JAX checkpoint and as HF safetensors (through the converter)."""
    from omniagent_jax.model.convert import jax_to_hf
    from omniagent_jax.model.jax_checkpoint import save_jax_checkpoint

    model = nnx.merge(graphdef, state.params, frozen, other)
    jax_dir = save_jax_checkpoint(model, os.path.join(out, "export_jax"), overwrite=True)
    return str(jax_to_hf(jax_dir, os.path.join(out, "export_hf"), overwrite=True, progress=False))
