"""Text decoder: logits parity with transformers' thinker (weights through a release-layout HF
directory and `Thinker.from_pretrained`), the KV-cache seam, positions, and the 7B parameter count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from omniagent_jax.model import ContiguousKVCache, Thinker, abstract_thinker
from omniagent_jax.model.config import load_config, qwen2_5_omni_7b
from omniagent_jax.model.decoder import text_positions
from omniagent_jax.processing import tokens

torch_ref = pytest.importorskip("torch_ref")

PARITY_CONFIGS = ["tiny.yaml", "tiny_gqa3.yaml"]  # GQA 2 with 2 layers; GQA 3 with 3 layers
BATCH, LENGTH = 3, 19


def left_padded_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 sequences of lengths 19, 14 and 6, padded on the left with <|endoftext|>."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, tokens.NUM_BPE_TOKENS, (BATCH, LENGTH))
    mask = np.ones((BATCH, LENGTH), np.int64)
    mask[1, :5] = 0
    mask[2, :13] = 0
    ids[mask == 0] = tokens.PAD_ID
    ids[:, -1] = tokens.IM_START_ID  # a special token inside the sequence too
    return ids, mask


@pytest.fixture(scope="module", params=PARITY_CONFIGS)
def parity_pair(request, reference_pairs):
    """(reference torch thinker, our thinker loaded from the release-layout directory it was saved to)."""
    ref, ours, _ = reference_pairs(request.param)
    return ref, ours


def test_logits_parity_left_padded_batch(parity_pair):
    ref, ours = parity_pair
    ids, mask = left_padded_batch()
    expected = torch_ref.reference_logits(ref, ids, mask)
    got = np.asarray(jax.jit(lambda m, i, a: m(i, a))(ours, ids, mask))
    assert got.shape == (BATCH, LENGTH, ours.config.text.vocab_size)
    diff = np.abs(got - expected)[mask == 1]
    assert diff.max() <= 1e-4, f"max |Δlogit| {diff.max():.3g}"


def test_padding_does_not_change_real_tokens(parity_pair):
    """A left-padded row gives the same logits as the same row alone, unpadded."""
    _, ours = parity_pair
    ids, mask = left_padded_batch()
    batched = np.asarray(ours(ids, mask))[2, 13:]
    alone = np.asarray(ours(ids[2:, 13:], mask[2:, 13:]))[0]
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_incremental_decode_with_contiguous_cache_matches_full_forward(parity_pair):
    """Prefill the first tokens into a KV cache, then feed the rest one at a time: same logits."""
    _, ours = parity_pair
    ids, mask = left_padded_batch()
    full = np.asarray(ours(ids, mask))
    text = ours.config.text
    cache = ContiguousKVCache.create(
        num_layers=text.num_hidden_layers, batch=BATCH, max_len=32, num_kv_heads=text.num_key_value_heads,
        head_dim=text.head_dim, dtype=jnp.float32,
    )
    positions = text_positions(mask)
    prefill = 15

    @jax.jit
    def step(model, cache, ids_chunk, mask_chunk, pos_chunk):
        cache = cache.with_new_tokens(mask_chunk)
        hidden, cache = model.decode(model.embed_tokens(ids_chunk), pos_chunk, cache)
        return model.logits(hidden), cache

    logits, cache = step(ours, cache, ids[:, :prefill], mask[:, :prefill], positions[:, :, :prefill])
    pieces = [np.asarray(logits)]
    for t in range(prefill, LENGTH):
        logits, cache = step(ours, cache, ids[:, t : t + 1], mask[:, t : t + 1], positions[:, :, t : t + 1])
        pieces.append(np.asarray(logits))
    assert int(cache.index) == LENGTH
    incremental = np.concatenate(pieces, axis=1)
    np.testing.assert_allclose(incremental[mask == 1], full[mask == 1], atol=1e-5)


def test_text_positions_are_cumsum_of_mask_on_all_axes():
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos = np.asarray(text_positions(mask))
    assert pos.shape == (3, 2, 5)
    np.testing.assert_array_equal(pos[0], [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(pos[0], pos[1])
    np.testing.assert_array_equal(pos[0], pos[2])


def test_7b_parameter_count_without_allocating():
    model = abstract_thinker(qwen2_5_omni_7b())
    head = int(np.prod(model.lm_head.kernel.shape))
    decoder = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model.model, nnx.Param)))
    assert decoder == 7_070_619_136
    assert head == 544_997_376
    assert model.model.embed_tokens.embedding.dtype == jnp.bfloat16
    count = lambda module: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))  # noqa: E731
    assert count(model.visual) == 676_550_144
    assert count(model.audio_tower) == 639_647_232
    assert model.num_params() == 8_931_813_888  # the whole thinker, as recorded in derived checkpoints


def test_every_parameter_has_logical_axis_names():
    model = abstract_thinker(load_config("tiny"))
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    names = set()
    for path, spec in jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)):
        assert any(a is not None for a in spec), f"{path} has no logical axis names: {spec}"
        names.update(spec)
    assert {"embed", "heads", "kv_heads", "mlp", "vocab"} <= names


def test_placeholder_feature_mismatch_is_a_clear_error():
    model = Thinker(load_config("tiny"), rngs=nnx.Rngs(0))
    ids = np.array([[tokens.VISION_BOS_ID] + [tokens.IMAGE_ID] * 3 + [tokens.VISION_EOS_ID]])
    with pytest.raises(ValueError, match="image placeholder/feature mismatch: input_ids hold 3 .* produce 4 tokens"):
        model(ids, pixel_values=np.zeros((16, 1176), np.float32), image_grid_thw=np.array([[1, 4, 4]]))
    with pytest.raises(ValueError, match="image_grid_thw is required with pixel_values"):
        model(ids, pixel_values=np.zeros((16, 1176), np.float32))
    with pytest.raises(TypeError, match="must be concrete"):
        jax.jit(lambda i: model(i, pixel_values=np.zeros((16, 1176), np.float32), image_grid_thw=np.array([[1, 4, 4]])))(ids)
