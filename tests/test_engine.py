"""Inference engine: greedy parity with `transformers.generate`, log-probs/entropies, prefix reuse
(multi-turn and a group of rollouts) gives identical outputs, no page leaks, preemption."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_thinker_media import build_case  # skips this module too when torch_ref cannot be imported

from omniagent_jax.engine import Engine, PagePool, Request, SamplingParams
from omniagent_jax.engine.pages import page_hashes
from omniagent_jax.processing.media_inputs import MediaInputs

torch_ref = pytest.importorskip("torch_ref")

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=10, stop_token_ids=(), logprobs=True)


@pytest.fixture(scope="module")
def pair(reference_pairs):
    ref, ours, _ = reference_pairs("tiny.yaml")
    return ref, ours


def reference_generate(ref, ids, n, **inputs):
    """Greedy continuation by transformers, plus its per-step logits."""
    with torch.no_grad():
        out = ref.generate(
            input_ids=torch.as_tensor(ids[None]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n, do_sample=False, output_logits=True, return_dict_in_generate=True,
            **{k: torch.as_tensor(v) for k, v in inputs.items()},
        )
    return out.sequences[0, len(ids):].tolist(), torch.stack(out.logits)[:, 0].float().numpy()


def assert_same_or_near_tie(ours: list[int], theirs: list[int], their_logits: np.ndarray):
    """Token-identical, or the first divergence is a near-tie of the reference (top-2 gap < 1e-4)."""
    if ours == theirs:
        return
    step = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    top2 = np.sort(their_logits[step])[-2:]
    assert top2[1] - top2[0] < 1e-4, (
        f"diverged at step {step}: ours {ours[step]} vs reference {theirs[step]}, gap {top2[1] - top2[0]:.3g}"
    )


def test_greedy_text_batch_matches_transformers_generate(pair):
    ref, model = pair
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 150_000, n) for n in (3, 17, 42)]
    engine = Engine(model, page_size=8, num_pages=64, max_batch=4)
    outs = engine.generate([Request(p, GREEDY) for p in prompts])
    for prompt, out in zip(prompts, outs):
        want, logits = reference_generate(ref, prompt, GREEDY.max_new_tokens)
        assert_same_or_near_tie(out.tokens, want, logits)
        # per-token log-probs = log-softmax of the reference's logits at the chosen token; entropy from the same
        logp = torch.log_softmax(torch.as_tensor(logits), -1).numpy()
        np.testing.assert_allclose(out.logprobs, logp[np.arange(len(want)), want], atol=1e-4)
        np.testing.assert_allclose(out.entropies, -(np.exp(logp) * logp).sum(-1), atol=1e-4)
    engine.pool.check_no_leak()


@pytest.mark.parametrize("case", ["image+text", "audio+text", "video+audio_in_video"])
def test_greedy_with_media_matches_transformers_generate(pair, case):
    ref, model = pair
    ids, mask, inputs, aiv = build_case(case, ref)
    ids = ids[0][mask[0] == 1]
    engine = Engine(model, page_size=8, num_pages=64)
    out = engine.generate([Request(ids, GREEDY, media=MediaInputs.from_processor_output(inputs, use_audio_in_video=aiv))])[0]
    want, logits = reference_generate(ref, ids, GREEDY.max_new_tokens, use_audio_in_video=aiv, **inputs)
    assert_same_or_near_tie(out.tokens, want, logits)
    assert engine.stats.tower_items == sum(k in inputs for k in ("pixel_values", "pixel_values_videos", "input_features"))


def test_multi_turn_prefix_reuse_gives_identical_outputs(pair):
    """An episode grows turn by turn; with reuse only the new suffix is prefilled, outputs unchanged."""
    _, model = pair
    rng = np.random.default_rng(1)
    params = SamplingParams(temperature=1.0, top_k=50, max_new_tokens=6, stop_token_ids=(), seed=7)
    reuse = Engine(model, page_size=8, num_pages=128)
    history = rng.integers(0, 150_000, 30)
    prefilled_with, prefilled_without = 0, 0
    for turn in range(4):
        before = reuse.stats.prefilled_tokens
        out = reuse.generate([Request(history, params)])[0]
        prefilled_with += reuse.stats.prefilled_tokens - before
        fresh = Engine(model, page_size=8, num_pages=128)
        again = fresh.generate([Request(history, params)])[0]
        prefilled_without += fresh.stats.prefilled_tokens
        assert out.tokens == again.tokens, f"turn {turn}: reuse changed the output"
        if turn:
            assert out.cached_tokens >= (len(history) - 20) // 8 * 8
        history = np.concatenate([history, out.tokens, rng.integers(0, 150_000, 9)])
    assert prefilled_with < prefilled_without / 2
    reuse.pool.check_no_leak()


def test_group_of_rollouts_shares_the_prompt(pair):
    _, model = pair
    prompt = np.random.default_rng(2).integers(0, 150_000, 45)
    group = [Request(prompt, SamplingParams(temperature=1.0, max_new_tokens=5, stop_token_ids=(), seed=s)) for s in range(8)]
    shared = Engine(model, page_size=8, num_pages=128, max_batch=8)
    outs = shared.generate(group)
    assert shared.stats.prefilled_tokens < 2 * len(prompt)  # one full prefill + 7 short tails
    singles = [Engine(model, page_size=8, num_pages=128).generate([r])[0] for r in group[:3]]
    for a, b in zip(outs, singles):
        assert a.tokens == b.tokens  # a request's samples do not depend on its batch
    assert len({tuple(o.tokens) for o in outs}) > 1  # different seeds, different rollouts
    shared.pool.check_no_leak()


def test_no_page_leaks_after_finished_stopped_and_cancelled(pair):
    _, model = pair
    rng = np.random.default_rng(3)
    engine = Engine(model, page_size=4, num_pages=64, max_batch=4)
    first = engine.generate([Request(rng.integers(0, 150_000, 9), SamplingParams(temperature=0, max_new_tokens=1))])[0]
    first_greedy = first.tokens[0]
    ids = [
        engine.submit(Request(
            rng.integers(0, 150_000, 9), SamplingParams(temperature=0, max_new_tokens=50, stop_token_ids=(first_greedy,))
        )),
        engine.submit(Request(rng.integers(0, 150_000, 13), SamplingParams(max_new_tokens=3, stop_token_ids=()))),
        engine.submit(Request(rng.integers(0, 150_000, 21), SamplingParams(max_new_tokens=40, stop_token_ids=()))),
        engine.submit(Request(rng.integers(0, 150_000, 5), SamplingParams(max_new_tokens=40, stop_token_ids=()))),
    ]
    engine.step()
    engine.step()
    engine.cancel(ids[2])  # running
    engine.cancel(ids[3])
    while engine.has_work():
        engine.step()
    done = engine.pop_finished()
    assert {done[i].finish_reason for i in ids} >= {"length", "cancelled"}
    engine.pool.check_no_leak()


def test_running_out_of_pages_preempts_and_still_returns_correct_outputs(pair):
    _, model = pair
    rng = np.random.default_rng(4)
    requests = [
        Request(rng.integers(0, 150_000, n), SamplingParams(temperature=0, max_new_tokens=20, stop_token_ids=()))
        for n in (10, 14, 12, 9)
    ]
    roomy = Engine(model, page_size=4, num_pages=128).generate(requests)
    tight = Engine(model, page_size=4, num_pages=16, max_batch=4)  # 15 usable pages for 4 × ~8 needed
    outs = tight.generate(requests)
    assert tight.stats.preemptions > 0
    assert [o.tokens for o in outs] == [o.tokens for o in roomy]
    tight.pool.check_no_leak()


def test_request_that_can_never_fit_is_refused(pair):
    _, model = pair
    engine = Engine(model, page_size=4, num_pages=4)
    with pytest.raises(ValueError, match="needs up to .* pages"):
        engine.submit(Request(np.arange(30), SamplingParams(max_new_tokens=10)))


def test_page_hashes_distinguish_media_content_and_positions():
    ids = np.full(8, 151655)
    pos = np.tile(np.arange(8), (3, 1))
    a = page_hashes(ids, np.arange(8, dtype=np.uint64) + 1, pos, 4)
    b = page_hashes(ids, np.arange(8, dtype=np.uint64) + 99, pos, 4)
    c = page_hashes(ids, np.arange(8, dtype=np.uint64) + 1, pos + 1, 4)
    assert len(a) == 2 and a != b and a != c
    assert a == page_hashes(ids, np.arange(8, dtype=np.uint64) + 1, pos, 4)
    assert len(page_hashes(ids[:7], np.zeros(7, np.uint64), pos[:, :7], 4)) == 1  # only full pages
    # continuing a chain from known hashes gives the hashes of hashing everything again
    keys = np.arange(8, dtype=np.uint64) + 1
    assert page_hashes(ids, keys, pos, 4, known=a[:1]) == a
    assert page_hashes(ids, keys, pos, 4, known=[b"x" * 16])[1] != a[1]


def test_page_pool_accounting_and_errors():
    pool = PagePool(5, 4)
    pages = pool.allocate(3)
    assert 0 not in pages and pool.num_free == 1
    pool.prefix.insert(b"h", pages[0])
    pool.release(pages)
    assert pool.num_free == 4 and pool.prefix.match([b"h"]) == [pages[0]]
    again = pool.allocate(4)  # evicts the cached page last
    assert pool.prefix.match([b"h"]) == []
    pool.release(again)
    pool.check_no_leak()
    with pytest.raises(ValueError, match="not referenced"):
        pool.release([again[0]])
    with pytest.raises(ValueError, match="at least 2 pages"):
        PagePool(1, 4)
    # dropping the prefix cache: evictable pages are free at once, held ones lose their hash and free on release
    held, idle = pool.allocate(1), pool.allocate(1)
    pool.prefix.insert(b"held", held[0])
    pool.prefix.insert(b"idle", idle[0])
    pool.release(idle)
    pool.drop_prefix_cache()
    assert pool.prefix.match([b"held"]) == [] and pool.prefix.match([b"idle"]) == [] and idle[0] in pool.free
    pool.release(held)
    assert held[0] in pool.free and not pool.prefix.evictable
    pool.check_no_leak()


def test_sampling_truncation_and_reproducibility():
    """top-k 1 is greedy; top-p keeps the smallest set reaching p; the same seed and step give the same token."""
    import jax.numpy as jnp

    from omniagent_jax.engine.sampling import sample_tokens, sampling_arrays

    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 4))
    rows = [
        SamplingParams(temperature=1.0, top_k=1, seed=0),
        SamplingParams(temperature=1.0, top_p=0.7, seed=1),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, seed=5),
    ]
    seen_top_p = set()
    for step in range(60):
        token, logp, entropy = (np.asarray(x) for x in sample_tokens(logits, *sampling_arrays(rows, [step] * 4)))
        assert token[0] == 0 and token[2] == 0
        seen_top_p.add(int(token[1]))
        np.testing.assert_allclose(logp, np.log([0.5, 0.3, 0.15, 0.05])[token], rtol=1e-5)
        again = np.asarray(sample_tokens(logits, *sampling_arrays(rows, [step] * 4))[0])
        assert (again == token).all()
        # an untruncated row draws the same whether or not another row in its batch truncates
        mixed = jnp.asarray(np.random.default_rng(step).standard_normal((2, 50)), jnp.float32)
        pair_rows = [SamplingParams(temperature=1.0, top_k=3, seed=1), SamplingParams(temperature=1.0, seed=2)]
        with_truncation = np.asarray(sample_tokens(mixed, *sampling_arrays(pair_rows, [step] * 2))[0])
        assert with_truncation[1] == np.asarray(sample_tokens(mixed[1:], *sampling_arrays(pair_rows[1:], [step]))[0])[0]
    assert seen_top_p == {0, 1}  # 0.5 + 0.3 reach 0.7; tokens 2 and 3 are cut
    np.testing.assert_allclose(entropy, -(np.array([0.5, 0.3, 0.15, 0.05]) * np.log([0.5, 0.3, 0.15, 0.05])).sum(), rtol=1e-5)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_towers_do_not_rerun_for_media_in_the_cached_prefix(pair):
    ref, model = pair
    ids, mask, inputs, _ = build_case("image+text", ref)  # the prompt ends with 7 text tokens
    ids = ids[0][mask[0] == 1]
    engine = Engine(model, page_size=4, num_pages=128)
    params = SamplingParams(temperature=0.0, max_new_tokens=3, stop_token_ids=())
    first = engine.generate([Request(ids, params, media=inputs)])[0]
    assert engine.stats.tower_items == 1
    again = engine.generate([Request(ids, params, media=inputs)])[0]
    assert engine.stats.tower_items == 1  # the image's tokens all sit in cached pages
    assert again.tokens == first.tokens and again.cached_tokens >= len(ids) - 4
    # the same placeholders over different pixels must not hit the cache
    other = dict(inputs, pixel_values=inputs["pixel_values"] + 0.5)
    engine.generate([Request(ids, params, media=other)])
    assert engine.stats.tower_items == 2
    engine.pool.check_no_leak()


def test_multi_step_decode_equals_one_step_per_dispatch(pair):
    """`decode_steps` only changes how many tokens one dispatch produces: tokens, log-probs, entropies
    and finish reasons are those of one step per dispatch, including rows that stop inside a block."""
    _, model = pair
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, 150_000, n) for n in (6, 11, 19, 4)]
    probe = Engine(model, page_size=4, num_pages=128, decode_steps=1)
    greedy = probe.generate([Request(prompts[0], SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=()))])[0].tokens
    stop = greedy[5]  # stops the first prompt's greedy row mid-block
    params = [
        SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=(stop,), logprobs=True),
        SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=13, stop_token_ids=(), seed=7, logprobs=True),
        SamplingParams(temperature=0.8, top_k=5, max_new_tokens=3, stop_token_ids=(), seed=1, logprobs=True),
        SamplingParams(temperature=1.0, max_new_tokens=17, stop_token_ids=(), seed=2, logprobs=True),
    ]
    runs = {}
    for k in (1, 3, 8):
        engine = Engine(model, page_size=4, num_pages=128, max_batch=4, decode_steps=k)
        runs[k] = engine.generate([Request(p, s) for p, s in zip(prompts, params)])
        engine.pool.check_no_leak()
    assert runs[1][0].finish_reason == "stop" and len(runs[1][0].tokens) == greedy.index(stop) + 1
    for k in (3, 8):
        for one, many in zip(runs[1], runs[k]):
            assert (many.tokens, many.finish_reason) == (one.tokens, one.finish_reason)
            np.testing.assert_allclose(many.logprobs, one.logprobs, atol=1e-5)
            np.testing.assert_allclose(many.entropies, one.entropies, atol=1e-5)
    with pytest.raises(ValueError, match="decode_steps"):
        Engine(model, decode_steps=0)


def test_update_weights_drops_the_prefix_cache_and_matches_a_fresh_engine(pair):
    """One decoder layer changes: the repeated prompt is recomputed (no cached tokens) and scores as a
    fresh engine on the new weights does; the engine owns copies of the weights it was given and
    never donates the arrays of the model it was built on."""
    _, model = pair
    import jax
    import jax.numpy as jnp
    from flax import nnx

    prompt = np.arange(5, 30)
    params = SamplingParams(temperature=0, max_new_tokens=5, stop_token_ids=(), logprobs=True)
    graphdef, state = nnx.split(model)
    own = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))
    engine = Engine(own, page_size=4, num_pages=64)
    assert engine.model is not own and all(a is b for a, b in zip(jax.tree.leaves(engine.model), jax.tree.leaves(own)))
    before = engine.generate([Request(prompt, params)])[0]
    assert engine.generate([Request(prompt, params)])[0].cached_tokens > 0  # the cache is live

    new = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    q = new["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
    q[...] = q[...] + jax.random.normal(jax.random.key(0), q.shape, q.dtype)
    engine.update_weights(new)
    assert not any(x.is_deleted() for x in jax.tree.leaves(nnx.state(own)))  # the model's arrays were not donated
    assert jax.tree.leaves(nnx.state(own))[0] is not jax.tree.leaves(nnx.state(engine.model))[0]
    assert not engine.pool.prefix.by_hash and len(engine.pool.free) == engine.pool.num_pages - 1  # every page is free again
    after = engine.generate([Request(prompt, params)])[0]
    fresh = Engine(nnx.merge(graphdef, new), page_size=4, num_pages=64).generate([Request(prompt, params)])[0]
    assert after.cached_tokens == 0
    assert after.tokens == fresh.tokens
    np.testing.assert_allclose(after.logprobs, fresh.logprobs, atol=1e-5)
    assert not np.allclose(after.logprobs, before.logprobs, atol=1e-3)  # the change is visible

    jax.tree.map(lambda x: x.delete(), new)  # the caller donates / frees its arrays: the engine keeps its copy
    again = engine.generate([Request(prompt, params)])[0]
    assert again.tokens == after.tokens and again.cached_tokens > 0
    np.testing.assert_allclose(again.logprobs, after.logprobs, atol=1e-5)
    engine.pool.check_no_leak()


def test_update_weights_rejects_a_mismatched_tree_and_a_busy_engine(pair):
    _, model = pair
    import jax.numpy as jnp
    from flax import nnx

    engine = Engine(model, page_size=4, num_pages=16)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    kernel = params["lm_head"]["kernel"]
    with pytest.raises(ValueError, match=r"parameter \['lm_head'\]\['kernel'\] is missing"):
        engine.update_weights({k: v for k, v in params.items() if k != "lm_head"})
    with pytest.raises(ValueError, match=r"\['lm_head'\]\['kernel'\] is float32\(3, 4\), the engine's is float32"):
        engine.update_weights({**params, "lm_head": {"kernel": jnp.zeros((3, 4))}})
    with pytest.raises(ValueError, match=r"\['lm_head'\]\['kernel'\] is bfloat16"):
        engine.update_weights({**params, "lm_head": {"kernel": kernel.astype(jnp.bfloat16)}})
    with pytest.raises(ValueError, match=r"unknown parameter \['extra'\]"):
        engine.update_weights({**params, "extra": kernel})
    rid = engine.submit(Request(np.arange(5), SamplingParams(max_new_tokens=2)))
    with pytest.raises(RuntimeError, match="idle engine: 0 running and 1 waiting"):
        engine.update_weights(nnx.state(model, nnx.Param))
    engine.cancel(rid)
    engine.update_weights(nnx.state(model, nnx.Param))  # idle again: accepted
    assert engine.generate([Request(np.arange(5), SamplingParams(temperature=0, max_new_tokens=2))])[0].finish_reason == "length"


def test_greedy_tokens_is_numpy_argmax_with_ties_and_nan():
    import jax.numpy as jnp

    from omniagent_jax.engine.sampling import greedy_tokens

    logits = np.random.default_rng(0).standard_normal((7, 1000)).astype(np.float32)
    logits[1, [3, 700]] = 9.0  # a tie across blocks: the first index wins
    logits[2, [300, 20]] = np.nan  # a NaN row: the first NaN
    logits[3] = -np.inf
    logits[5, [260, 261]] = 9.0  # a tie inside a block
    logits[6, 999] = 9.0  # in the padded last block (1000 = 7 × 128 + 104)
    want = [int(np.argmax(logits[0])), 3, 20, 0, int(np.argmax(logits[4])), 260, 999]
    assert np.argmax(logits, axis=-1).tolist() == want  # numpy's rule, NaN included (XLA's argmax picks any NaN)
    for block in (128, 1000, 7):
        assert greedy_tokens(jnp.asarray(logits), block).tolist() == want


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (5, 0.8), (3, 0.5)])
def test_top_k_fast_path_draws_the_full_sort_distribution(monkeypatch, top_k, top_p):
    """Rows with a small top_k draw from `lax.top_k` instead of a full sort: same support, same
    probabilities (4,000 draws within 0.03 of the exact truncated distribution on both paths)."""
    import jax.numpy as jnp

    from omniagent_jax.engine import sampling

    rng = np.random.default_rng(0)
    row = rng.standard_normal(50).astype(np.float32) * 2
    order = np.argsort(-row, kind="stable")
    probs = np.exp(row[order[:top_k]] - row[order[0]])
    probs /= probs.sum()
    keep = (np.cumsum(probs) - probs) < top_p
    exact = np.zeros(50)
    exact[order[:top_k][keep]] = probs[keep] / probs[keep].sum()
    n = 4000
    params = [SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, seed=3)] * n
    for cap in (64, 1):  # 1: every top_k row takes the full-sort path
        monkeypatch.setattr(sampling, "TOP_K_CAP", cap)
        arrays = [jnp.asarray(a) for a in sampling.sampling_arrays(params, list(range(n)))]
        tokens = np.asarray(sampling.choose_tokens(jnp.asarray(np.tile(row, (n, 1))), *arrays, with_stats=False)[0])
        freq = np.bincount(tokens, minlength=50) / n
        assert set(np.flatnonzero(freq)) <= set(np.flatnonzero(exact))
        np.testing.assert_allclose(freq, exact, atol=0.03)


def test_each_sampling_path_is_independent_of_batch_mates():
    import jax.numpy as jnp

    from omniagent_jax.engine.sampling import sample_tokens, sampling_arrays

    logits = jnp.asarray(np.random.default_rng(1).standard_normal((1, 300)), jnp.float32)
    rows = [SamplingParams(temperature=1.0, top_k=20, seed=1), SamplingParams(temperature=1.0, top_p=0.9, seed=2),
            SamplingParams(temperature=0.7, seed=3), SamplingParams(temperature=1.0, top_k=200, seed=4),
            SamplingParams(temperature=0)]
    for step in range(20):
        together = np.asarray(sample_tokens(jnp.tile(logits, (5, 1)), *sampling_arrays(rows, [step] * 5))[0])
        alone = [int(np.asarray(sample_tokens(logits, *sampling_arrays([r], [step]))[0])[0]) for r in rows]
        assert together.tolist() == alone
