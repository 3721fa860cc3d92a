"""optax AdamW with warm-up + linear/cosine decay and global-norm clipping; frozen parameters.

Frozen parameters (regexes over dotted paths, default every `audio_tower.*` and `visual.*`) are
split off the model before the optimizer is built, so they get no gradient, no update and no
Adam moments at all — not zero-filled moments, none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import optax
from flax import nnx

from omniagent_jax.train.config import OptimConfig


def path_str(path: Sequence) -> str:
    return ".".join(str(getattr(p, "key", p)) for p in path)


def frozen_filter(patterns: Sequence[str]):
    """An NNX filter matching parameters whose dotted path matches any of `patterns`."""
    compiled = [re.compile(p) for p in patterns]

    def match(path, _value) -> bool:
        s = path_str(path)
        return any(c.search(s) for c in compiled)

    return match


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up over `warmup_ratio` of the steps (at least one step when the ratio is > 0),
    then linear / cosine decay to `end_lr_ratio · lr`, or constant."""
    total_steps = max(int(total_steps), 1)
    warmup = int(round(cfg.warmup_ratio * total_steps))
    if cfg.warmup_ratio > 0:
        warmup = max(warmup, 1)
    decay = max(total_steps - warmup, 1)
    end = cfg.lr * cfg.end_lr_ratio
    if cfg.schedule == "linear":
        after = optax.linear_schedule(cfg.lr, end, decay)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, decay, alpha=cfg.end_lr_ratio)
    else:
        after = optax.constant_schedule(cfg.lr)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """Clip → AdamW (decoupled weight decay on matrices only, not on norms and biases)."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    adamw = optax.adamw(
        schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask
    )
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw


def split_model(model: nnx.Module, frozen: Sequence[str]):
    """(graphdef, trainable params, frozen params, other state) of `model`."""
    return nnx.split(model, nnx.All(nnx.Param, nnx.Not(frozen_filter(frozen))), nnx.Param, ...)
