"""One RL step's update on its rows (docs/training.md §10): rows → trainer arrays → advantages and
TAURA weights → micro-batches → optimizer step(s), with the step's loss and policy statistics.

With one PPO epoch and one mini-batch (the recipe) `logp_old` and TAURA's entropies come from the loss's
own forward (no extra pass); with more epochs or mini-batches a no-gradient pass under the weights that
generated the batch gives both first. `algo.taura_entropy: sampler` takes the engine's entropies instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from omniagent_jax.train.rl.advantages import taura_from_row_entropy
from omniagent_jax.train.rl.batch import pack
from omniagent_jax.train.rl.config import RLConfig
from omniagent_jax.train.rl.rollout import RolloutBatch
from omniagent_jax.train.rl.rows import prepare_row
from omniagent_jax.train.rl.update import COUNTS, RLFns, optimizer_step


def per_row_stats(fns: RLFns, params, frozen, other, prepared: Sequence[dict], cfg: RLConfig, put: Callable,
                  hidden: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each row's (log-probs, entropies) over its tokens under `params`, without gradient."""
    n = len(prepared)
    micros = pack(prepared, range(n), adv=np.zeros(n, np.float32), row_w=np.ones(n, np.float32),
                  rows_per_micro=cfg.rows_per_micro, buckets=cfg.buckets, hidden=hidden, media=True)
    logp: list = [None] * n
    ent: list = [None] * n
    for m in micros:
        lp, en = (np.asarray(x) for x in fns.jit_token_stats(params, frozen, other, put(m.arrays)))
        for j, i in enumerate(m.rows):
            t = len(prepared[i]["input_ids"])
            logp[i], ent[i] = lp[j, :t], en[j, :t]
    return logp, ent


def masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(np.where(mask, values, 0).sum() / max(mask.sum(), 1))


def _minibatches(groups: Sequence[str], count: int) -> list[list[int]]:
    order = list(dict.fromkeys(groups))
    chunks = np.array_split(np.arange(len(order)), min(count, len(order)))
    return [[i for i, g in enumerate(groups) if order.index(g) in set(c.tolist())] for c in chunks]


def update_on_rows(cfg: RLConfig, fns: RLFns, state, frozen, other, towers, batch: RolloutBatch, put: Callable,
                   ref=None) -> tuple[object, dict[str, float]]:
    """The optimizer step(s) of one rollout batch; (new state, metrics). A batch without rows changes nothing."""
    a = cfg.algo
    rows = batch.rows
    if not rows:
        return state, {"loss": 0.0, "grad_norm": 0.0, "response_tokens": 0.0}
    hidden = towers.config.text.hidden_size
    prepared = [prepare_row(towers, r) for r in rows]
    groups = [r.group for r in rows]
    n = len(rows)
    adv = np.array([0.0 if a.zero_advantages else batch.traj_adv[(r.group, r.traj)] for r in rows], np.float32)
    masks = [p["loss_mask"] for p in prepared]
    logp_old = logp_ref = None
    h = None
    if fns.old_given:
        logp_old, ent_old = per_row_stats(fns, state.params, frozen, other, prepared, cfg, put, hidden)
        h = np.array([masked_mean(e, m) for e, m in zip(ent_old, masks)])
    if ref is not None:
        logp_ref, _ = per_row_stats(fns, ref, frozen, other, prepared, cfg, put, hidden)
    if a.taura_entropy == "sampler":
        if any(r.entropies is None for r in rows):
            raise ValueError("algo.taura_entropy=sampler needs the engine's entropies (a policy with logprobs=True)")
        h = np.array([float(np.mean(r.entropies)) for r in rows])
    row_w = np.ones(n, np.float32)
    if a.taura and not fns.forward_entropy:
        row_w = taura_from_row_entropy(h, groups, a.taura_eps).astype(np.float32)

    def scale(_segment, seg_h: np.ndarray) -> float:
        return 1.0 / (float(seg_h.mean()) + a.taura_eps)

    sums = dict.fromkeys(COUNTS, 0.0)
    losses, norms, row_h = [], [], {}
    for _epoch in range(a.ppo_epochs):
        for members in _minibatches(groups, a.mini_batches):
            common = dict(adv=adv, row_w=row_w, rows_per_micro=cfg.rows_per_micro, buckets=cfg.buckets, hidden=hidden,
                          media=True, logp_old=logp_old, logp_ref=logp_ref)
            if fns.forward_entropy:  # one accumulation segment per group (update.py)
                micros = []
                for g in dict.fromkeys(groups[i] for i in members):
                    micros += pack(prepared, [i for i in members if groups[i] == g], segment=g, **common)
            else:
                micros = pack(prepared, members, **common)
            state, m, rh = optimizer_step(fns, state, frozen, other, micros, put, scale if fns.forward_entropy else None)
            losses.append(m["loss"])
            norms.append(m["grad_norm"])
            row_h.update(rh)
            for k in COUNTS:
                sums[k] += m[f"sum/{k}"]
    if h is None:
        h = np.array([row_h[i] for i in range(n)])
    weights = taura_from_row_entropy(h, groups, a.taura_eps) if a.taura else np.ones(n)
    tokens = max(sums["tokens"], 1.0)
    sampler_h = [float(np.mean(r.entropies)) for r in rows if r.entropies is not None and len(r.entropies)]
    metrics = {
        "loss": float(np.mean(losses)), "grad_norm": float(np.mean(norms)), "response_tokens": sums["tokens"] / len(losses),
        "entropy_weight/mean": float(weights.mean()), "entropy_weight/std": float(weights.std()),
        "entropy_weight/min": float(weights.min()), "entropy_weight/max": float(weights.max()),
        "entropy/mean": sums["entropy"] / tokens, "entropy/sampler_mean": float(np.mean(sampler_h)) if sampler_h else 0.0,
        "clip_frac/low": sums["clip_low"] / tokens, "clip_frac/high": sums["clip_high"] / tokens,
        "clip_frac/dual": sums["dual"] / tokens, "is_weight/mean": sums["is_weight"] / tokens,
        "is_weight/truncated_frac": sums["is_truncated"] / tokens,
        "advantage/abs_mean": float(np.abs(adv).mean()),
    }
    return state, metrics
