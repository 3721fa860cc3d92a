"""The RL policy loss per response token, and fp32 per-token log-probs and entropies chunked over tokens.

Per token, with ratio `r = exp(logp − logp_old)`, advantage `Â`, bounds ε_low / ε_high, dual-clip c and
the truncated importance weight `w = min(exp(logp_old − logp_rollout), cap)` (no gradient):
`l = max(−Â·r, −Â·clip(r, 1 − ε_low, 1 + ε_high))`, where `Â < 0` `l = min(l, −Â·c)`; the token's loss is
`w · l` (+ `kl_coef · KL` with a KL option). `l` is positively homogeneous in `Â` (every branch is linear
in it and a positive scale keeps `max`/`min`), which lets TAURA scale a whole group's gradient by
`1 / (mean_g h + eps)` after the fact (docs/training.md §10).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from omniagent_jax.train.loss import token_chunks

KL_KINDS = ("none", "k1", "k3")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.3
    dual_clip: float = 3.0
    is_cap: float = 2.0  # truncated IS weight min(π_old / π_rollout, is_cap); 0 turns the weight off
    kl: str = "none"  # none | k1 | k3 (against the initial policy)
    kl_coef: float = 0.0


def token_loss(logp: jax.Array, logp_old: jax.Array, logp_rollout: jax.Array, adv: jax.Array, cfg: LossConfig,
               logp_ref: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-token loss (same shape as `logp`) and boolean region masks: `clip_low`, `clip_high`, `dual`
    (where the clipped branch or the dual clip decides, so the token has no gradient) and `is_truncated`,
    plus the IS weight itself as `is_weight`."""
    ratio = jnp.exp(logp - logp_old)
    l1 = -adv * ratio
    l2 = -adv * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    clipped = jnp.maximum(l1, l2)
    dual = jnp.minimum(clipped, -adv * cfg.dual_clip)
    loss = jnp.where(adv < 0, dual, clipped)
    raw_w = jnp.exp(logp_old - logp_rollout)
    w = jax.lax.stop_gradient(jnp.minimum(raw_w, cfg.is_cap) if cfg.is_cap > 0 else jnp.ones_like(raw_w))
    loss = w * loss
    if cfg.kl != "none" and logp_ref is not None:
        d = logp_ref - logp
        kl = -d if cfg.kl == "k1" else jnp.exp(d) - d - 1.0
        loss = loss + cfg.kl_coef * kl
    regions = {
        "clip_low": (adv < 0) & (ratio < 1.0 - cfg.clip_low),
        "clip_high": (adv > 0) & (ratio > 1.0 + cfg.clip_high),
        "dual": (adv < 0) & (ratio > cfg.dual_clip),
        "is_truncated": (raw_w > cfg.is_cap) if cfg.is_cap > 0 else jnp.zeros(raw_w.shape, bool),
        "is_weight": w,
    }
    return loss, regions


def chunked_token_stats(
    hidden: jax.Array, lm_kernel: jax.Array, targets: jax.Array, *, chunk: int
) -> tuple[jax.Array, jax.Array]:
    """hidden `[B, T, D]`, lm_kernel `[D, V]`, targets `[B, T]` (the next token's id at each position) →
    (log p(target) `[B, T]`, entropy of the next-token distribution `[B, T]`), both fp32.

    Like `train/loss.py`, the `[tokens, vocab]` logits never materialise: `chunk` tokens at a time, each
    chunk's logits recomputed in the backward pass. The entropy carries no gradient (it is a statistic)."""
    b, t, _ = hidden.shape
    h, y, n = token_chunks(hidden, targets, chunk, fill=0)

    @jax.checkpoint
    def one(h_c: jax.Array, y_c: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = jnp.einsum("cd,dv->cv", h_c, lm_kernel, preferred_element_type=jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, y_c[:, None], axis=-1)[:, 0]
        probs = jax.nn.softmax(jax.lax.stop_gradient(logits), axis=-1)
        entropy = jax.lax.stop_gradient(lse) - jnp.sum(probs * jax.lax.stop_gradient(logits), axis=-1)
        return picked - lse, entropy

    logp, ent = jax.lax.map(lambda xs: one(*xs), (h, y))
    return logp.reshape(-1)[:n].reshape(b, t), ent.reshape(-1)[:n].reshape(b, t)
