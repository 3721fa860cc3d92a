"""The RL trainer (`omniagent train rl`, docs/training.md §10): rollouts through the episode driver on
the paged engine → turn rows → GRPO advantages (× TAURA weights) → one accumulated, sharded optimizer
step per rollout batch (per mini-batch when configured) → `engine.update_weights` (which drops every
prefix-cache page computed with the old weights) → the next batch.

Resumable like SFT: params, optimizer, step, RNG, frozen towers and the prompt sampler's position are in
every checkpoint; rollout seeds are a pure function of (run seed, step, prompt, rollout, turn).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import yaml
from flax import nnx
from tqdm import tqdm

from omniagent_jax.engine import Engine, SamplingParams
from omniagent_jax.engine.policy import JaxPolicy
from omniagent_jax.processing import OmniProcessor
from omniagent_jax.train import mesh as mesh_lib
from omniagent_jax.train import optim, setup
from omniagent_jax.train import step as step_lib
from omniagent_jax.train.checkpoint import Checkpointer
from omniagent_jax.train.distributed import initialize
from omniagent_jax.train.metrics import EventWriter, JsonlWriter
from omniagent_jax.train.rl import bandit
from omniagent_jax.train.rl.config import RLConfig, resolved
from omniagent_jax.train.rl.data import PromptSampler, read_rl_rows
from omniagent_jax.train.rl.loss import LossConfig
from omniagent_jax.train.rl.rollout import env_config, play
from omniagent_jax.train.rl.update import RLFns
from omniagent_jax.train.rl.updater import update_on_rows

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RLResult:
    steps: int
    history: dict[int, dict[str, float]]  # step -> its metrics, for the steps this call ran
    bad_rows: int
    output_dir: str


def with_bandit(cfg: RLConfig) -> RLConfig:
    """`cfg` with the toy task's model, data and environment when `bandit_dir` is set (built if missing)."""
    if not cfg.bandit_dir:
        return cfg
    task = bandit.build(cfg.bandit_dir, seed=cfg.seed)
    env = dataclasses.replace(cfg.env, max_steps=bandit.MAX_STEPS, dynamic_steps=False, max_frames=bandit.LIMITS.max_frames,
                              max_audio=float(bandit.LIMITS.max_audio), max_clip=float(bandit.LIMITS.max_clip),
                              strict_confidence=False, system_prompt_file=str(task.system_prompt_file), max_prompt_tokens=0)
    data = dataclasses.replace(cfg.data, train_file=str(task.train_file), data_root=str(task.root))
    return dataclasses.replace(cfg, model=str(task.init), init=str(task.init), data=data, env=env)


def loss_config(cfg: RLConfig) -> LossConfig:
    a = cfg.algo
    return LossConfig(clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip, is_cap=a.is_cap, kl=a.kl,
                      kl_coef=a.kl_coef)


def make_fns(cfg: RLConfig, graphdef, tx) -> RLFns:
    a = cfg.algo
    separate_old = a.ppo_epochs > 1 or a.mini_batches > 1
    return RLFns(graphdef, tx, loss=loss_config(cfg), chunk=cfg.loss_chunk, remat=cfg.remat, taura=a.taura,
                 forward_entropy=a.taura and a.taura_entropy == "trainer" and not separate_old, old_given=separate_old)


def _engine_params(graphdef, state, frozen, other):
    return nnx.state(nnx.merge(graphdef, state.params, frozen, other), nnx.Param)


def train(cfg: RLConfig, *, stop_after: int | None = None, processor: Any = None) -> RLResult:
    """Runs (or resumes) an RL run; `stop_after` ends the call after that many steps in total, as a kill would."""
    initialize()
    if jax.process_count() > 1:
        raise RuntimeError("omniagent train rl runs as one process (every local device in its mesh); "
                           "rollouts spread over several hosts are not implemented")
    cfg = with_bandit(cfg)
    out = cfg.output_dir
    os.makedirs(out, exist_ok=True)
    if jax.process_index() == 0:
        with open(os.path.join(out, "config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(resolved(cfg), f, sort_keys=False)
    mesh = mesh_lib.make_mesh(cfg.mesh)
    processor = processor or OmniProcessor.from_pretrained(cfg.init or None)
    samples, bad = read_rl_rows(cfg.data)
    sampler = PromptSampler(samples, cfg.data, cfg.prompts_per_step, cfg.seed)
    updates_per_step = cfg.algo.ppo_epochs * cfg.algo.mini_batches
    tx = optim.make_optimizer(cfg.optim, cfg.steps * updates_per_step)
    scfg = cfg.model_setup()

    ckpt = Checkpointer(os.path.join(out, "checkpoints"), cfg.checkpoint)
    resume_step = ckpt.latest_step() if cfg.checkpoint.resume else None
    keep_ref = cfg.algo.kl != "none"
    if resume_step is None:
        graphdef, trainable, frozen, other = setup.split(setup.build_model(scfg, mesh), scfg)
        ref = jax.tree.map(lambda x: x.copy(), trainable) if keep_ref else None
        state = step_lib.init_state(trainable, tx, cfg.seed)
        start = 0
    else:
        graphdef, trainable, frozen, other = setup.abstract_model(scfg, mesh)
        target = {"train": step_lib.abstract_state(trainable, tx), "frozen": frozen, "other": other}
        if keep_ref:
            target["ref"] = trainable
        restored, data_state = ckpt.restore(target, resume_step)
        state, frozen, other, ref = restored["train"], restored["frozen"], restored["other"], restored.get("ref")
        sampler.set_state(data_state["sampler"])
        start = int(data_state["step"])
        log.info("resumed from RL step %d", start)
    fns = make_fns(cfg, graphdef, tx)
    towers = nnx.merge(graphdef, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params), frozen, other)

    r = cfg.rollout
    engine = Engine(nnx.merge(graphdef, state.params, frozen, other), page_size=r.page_size, num_pages=r.num_pages,
                    max_batch=r.max_batch, prefill_chunk=r.prefill_chunk, decode_steps=r.decode_steps)
    engine.update_weights(_engine_params(graphdef, state, frozen, other))  # its own copy: the train step donates ours
    sampling = SamplingParams(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, max_new_tokens=r.max_new_tokens)
    policy = JaxPolicy(engine, processor, sampling, logprobs=True, keep_prompts=True)
    env = env_config(cfg)
    counter = policy.count_tokens if env.max_prompt_tokens else None

    lead = jax.process_index() == 0
    jsonl = JsonlWriter(os.path.join(out, "metrics.jsonl")) if lead else None
    events = EventWriter(os.path.join(out, "tensorboard")) if lead else None
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = tqdm(total=cfg.steps, initial=start, disable=not cfg.progress or not lead, desc="rl", dynamic_ncols=True)
    history: dict[int, dict[str, float]] = {}
    put = lambda a: step_lib.put_batch(a, mesh)  # noqa: E731

    def save(n: int, force: bool = False) -> None:
        tree = {"train": state, "frozen": frozen, "other": other, **({"ref": ref} if keep_ref else {})}
        ckpt.save(n, tree, {"step": n, "sampler": sampler.get_state(), "bad_rows": len(bad)}, force=force)

    try:
        for step in range(start, end):
            batch = play(cfg, step, sampler.next_batch(), policy, env, token_counter=counter, progress=cfg.progress and lead)
            t0 = time.perf_counter()
            state, m = update_on_rows(cfg, fns, state, frozen, other, towers, batch, put, ref=ref)
            t1 = time.perf_counter()
            engine.update_weights(_engine_params(graphdef, state, frozen, other))
            n = step + 1
            m.update(batch.metrics, step=n, update_seconds=t1 - t0, sync_seconds=time.perf_counter() - t1, bad_rows=len(bad),
                     lr=float(optim.schedule(cfg.optim, cfg.steps * updates_per_step)(step * updates_per_step)))
            history[n] = m
            if lead and (n % cfg.log_every == 0 or n == end):
                jsonl.write(m)
                events.scalars(n, {k: v for k, v in m.items() if isinstance(v, (int, float)) and k != "step"})
            bar.set_postfix(reward=f"{m['reward/mean']:.3f}", loss=f"{m['loss']:.4f}")
            bar.update(1)
            if cfg.checkpoint.every and n % cfg.checkpoint.every == 0:
                save(n)
        if end == cfg.steps and ckpt.latest_step() != cfg.steps:
            save(cfg.steps, force=True)
        ckpt.wait()
    finally:
        bar.close()
        ckpt.close()
        for w in (jsonl, events):
            if w:
                w.close()
    return RLResult(steps=end, history=history, bad_rows=len(bad), output_dir=out)


def reward_gain(history: dict[int, dict[str, float]], window: int = 5) -> float:
    """Mean reward of the last `window` steps minus that of the first `window`."""
    rewards = [history[k]["reward/mean"] for k in sorted(history)]
    return float(np.mean(rewards[-window:]) - np.mean(rewards[:window]))
