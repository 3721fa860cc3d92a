"""Rollouts → turn rows on the toy bandit's warmed-up model: a multi-turn episode with a frame; every row's
log-probs recomputed by the trainer's forward equal the sampler's (fp32, <= 1e-4), and so do TAURA's
entropies (so `algo.taura_entropy: sampler` and `trainer` agree); groups with a broken video are left out
and counted; invalid non-terminal turns leave the batch with retry_on_format_error."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from rl_helpers import bandit_task

from omniagent_jax.engine import Engine, SamplingParams
from omniagent_jax.engine.policy import JaxPolicy
from omniagent_jax.model import Thinker
from omniagent_jax.processing import OmniProcessor
from omniagent_jax.train import optim
from omniagent_jax.train import step as step_lib
from omniagent_jax.train.rl import bandit
from omniagent_jax.train.rl.batch import pack
from omniagent_jax.train.rl.config import load_rl_config
from omniagent_jax.train.rl.rollout import env_config, play
from omniagent_jax.train.rl.rows import TurnRow, episode_reward, keep_rows, prepare_row
from omniagent_jax.train.rl.trainer import make_fns, with_bandit
from omniagent_jax.train.rl.updater import update_on_rows

PUT = lambda a: {k: jnp.asarray(v) for k, v in a.items()}  # noqa: E731


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    task = bandit_task(tmp_path_factory)
    cfg = with_bandit(load_rl_config("configs/rl/tiny.yaml", [f"bandit_dir={task.root}", "rollout.n=3", "progress=false"]))
    model = Thinker.from_pretrained(task.init, dtype=jnp.float32)
    processor = OmniProcessor.from_pretrained(task.init)
    engine = Engine(model, page_size=16, num_pages=256, max_batch=8, decode_steps=4)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=8)
    policy = JaxPolicy(engine, processor, sampling, logprobs=True, keep_prompts=True)
    broken = dataclasses.replace(bandit.sample(task.root, "A"), video=str(task.root / "missing.mp4"))
    samples = [bandit.sample(task.root, "A"), bandit.sample(task.root, "B"), broken]
    batch = play(cfg, 0, samples, policy, env_config(cfg))
    return cfg, model, policy, batch


def test_rows_are_the_turns_as_the_engine_saw_them(played):
    cfg, model, policy, batch = played
    assert batch.dropped_groups == 1 and batch.metrics["dropped_groups"] == 1  # the missing video's group
    distinct = [len({episode_reward(batch.results[f"s0-p{j}-r{k}"]) for k in range(3)}) for j in range(2)]
    assert batch.metrics["groups_with_signal"] == sum(d > 1 for d in distinct) / 2
    assert {r.group for r in batch.rows} == {"s0-p0", "s0-p1"}
    with_media = [r for r in batch.rows if r.media is not None and not r.media.empty]
    assert with_media and max(r.turn for r in batch.rows) >= 2  # multi-turn episodes, a frame in the later prompts
    for r in batch.rows:
        record = batch.results[r.traj].steps[r.turn - 1]
        assert np.array_equal(r.prompt_ids, policy.request(record.raw_input).input_ids)
        assert r.reward == batch.results[r.traj].total_reward * (batch.results[r.traj].end_reason == "ANSWERED")
        assert (r.group, r.traj) in batch.traj_adv

    graphdef, params, frozen, other = optim.split_model(model, (r"^audio_tower\.", r"^visual\."))
    fns = make_fns(cfg, graphdef, None)
    prepared = [prepare_row(model, r) for r in batch.rows]
    n = len(prepared)
    worst_lp = worst_ent = 0.0
    for m in pack(prepared, range(n), adv=np.zeros(n), row_w=np.ones(n), rows_per_micro=8, buckets=cfg.buckets, hidden=64,
                  media=True):
        logp, ent = (np.asarray(x) for x in fns.jit_token_stats(params, frozen, other, PUT(m.arrays)))
        for j, i in enumerate(m.rows):
            mask = m.arrays["loss_mask"][0, j] > 0
            worst_lp = max(worst_lp, float(np.abs(logp[j][mask] - batch.rows[i].logprobs).max()))
            worst_ent = max(worst_ent, float(np.abs(ent[j][mask] - batch.rows[i].entropies).max()))
    assert worst_lp <= 1e-4 and worst_ent <= 1e-4


def test_taura_entropies_from_the_sampler_and_the_trainer_agree(played):
    cfg, model, _, batch = played
    graphdef, params, frozen, other = optim.split_model(model, (r"^audio_tower\.", r"^visual\."))
    tx = optax.sgd(1.0)  # the gradients themselves (Adam's normalisation would magnify float noise near 0)
    out = {}
    for source in ("trainer", "sampler"):
        c = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, taura_entropy=source))
        fns = make_fns(c, graphdef, tx)
        state = step_lib.init_state(jax.tree.map(jnp.copy, params), tx, 0)
        out[source] = update_on_rows(c, fns, state, frozen, other, model, batch, PUT)
    (s1, m1), (s2, m2) = out["trainer"], out["sampler"]
    assert m1["entropy_weight/std"] > 0 and m1["entropy_weight/mean"] == pytest.approx(m2["entropy_weight/mean"], abs=1e-5)
    assert m1["loss"] == pytest.approx(m2["loss"], abs=1e-5)
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)))
    assert diff <= 1e-5


def test_retry_on_format_error_drops_invalid_non_terminal_turns():
    def row(turn, valid, terminal, n=2):
        return TurnRow("g", "t", turn, np.zeros(3, np.int32), None, np.zeros(n, np.int32), np.zeros(n, np.float32), None, 0.0,
                       valid, terminal)

    rows = [row(1, False, False), row(2, True, False), row(3, False, True), row(4, True, True, n=0)]
    assert [r.turn for r in keep_rows(rows, True)] == [2, 3]
    assert [r.turn for r in keep_rows(rows, False)] == [1, 2, 3]


def test_epochs_mini_batches_and_kl_take_a_separate_old_pass(played):
    cfg, model, _, batch = played
    graphdef, params, frozen, other = optim.split_model(model, (r"^audio_tower\.", r"^visual\."))
    algo = dataclasses.replace(cfg.algo, ppo_epochs=2, mini_batches=2, kl="k3", kl_coef=0.1)
    c = dataclasses.replace(cfg, algo=algo)
    tx = optax.sgd(1e-2)
    fns = make_fns(c, graphdef, tx)
    assert fns.old_given and not fns.forward_entropy
    state = step_lib.init_state(jax.tree.map(jnp.copy, params), tx, 0)
    new, m = update_on_rows(c, fns, state, frozen, other, model, batch, PUT, ref=params)
    assert int(new.step) == 4 and np.isfinite(m["loss"]) and m["entropy_weight/std"] > 0
    # The second epoch sees a ratio away from 1: the old log-probs are the batch's, not the current weights'.
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params))) > 0
