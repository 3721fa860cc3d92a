"""The RL update: micro-batches accumulated into one optimizer step (docs/training.md §10).

Each micro-batch is one jitted call (one compile per bucket length) that adds its gradient of the summed
per-token loss into a donated accumulator; the sum is divided by the whole (mini-)batch's response-token
count, counted on the host first — so micro-batches of any lengths give exactly the update of one batch.
(The reference zeroes the gradient at every mini-batch and steps once, keeping only the last one's.)

TAURA without an extra pass: `logp_old` and the turn entropies come from the loss's own forward under
`stop_gradient`. Row i's coefficient `h_i` is known inside its call, but the group mean `mean_g h` only
after all the group's rows ran; the loss is positively homogeneous in the advantage
(`train/rl/loss.py`), so each group is accumulated as a segment of its own and added to the total scaled
by `1 / (mean_g h + eps)` — exact in every clip region. With given weights (sampler entropies, or a
separate old-policy pass) the coefficient is the row's whole TAURA weight and one segment holds everything.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from omniagent_jax.train import step as step_lib
from omniagent_jax.train.forward import hidden_states, input_embeddings
from omniagent_jax.train.rl.batch import Micro
from omniagent_jax.train.rl.loss import LossConfig, chunked_token_stats, token_loss

COUNTS = ("tokens", "clip_low", "clip_high", "dual", "is_truncated", "is_weight", "entropy")


@dataclasses.dataclass(frozen=True)
class RLFns:
    """The jitted functions of an RL run (static model structure, optimizer and loss settings)."""

    graphdef: Any
    tx: optax.GradientTransformation
    loss: LossConfig = LossConfig()
    chunk: int = 1024
    remat: str = "none"
    taura: bool = True
    forward_entropy: bool = True  # TAURA's h_i from this forward (else each row's `row_w` is its whole weight)
    old_given: bool = False  # logp_old from a separate pass (epochs > 1 or several mini-batches)

    def token_stats(self, params, frozen, other, mb: dict) -> tuple[jax.Array, jax.Array]:
        """fp32 (log p(next token), entropy) `[B, L]` of one micro-batch (its leading axis of 1 dropped)."""
        mb = {k: v[0] for k, v in mb.items()}
        model = nnx.merge(self.graphdef, params, frozen, other)
        embeds = input_embeddings(model, mb["input_ids"], mb.get("media_embeds"), mb.get("media_mask"))
        hidden = hidden_states(model, embeds, mb["positions"], mb["attention_mask"], self.remat)
        return chunked_token_stats(hidden, model.lm_head.kernel[...], mb["targets"], chunk=self.chunk)

    def loss_sums(self, params, frozen, other, mb: dict) -> tuple[jax.Array, dict]:
        logp, ent = self.token_stats(params, frozen, other, mb)
        mb = {k: v[0] for k, v in mb.items()}
        mask = mb["loss_mask"] > 0
        ent = jax.lax.stop_gradient(ent)
        h_row = jnp.where(mask, ent, 0.0).sum(-1) / jnp.maximum(mask.sum(-1), 1)
        logp_old = mb["logp_old"] if self.old_given else jax.lax.stop_gradient(logp)
        coef = (h_row if self.forward_entropy else mb["row_w"]) if self.taura else 1.0
        adv = (mb["adv"] * coef)[:, None]
        loss_tok, regions = token_loss(logp, logp_old, mb["logp_rollout"], adv, self.loss, mb.get("logp_ref"))
        total = jnp.where(mask, loss_tok, 0.0).sum()
        masked = lambda x: jnp.where(mask, x, 0).astype(jnp.float32).sum()  # noqa: E731
        stats = {"loss": total, "tokens": mask.sum().astype(jnp.float32), "entropy": masked(ent), "row_h": h_row,
                 **{k: masked(regions[k]) for k in ("clip_low", "clip_high", "dual", "is_truncated", "is_weight")}}
        return total, stats

    def accumulate(self, params, frozen, other, acc, mb: dict):
        (_, stats), g = jax.value_and_grad(self.loss_sums, has_aux=True)(params, frozen, other, mb)
        return jax.tree.map(lambda a, b: a + b.astype(a.dtype), acc, g), stats

    def apply(self, state: step_lib.TrainState, frozen, other, batch: dict) -> tuple[step_lib.TrainState, dict]:
        grads = jax.tree.map(lambda g, p: (g / batch["denom"]).astype(p.dtype), batch["grads"], state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
        new = step_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
        return new, {"grad_norm": optax.tree.norm(grads)}

    @functools.cached_property
    def jit_accumulate(self):
        return jax.jit(self.accumulate, donate_argnums=(3,))

    @functools.cached_property
    def jit_token_stats(self):
        return jax.jit(self.token_stats)

    @functools.cached_property
    def jit_apply(self):
        return step_lib._PinnedStep(self.apply)


@jax.jit
def _zeros(params):
    return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)


@functools.partial(jax.jit, donate_argnums=(0,))
def _scale_add(total, acc, scale):
    return jax.tree.map(lambda t, a: t + scale * a, total, acc)


Put = Callable[[dict], dict]
SegmentScale = Callable[[Hashable, np.ndarray], float]  # (segment, h of its rows) -> the segment's scale


def accumulate(fns: RLFns, params, frozen, other, micros: Sequence[Micro], put: Put,
               segment_scale: SegmentScale | None = None) -> tuple[Any, dict[str, float], dict[int, float]]:
    """(Σ_segments scale · Σ_micro-batches gradient, summed statistics, each real row's forward h_i).

    Micro-batches of one segment must be consecutive. `segment_scale` (None: 1) gets the segment and the
    forward entropies h of its real rows."""
    total = _zeros(params)
    sums = dict.fromkeys(("loss", *COUNTS), 0.0)
    row_h: dict[int, float] = {}
    i = 0
    while i < len(micros):
        seg = micros[i].segment
        acc, seg_sums, seg_h = _zeros(params), dict.fromkeys(sums, 0.0), []
        while i < len(micros) and micros[i].segment == seg:
            acc, stats = fns.jit_accumulate(params, frozen, other, acc, put(micros[i].arrays))
            stats = jax.device_get(stats)
            for k in seg_sums:
                seg_sums[k] += float(stats[k])
            for j, r in enumerate(micros[i].rows):
                row_h[r] = float(stats["row_h"][j])
                seg_h.append(row_h[r])
            i += 1
        scale = 1.0 if segment_scale is None else float(segment_scale(seg, np.asarray(seg_h)))
        total = _scale_add(total, acc, jnp.float32(scale))
        seg_sums["loss"] *= scale
        for k in sums:
            sums[k] += seg_sums[k]
    return total, sums, row_h


def optimizer_step(fns: RLFns, state: step_lib.TrainState, frozen, other, micros: Sequence[Micro], put: Put,
                   segment_scale: SegmentScale | None = None) -> tuple[step_lib.TrainState, dict[str, float], dict[int, float]]:
    """One optimizer step over `micros`, normalised by their response-token count (counted on the host)."""
    denom = float(max(sum(m.tokens for m in micros), 1))
    total, sums, row_h = accumulate(fns, state.params, frozen, other, micros, put, segment_scale)
    state, m = fns.jit_apply(state, frozen, other, {"grads": total, "denom": jnp.float32(denom)})
    metrics = {"loss": sums["loss"] / denom, "grad_norm": float(m["grad_norm"]), "response_tokens": denom,
               **{f"sum/{k}": sums[k] for k in COUNTS}}
    return state, metrics, row_h
