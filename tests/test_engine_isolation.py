"""A bad request fails alone: values checked at submit (RequestError naming the field, nothing queued);
a media encode that raises, non-finite logits or a failed device call finish only their own
sequences with finish_reason "error"; the others' tokens are those they get without them, and no page leaks."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from serve_helpers import POOL  # the server tests' engine configuration: the same compiled steps

from omniagent_jax.engine import Engine, Request, RequestError, SamplingParams
from omniagent_jax.engine import engine as engine_module
from omniagent_jax.engine.paged_cache import paged_attention
from omniagent_jax.engine.pages import NULL_PAGE
from omniagent_jax.processing import OmniProcessor
from omniagent_jax.processing.media_inputs import MediaInputs

# Sampled, as the server tests' requests: the same compiled steps (seeded, so "alone" is reproducible).
PARAMS = SamplingParams(temperature=1.0, max_new_tokens=4, stop_token_ids=(), seed=5)
VOCAB = 152_064


@pytest.fixture(scope="module")
def model(reference_pairs):
    return reference_pairs("tiny.yaml")[1]


@pytest.fixture(scope="module")
def image_prompt():
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    inputs = OmniProcessor.from_pretrained()(
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "what is it?"}]}],
        add_generation_prompt=True,
    )
    return np.asarray(inputs["input_ids"])[0], MediaInputs.from_processor_output(inputs)


def alone(model, request: Request) -> list[int]:
    return Engine(model, **POOL).generate([dataclasses.replace(request, request_id=None)])[0].tokens


@pytest.mark.parametrize("field, change", [
    ("seed", {"seed": -1}),
    ("seed", {"seed": 2**32}),
    ("seed", {"seed": 1.5}),
    ("temperature", {"temperature": float("nan")}),
    ("temperature", {"temperature": float("inf")}),
    ("top_k", {"top_k": VOCAB + 1}),
    ("max_new_tokens", {"max_new_tokens": 2.0}),
    ("stop_token_ids", {"stop_token_ids": (VOCAB,)}),
    ("max_new_tokens", {"max_new_tokens": 10_000}),
])
def test_submit_rejects_bad_sampling_values_naming_the_field(model, field, change):
    engine = Engine(model, **POOL)
    with pytest.raises(RequestError, match=f"^{field}: ") as info:
        engine.submit(Request(np.arange(5), dataclasses.replace(PARAMS, **change)))
    assert info.value.field == field and isinstance(info.value, ValueError)
    assert not engine.has_work()


def test_submit_rejects_bad_prompts_media_and_ids(model, image_prompt):
    ids, media = image_prompt
    engine = Engine(model, **POOL)
    cases = [
        ("input_ids", Request(np.array([0, VOCAB]), PARAMS)),
        ("input_ids", Request(np.zeros(0, np.int64), PARAMS)),
        ("media", Request(ids, PARAMS, media=dataclasses.replace(media, pixel_values=media.pixel_values * np.nan))),
        ("media", Request(ids[:5], PARAMS, media=media)),  # no placeholder for the image
    ]
    for field, request in cases:
        with pytest.raises(RequestError, match=f"^{field}: "):
            engine.submit(request)
    engine.submit(Request(ids[:5], PARAMS, request_id="a"))
    with pytest.raises(RequestError, match="^request_id: 'a' is already in flight"):
        engine.submit(Request(ids[:6], PARAMS, request_id="a"))
    assert len(engine.waiting) == 1
    engine.cancel("a")
    assert engine.pop_finished()["a"].finish_reason == "cancelled" and engine.generated("a") is None
    engine.pool.check_no_leak()


def test_failures_inside_a_step_finish_only_their_own_sequence(model, image_prompt):
    ids, media = image_prompt
    raises = dataclasses.replace(  # one feature too many per patch: the vision tower's matmul raises
        media, pixel_values=np.zeros((len(media.pixel_values), media.pixel_values.shape[1] + 1), np.float32)
    )
    overflows = dataclasses.replace(media, pixel_values=np.full_like(media.pixel_values, 3e38))  # finite in, inf/NaN out
    good = [Request(ids, PARAMS, media=media), Request(ids[-6:], PARAMS), Request(np.arange(40), PARAMS)]
    engine = Engine(model, **POOL)
    outs = engine.generate([good[0], Request(ids, PARAMS, media=raises), good[1], Request(ids, PARAMS, media=overflows),
                            good[2]])
    assert [o.finish_reason for o in outs] == ["length", "error", "length", "error", "length"]
    assert outs[1].error.startswith("media encoding failed: TypeError") and outs[3].error == "non-finite logits in prefill"
    assert outs[1].tokens == outs[3].tokens == [] and engine.stats.errors == 2
    want = [o.tokens for o in Engine(model, **POOL).generate([dataclasses.replace(r, request_id=None) for r in good])]
    assert [outs[i].tokens for i in (0, 2, 4)] == want  # what they get without the failing ones
    engine.pool.check_no_leak()
    again = engine.generate([dataclasses.replace(r, request_id=None) for r in good])
    assert [o.tokens for o in again] == want
    engine.pool.check_no_leak()


def test_paged_attention_never_reads_what_lies_past_a_rows_length():
    """A failed request leaves NaN KV in its released pages and in the null page (its padding tokens'
    writes): whoever gets those pages next, or pads with the null page, must not see it."""
    rng = np.random.default_rng(0)
    kv, pages, size, d = 2, 6, 4, 8
    k, v = (jnp.asarray(rng.standard_normal((kv, pages, size, d)), jnp.float32) for _ in range(2))
    q = jnp.asarray(rng.standard_normal((2, 3, 4, d)), jnp.float32)
    table = jnp.array([[1, 2, NULL_PAGE], [3, NULL_PAGE, NULL_PAGE]])
    kv_len = jnp.array([6, 3])  # row 0 ends inside page 2, row 1 inside page 3
    query_pos = kv_len[:, None] - 3 + jnp.arange(3)[None]
    clean = paged_attention(q, k, v, table, query_pos, kv_len)
    poison = np.zeros((kv, pages, size, d), bool)
    poison[:, NULL_PAGE] = poison[:, 2, 2:] = poison[:, 3, 3:] = True
    dirty = paged_attention(q, jnp.where(poison, jnp.nan, k), jnp.where(poison, jnp.nan, v), table, query_pos, kv_len)
    assert np.isfinite(np.asarray(clean)).all()
    np.testing.assert_array_equal(np.asarray(dirty), np.asarray(clean))


class Boom(RuntimeError):
    pass


def failing_once(fn, *, delete_cache: bool):
    """`fn` that raises once on its first call, after consuming the donated KV buffers when `delete_cache`."""
    calls = []

    def wrapper(*args, **kwargs):
        if not calls:
            calls.append(1)
            if delete_cache:
                args[1].delete()
                args[2].delete()
            raise Boom("device out of memory")
        return fn(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("target", ["forward", "decode_loop", "sample"])
def test_a_failed_device_call_fails_its_batch_and_the_engine_recovers(model, monkeypatch, target):
    engine = Engine(model, **POOL)
    bystander = Request(np.arange(30), dataclasses.replace(PARAMS, max_new_tokens=12), request_id="bystander")
    engine.submit(bystander)
    while not engine.generated("bystander"):
        engine.step()  # prefilled, decoding
    sampling = dataclasses.replace(PARAMS, max_new_tokens=8)
    victim = Request(np.arange(100, 117), sampling, request_id="v")
    engine.submit(victim)
    if target == "forward":  # the victim's prefill fails after consuming the KV buffers: the bystander is recomputed
        engine._forward = failing_once(engine._forward, delete_cache=True)
    elif target == "decode_loop":  # one decode batch holds both
        engine.step()
        engine._decode_loop = failing_once(engine._decode_loop, delete_cache=False)
    else:
        monkeypatch.setattr(engine_module, "sample_tokens", failing_once(engine_module.sample_tokens, delete_cache=False))
    while engine.has_work():
        engine.step()
    done = engine.pop_finished()
    assert done["v"].finish_reason == "error" and done["v"].error == "device step failed: Boom: device out of memory"
    if target == "decode_loop":
        assert done["bystander"].finish_reason == "error"
    else:
        assert done["bystander"].tokens == alone(model, bystander)
        assert engine.stats.preemptions == (1 if target == "forward" else 0)
    engine.pool.check_no_leak()
    assert engine.generate([dataclasses.replace(victim, request_id=None)])[0].tokens == alone(model, victim)
