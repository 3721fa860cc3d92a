"""The jitted SFT train step: every micro-batch accumulated, one optimizer update, donated state.

Gradient accumulation sums the per-token loss **and** the gradients of that sum over all K
micro-batches, then divides both by the target-token count of the whole accumulated batch. So K
micro-batches give exactly the update of one batch of all of them, whatever each micro-batch's
target count (docs/training.md §5: the reference keeps only the last mini-batch's gradient; we keep all).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from omniagent_jax.train.forward import hidden_states, input_embeddings
from omniagent_jax.train.loss import chunked_cross_entropy

Batch = dict[str, jax.Array]  # every array has a leading micro-batch axis [K, ...]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything an optimizer step changes; `frozen` params live outside it and are never donated."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: nnx.State  # trainable parameters only
    opt_state: Any  # optax state over `params` only
    rng: jax.Array  # uint32 key data, advanced every step (dropout-free today; restored on resume)


class _PinnedStep:
    """A jitted train step whose output state keeps the input state's shardings (one compile per
    state layout). Left free, XLA re-lays out some leaves (replicated norm weights came back
    fsdp-sharded), which defeats the in-place donation and drifts from the layout that a
    checkpoint restores into."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled: dict = {}

    def __call__(self, state: TrainState, frozen: nnx.State, other: nnx.State, batch: Batch) -> tuple[TrainState, dict]:
        shardings = jax.tree.map(lambda x: x.sharding, state)
        key = (jax.tree.structure(state), tuple(jax.tree.leaves(shardings)))
        if key not in self.compiled:
            self.compiled[key] = jax.jit(self.fn, donate_argnums=(0,), out_shardings=(shardings, None))
        return self.compiled[key](state, frozen, other, batch)


@dataclasses.dataclass(frozen=True)
class StepFns:
    """The compiled functions of one run (static model structure + optimizer)."""

    graphdef: Any
    tx: optax.GradientTransformation
    remat: str = "none"
    loss_chunk: int = 1024
    skip_empty_chunks: bool = False  # single-device runs only (see chunked_cross_entropy)

    def loss_sums(self, params: nnx.State, frozen: nnx.State, other: nnx.State, mb: Batch) -> tuple[jax.Array, jax.Array]:
        """(sum of target-token losses, target count) of one micro-batch."""
        model = nnx.merge(self.graphdef, params, frozen, other)
        embeds = input_embeddings(model, mb["input_ids"], mb.get("media_embeds"), mb.get("media_mask"))
        hidden = hidden_states(model, embeds, mb["positions"], mb["attention_mask"], self.remat)
        return chunked_cross_entropy(
            hidden, model.lm_head.kernel[...], mb["labels"], chunk=self.loss_chunk, skip_empty=self.skip_empty_chunks
        )

    def grads(self, params, frozen, other, batch: Batch):
        """Accumulated (loss, grads, target count) over the K micro-batches of `batch`, normalised
        by the whole batch's target count."""

        def body(carry, mb):
            g_acc, loss_acc, count_acc = carry
            (loss_sum, count), g = jax.value_and_grad(lambda p: self.loss_sums(p, frozen, other, mb), has_aux=True)(params)
            g_acc = jax.tree.map(lambda a, b: a + b.astype(a.dtype), g_acc, g)
            return (g_acc, loss_acc + loss_sum, count_acc + count), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (g_sum, loss_sum, count), _ = jax.lax.scan(body, init, batch)
        denom = jnp.maximum(count, 1.0)  # an all-prompt batch has zero loss and zero gradient
        grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), g_sum, params)
        return loss_sum / denom, grads, count

    def train_step(self, state: TrainState, frozen: nnx.State, other: nnx.State, batch: Batch) -> tuple[TrainState, dict]:
        loss, grads, count = self.grads(state.params, frozen, other, batch)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        rng = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(state.rng))[0])
        metrics = {"loss": loss, "target_tokens": count, "grad_norm": optax.tree.norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, rng=rng), metrics

    @functools.cached_property
    def jit_train_step(self) -> _PinnedStep:
        """`train_step` jitted with the state donated (updated in place: no second copy of params + Adam
        moments) and the new state pinned to the old one's shardings."""
        return _PinnedStep(self.train_step)

    @functools.cached_property
    def jit_grads(self):
        return jax.jit(self.grads)


def _replicated(params: Any) -> jax.sharding.Sharding:
    """A whole-array sharding on the devices the parameters live on (their mesh, or one device)."""
    sharding = jax.tree.leaves(params)[0].sharding
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec())
    return sharding


def opt_state_shardings(tx: optax.GradientTransformation, params: Any) -> Any:
    """Each optimizer moment in its parameter's sharding, every other leaf (counts) replicated.

    Explicit because a jitted `tx.init` does not inherit them: with Auto mesh axes the moments'
    `zeros_like` has no data dependence on the parameters and XLA places them on one device — at
    7B, both Adam moments on device 0."""
    param_shardings = jax.tree.map(lambda p: p.sharding, params)
    rep = _replicated(params)
    abstract = jax.eval_shape(tx.init, params)
    return optax.tree_utils.tree_map_params(tx, lambda _, s: s, abstract, param_shardings, transform_non_params=lambda _: rep)


def _rng_data(seed: int) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed))


def init_state(params: nnx.State, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state over `params`; every optimizer leaf is created directly in its sharding."""
    shardings = opt_state_shardings(tx, params)
    opt_state = jax.jit(tx.init, out_shardings=shardings)(params)
    rep = _replicated(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), rep)
    return TrainState(step=step, params=params, opt_state=opt_state, rng=jax.device_put(_rng_data(seed), rep))


def abstract_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """The `TrainState` that `init_state` would build, as `ShapeDtypeStruct`s with shardings and no
    memory: the restore target of a resume. `params` are `ShapeDtypeStruct`s carrying shardings."""
    shardings = opt_state_shardings(tx, params)
    sds = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
    opt_state = jax.tree.map(sds, jax.eval_shape(tx.init, params), shardings)
    rep = _replicated(params)
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    return TrainState(step=step, params=params, opt_state=opt_state, rng=sds(jax.eval_shape(_rng_data, 0), rep))


# Dimension of the per-example axis in each batch array (after the leading micro-batch axis).
BATCH_DIMS = {"positions": 2}


def batch_shardings(batch: Batch, mesh) -> dict:
    """Shard every batch array over the data-parallel mesh axes along its example dimension."""
    from omniagent_jax.train.mesh import batch_sharding

    return {k: batch_sharding(mesh, np.ndim(v), BATCH_DIMS.get(k, 1)) for k, v in batch.items()}


def put_batch(batch: Batch, mesh) -> Batch:
    """Host batch (this process's rows when multi-host) → global arrays sharded over the mesh."""
    shardings = batch_shardings(batch, mesh)
    if jax.process_count() == 1:
        return {k: jax.device_put(v, shardings[k]) for k, v in batch.items()}
    out = {}
    for k, v in batch.items():
        dim = BATCH_DIMS.get(k, 1)
        global_shape = list(np.shape(v))
        global_shape[dim] *= jax.process_count()
        out[k] = jax.make_array_from_process_local_data(shardings[k], np.asarray(v), tuple(global_shape))
    return out
