"""The RL update on a small random model: micro-batches of different padded lengths accumulate to the update
of one batch (and the reference's keep-the-last-micro-batch behaviour would differ); TAURA with equal turn
entropies is GRPO exactly, with unequal ones it is GRPO with the advantages times the weights; TAURA's
entropies taken from the loss's own forward (group segments scaled afterwards) equal given weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_small_vocab import VOCAB, small_config

from omniagent_jax.model import Thinker
from omniagent_jax.train import optim
from omniagent_jax.train import step as step_lib
from omniagent_jax.train.rl.advantages import taura_from_row_entropy
from omniagent_jax.train.rl.batch import pack
from omniagent_jax.train.rl.update import RLFns, accumulate, optimizer_step

BUCKETS = (16, 32)
PUT = lambda a: {k: jnp.asarray(v) for k, v in a.items()}  # noqa: E731


@pytest.fixture(scope="module")
def setup():
    model = Thinker(small_config(), dtype=jnp.float32, rngs=nnx.Rngs(3))
    graphdef, params, frozen, other = optim.split_model(model, (r"^audio_tower\.", r"^visual\."))
    rng = np.random.default_rng(0)
    rows, groups = [], []
    for i, (p, r) in enumerate([(5, 4), (20, 6), (9, 3), (25, 5), (3, 8), (12, 2)]):
        ids = rng.integers(0, 300, p + r).astype(np.int32)
        n = p + r
        targets = np.zeros(n, np.int32)
        targets[:-1] = ids[1:]
        mask = np.zeros(n, bool)
        mask[p - 1 : n - 1] = True
        logp = np.where(mask, rng.normal(-6.2, 1.0, n), 0).astype(np.float32)  # some IS weights get truncated
        positions = np.broadcast_to(np.arange(n), (3, n)).astype(np.int32)
        rows.append({"input_ids": ids, "positions": positions, "targets": targets, "loss_mask": mask, "logp_rollout": logp})
        groups.append("g0" if i < 3 else "g1")
    adv = rng.normal(size=len(rows)).astype(np.float32)
    return graphdef, params, frozen, other, rows, groups, adv


def micro_batches(rows, adv, row_w, *, per_micro, buckets, order=None, segments=None):
    order = list(range(len(rows))) if order is None else order
    if segments is None:
        return pack(rows, order, adv=adv, row_w=row_w, rows_per_micro=per_micro, buckets=buckets, hidden=64, media=False)
    out = []
    for seg in dict.fromkeys(segments[i] for i in order):
        members = [i for i in order if segments[i] == seg]
        out += pack(rows, members, adv=adv, row_w=row_w, rows_per_micro=per_micro, buckets=buckets, hidden=64, media=False,
                    segment=seg)
    return out


def normalised(fns, setup, micros, scale=None):
    _, params, frozen, other, *_ = setup
    total, sums, row_h = accumulate(fns, params, frozen, other, micros, PUT, scale)
    denom = sum(m.tokens for m in micros)
    return jax.tree.map(lambda g: np.asarray(g) / denom, total), sums, row_h


def max_diff(a, b) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_micro_batches_of_any_length_equal_one_batch_and_the_reference_would_not(setup):
    graphdef, params, frozen, other, rows, _, adv = setup
    tx = optax.sgd(1.0)
    fns = RLFns(graphdef, tx, chunk=16, taura=False)
    ones = np.ones(len(rows), np.float32)
    micros = micro_batches(rows, adv, ones, per_micro=2, buckets=BUCKETS)
    assert sorted({m.arrays["input_ids"].shape[-1] for m in micros}) == [16, 32] and len(micros) >= 3
    one = micro_batches(rows, adv, ones, per_micro=len(rows), buckets=(32,))
    assert len(one) == 1
    g_micro, sums, _ = normalised(fns, setup, micros)
    g_one, sums_one, _ = normalised(fns, setup, one)
    assert max_diff(g_micro, g_one) <= 1e-6
    assert sums["tokens"] == sums_one["tokens"] == sum(r["loss_mask"].sum() for r in rows)
    assert 0 < sums["is_truncated"] < sums["tokens"]  # the IS cap is hit on some tokens
    # The whole optimizer step: the same new parameters.
    s1, m1, _ = optimizer_step(fns, step_lib.init_state(jax.tree.map(jnp.copy, params), tx, 0), frozen, other, micros, PUT)
    s2, m2, _ = optimizer_step(fns, step_lib.init_state(jax.tree.map(jnp.copy, params), tx, 0), frozen, other, one, PUT)
    assert max_diff(s1.params, s2.params) <= 1e-6 and m1["loss"] == pytest.approx(m2["loss"], rel=1e-6)
    # The reference zeroes the gradient at each mini-batch and steps once: only the last one's (token-mean) survives.
    g_last, _, _ = normalised(fns, setup, micros[-1:])
    assert max_diff(g_last, g_one) > 1e-3


def test_taura_with_equal_entropies_is_grpo_exactly_and_unequal_ones_weight_the_advantages(setup):
    graphdef, _, _, _, rows, groups, adv = setup
    tx = optax.sgd(1.0)
    grpo = RLFns(graphdef, tx, chunk=16, taura=False)
    taura = RLFns(graphdef, tx, chunk=16, taura=True, forward_entropy=False)
    equal = taura_from_row_entropy(np.full(len(rows), 2.3), groups).astype(np.float32)
    assert (equal == 1.0).all()
    ones = np.ones(len(rows), np.float32)
    g_grpo, _, _ = normalised(grpo, setup, micro_batches(rows, adv, ones, per_micro=2, buckets=BUCKETS))
    g_equal, _, _ = normalised(taura, setup, micro_batches(rows, adv, equal, per_micro=2, buckets=BUCKETS))
    assert max_diff(g_grpo, g_equal) == 0.0

    w = taura_from_row_entropy(np.array([1.0, 2.0, 3.0, 0.5, 4.0, 1.5]), groups).astype(np.float32)
    g_taura, _, _ = normalised(taura, setup, micro_batches(rows, adv, w, per_micro=2, buckets=BUCKETS))
    g_scaled, _, _ = normalised(grpo, setup, micro_batches(rows, adv * w, ones, per_micro=2, buckets=BUCKETS))
    assert max_diff(g_taura, g_scaled) <= 1e-6 and max_diff(g_taura, g_grpo) > 1e-4


def test_taura_from_the_forward_equals_the_weights_it_implies(setup):
    """No extra pass: each group is a segment scaled by 1/(mean_g h + eps) after its rows ran."""
    graphdef, params, frozen, other, rows, groups, adv = setup
    tx = optax.sgd(1.0)
    ones = np.ones(len(rows), np.float32)
    forward = RLFns(graphdef, tx, chunk=16, taura=True, forward_entropy=True)

    def scale(seg, h):
        return 1.0 / (h.mean() + 1e-8)

    order = [5, 0, 3, 1, 4, 2]  # rows out of order, groups interleaved in the input
    micros = micro_batches(rows, adv, ones, per_micro=2, buckets=BUCKETS, order=order, segments=groups)
    g_fwd, sums, row_h = normalised(forward, setup, micros, scale)
    h = np.array([row_h[i] for i in range(len(rows))])
    # The same h from a forward-only pass over each row (the trainer's entropies).
    one = micro_batches(rows, adv, ones, per_micro=len(rows), buckets=(32,))[0]
    logp, ent = forward.jit_token_stats(params, frozen, other, PUT(one.arrays))
    m = one.arrays["loss_mask"][0] > 0
    h_pass = (np.where(m, np.asarray(ent), 0).sum(-1) / m.sum(-1))
    np.testing.assert_allclose(h, h_pass, rtol=1e-5)
    w = taura_from_row_entropy(h, groups).astype(np.float32)
    given = RLFns(graphdef, tx, chunk=16, taura=True, forward_entropy=False)
    g_given, sums_given, _ = normalised(given, setup, micro_batches(rows, adv, w, per_micro=2, buckets=BUCKETS))
    assert max_diff(g_fwd, g_given) <= 1e-6
    assert sums["loss"] == pytest.approx(sums_given["loss"], rel=1e-5)
    assert VOCAB == 512
