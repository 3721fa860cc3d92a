"""The per-token RL loss: its value and its gradient w.r.t. the log-probs (against finite differences) in
every region — unclipped, clipped low, clipped high, dual-clipped, IS-truncated; the chunked fp32 log-probs
and entropies equal the full-vocabulary ones."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omniagent_jax.train.rl.loss import LossConfig, chunked_token_stats, token_loss

CFG = LossConfig()
L = np.log
# region: (adv, ratio, π_old/π_rollout, expected loss, expected dloss/dlogp, the region mask that is set)
CASES = {
    "unclipped": (1.0, 1.1, 1.5, -1.5 * 1.1, -1.5 * 1.1, None),
    "unclipped_negative": (-1.0, 1.1, 1.0, 1.1, 1.1, None),
    "clipped_low": (-1.0, 0.5, 1.0, 0.8, 0.0, "clip_low"),
    "clipped_high": (2.0, 1.6, 1.0, -2.0 * 1.3, 0.0, "clip_high"),
    "dual_clipped": (-1.0, 4.0, 1.0, 3.0, 0.0, "dual"),
    "is_truncated": (1.0, 1.0, 5.0, -2.0, -2.0, "is_truncated"),
}


@pytest.mark.parametrize("region", sorted(CASES))
def test_token_loss_value_and_gradient_match_finite_differences(region):
    adv, ratio, iw, want_loss, want_grad, mask = CASES[region]
    logp_rollout = -2.0
    logp_old = logp_rollout + L(iw)
    logp = jnp.float32(logp_old + L(ratio))
    f = lambda lp: token_loss(lp, jnp.float32(logp_old), jnp.float32(logp_rollout), jnp.float32(adv), CFG)[0]  # noqa: E731
    value, grad = jax.value_and_grad(f)(logp)
    h = 1e-3
    fd = (f(logp + h) - f(logp - h)) / (2 * h)
    assert float(value) == pytest.approx(want_loss, rel=1e-5)
    assert float(grad) == pytest.approx(want_grad, abs=1e-5)
    assert float(fd) == pytest.approx(float(grad), abs=2e-3)
    regions = token_loss(logp, jnp.float32(logp_old), jnp.float32(logp_rollout), jnp.float32(adv), CFG)[1]
    for name in ("clip_low", "clip_high", "dual", "is_truncated"):
        assert bool(regions[name]) == (name == mask), name


def test_kl_options_add_their_estimators():
    logp, ref = jnp.float32(-1.0), jnp.float32(-1.5)
    base = token_loss(logp, logp, logp, jnp.float32(0.0), CFG)[0]
    k1 = token_loss(logp, logp, logp, jnp.float32(0.0), LossConfig(kl="k1", kl_coef=0.5), ref)[0]
    k3 = token_loss(logp, logp, logp, jnp.float32(0.0), LossConfig(kl="k3", kl_coef=0.5), ref)[0]
    assert float(base) == 0.0
    assert float(k1) == pytest.approx(0.5 * 0.5, rel=1e-6)
    assert float(k3) == pytest.approx(0.5 * (np.exp(-0.5) + 0.5 - 1.0), rel=1e-5)


def test_chunked_stats_equal_the_full_logits():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(2, 7, 16)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(16, 50)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, (2, 7)), jnp.int32)
    logp, ent = chunked_token_stats(hidden, kernel, targets, chunk=4)  # 14 tokens: the last chunk is padded
    logits = jnp.einsum("btd,dv->btv", hidden, kernel)
    full = jax.nn.log_softmax(logits, -1)
    np.testing.assert_allclose(logp, jnp.take_along_axis(full, targets[..., None], -1)[..., 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent, -(jnp.exp(full) * full).sum(-1), rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda h: chunked_token_stats(h, kernel, targets, chunk=4)[0].sum())(hidden)
    g_full = jax.grad(lambda h: jnp.take_along_axis(jax.nn.log_softmax(jnp.einsum("btd,dv->btv", h, kernel), -1),
                                                    targets[..., None], -1).sum())(hidden)
    np.testing.assert_allclose(g, g_full, rtol=1e-4, atol=1e-5)
