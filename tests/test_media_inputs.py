"""`MediaInputs`: the processor's media as one value (items, token counts, rows, content keys,
placeholder slots, errors), and the one path from ids + media to embeddings: the full forward, the
engine (whole and chunked prefill) and training's batch preparation see the same slots, rows and
positions."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest

from omniagent_jax.engine import Engine, Request, SamplingParams
from omniagent_jax.processing import OmniProcessor, tokens
from omniagent_jax.processing.media_inputs import MediaInputs, MediaItem
from omniagent_jax.train.collate import has_media, prepare

PLACEHOLDERS = {"audio": tokens.AUDIO_ID, "image": tokens.IMAGE_ID, "video": tokens.VIDEO_ID}


def small_media(**overrides) -> MediaInputs:
    """Two images (grids 1×2×2 and 1×4×2: 1 and 2 tokens), one video (2×2×4: 4 tokens), two audios
    (100 and 60 valid mel frames: 25 and 15 tokens)."""
    rng = np.random.default_rng(0)
    fields = {
        "pixel_values": rng.standard_normal((12, 6)).astype(np.float32),
        "image_grid_thw": np.array([[1, 2, 2], [1, 4, 2]]),
        "pixel_values_videos": rng.standard_normal((16, 6)).astype(np.float32),
        "video_grid_thw": np.array([[2, 2, 4]]),
        "video_second_per_grid": np.array([1.0], np.float32),
        "input_features": rng.standard_normal((2, 4, 100)).astype(np.float32),
        "feature_attention_mask": np.array([[1] * 100, [1] * 60 + [0] * 40]),
    }
    return MediaInputs(**{**fields, **overrides})


def test_items_token_counts_rows_and_keys():
    media = small_media()
    assert [(i.kind, i.index, i.num_tokens) for i in media.media_items()] == [
        ("audio", 0, 25), ("audio", 1, 15), ("image", 0, 1), ("image", 1, 2), ("video", 0, 4),
    ]
    assert media.token_counts("image", merge_size=1) == [4, 8]
    assert media.audio_lengths().tolist() == [100, 60]
    rows, grid = media.rows(MediaItem("image", 1, 2))
    np.testing.assert_array_equal(rows, media.pixel_values[4:12])
    assert grid.tolist() == [[1, 4, 2]]
    feats, mask = media.rows(MediaItem("audio", 1, 15))
    assert feats.shape == (1, 4, 100) and mask.sum() == 60
    both, grids = media.select("image", [1, 0])
    np.testing.assert_array_equal(both, np.concatenate([media.pixel_values[4:], media.pixel_values[:4]]))
    assert grids.tolist() == [[1, 4, 2], [1, 2, 2]]
    keys = [media.content_key(i) for i in media.media_items()]
    assert len(set(keys)) == 5
    assert media.content_key(MediaItem("image", 0, 1)) == small_media().content_key(MediaItem("image", 0, 1))
    shifted = small_media(pixel_values=media.pixel_values + 1)
    assert shifted.content_key(MediaItem("image", 0, 1)) != keys[2]
    assert MediaInputs().empty and not media.empty and MediaInputs().media_items() == []


def test_mapping_behaviour_and_from_processor_output():
    media = small_media(use_audio_in_video=True)
    assert list(media) == [
        "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "video_second_per_grid",
        "input_features", "feature_attention_mask", "use_audio_in_video",
    ]
    def receive(**kwargs):
        return kwargs

    received = receive(**media)  # what `model(ids, **media)` receives
    assert received == media.as_kwargs() and received["use_audio_in_video"] is True
    assert dict(media)["pixel_values"] is media.pixel_values and "input_ids" not in media
    with pytest.raises(KeyError):
        MediaInputs()["pixel_values"]  # unset fields are not keys
    output = {"input_ids": np.zeros((1, 3)), "attention_mask": np.ones((1, 3)), "pixel_values": media.pixel_values,
              "image_grid_thw": media.image_grid_thw, "input_features": None}
    parsed = MediaInputs.from_processor_output(output)
    assert list(parsed) == ["pixel_values", "image_grid_thw", "use_audio_in_video"] and not parsed.use_audio_in_video
    assert MediaInputs.from_processor_output({**output, "use_audio_in_video": np.asarray(True)}).use_audio_in_video
    overridden = MediaInputs.from_processor_output({**output, "use_audio_in_video": True}, use_audio_in_video=False)
    assert not overridden.use_audio_in_video
    assert parsed == MediaInputs(pixel_values=media.pixel_values.copy(), image_grid_thw=[[1, 2, 2], [1, 4, 2]])
    assert parsed != MediaInputs(pixel_values=media.pixel_values + 1, image_grid_thw=media.image_grid_thw)
    assert has_media(output) and not has_media({"input_ids": np.zeros(3), "labels": np.zeros(3)})


def test_placeholder_slots_in_order_and_count_mismatch():
    media = small_media()
    ids = np.array([5] + [tokens.AUDIO_ID] * 25 + [tokens.IMAGE_ID] + [6] + [tokens.VIDEO_ID] * 4 + [tokens.IMAGE_ID] * 2
                   + [tokens.AUDIO_ID] * 15)
    placed = media.placeholder_slots(ids, PLACEHOLDERS)
    assert [(i.kind, i.index) for i, _ in placed] == [("audio", 0), ("audio", 1), ("image", 0), ("image", 1), ("video", 0)]
    assert placed[0][1].tolist() == list(range(1, 26)) and placed[1][1].tolist() == list(range(34, 49))
    assert placed[2][1].tolist() == [26] and placed[3][1].tolist() == [32, 33] and placed[4][1].tolist() == [28, 29, 30, 31]
    with pytest.raises(ValueError, match="video placeholder/feature mismatch: "
                       "input_ids hold 3 video placeholder tokens but the video inputs produce 4"):
        media.placeholder_slots(np.delete(ids, 28), PLACEHOLDERS)
    with pytest.raises(ValueError, match="image placeholder/feature mismatch: input_ids hold 1 .* produce 0"):
        MediaInputs().placeholder_slots(np.array([tokens.IMAGE_ID]), PLACEHOLDERS)


def test_invalid_media_inputs_are_rejected():
    media = small_media()
    with pytest.raises(ValueError, match="image_grid_thw is required with pixel_values"):
        MediaInputs(pixel_values=media.pixel_values)
    with pytest.raises(ValueError, match="feature_attention_mask given without input_features"):
        MediaInputs(feature_attention_mask=media.feature_attention_mask)
    with pytest.raises(ValueError, match="video_second_per_grid given without pixel_values_videos"):
        MediaInputs(video_second_per_grid=[1.0])
    with pytest.raises(ValueError, match="pixel_values has 11 rows but image_grid_thw describes 12 patches"):
        small_media(pixel_values=media.pixel_values[:11])
    with pytest.raises(ValueError, match="input_features holds 2 audios but feature_attention_mask 1"):
        small_media(feature_attention_mask=media.feature_attention_mask[:1])
    with pytest.raises(TypeError, match="Request.media must be a MediaInputs"):
        Request(np.arange(3), media=[1, 2])


# ------------------------------------------------------------------ the three paths on the tiny model


@pytest.fixture(scope="module")
def model(reference_pairs):
    pytest.importorskip("torch_ref")
    return reference_pairs("tiny.yaml")[1]


@pytest.fixture(scope="module")
def prompt():
    """An image, a standalone audio and a clip with its own audio (interleaved), through the processor."""
    rng = np.random.default_rng(3)

    def wave(seconds):
        return (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)

    clip = types.SimpleNamespace(frames=rng.integers(0, 256, (6, 60, 80, 3), dtype=np.uint8), audio=wave(2.6),
                                 timestamps=tuple(np.arange(6) / 2))
    content = [{"type": "text", "text": "look"}, {"type": "image", "image": rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)},
               {"type": "text", "text": "hear"}, {"type": "audio", "audio": wave(1.3)},
               {"type": "text", "text": "watch"}, {"type": "video", "video": clip}]
    inputs = OmniProcessor.from_pretrained()([{"role": "user", "content": content}], use_audio_in_video=True)
    return inputs, MediaInputs.from_processor_output(inputs, use_audio_in_video=True)


def engine_view(model, ids, media, prefill_chunk):
    """What the engine's prefill steps receive: media rows + mask and positions over the prompt."""
    engine = Engine(model, page_size=16, num_pages=64, prefill_chunk=prefill_chunk)
    embeds = np.zeros((len(ids), model.config.text.hidden_size), np.float32)
    mask = np.zeros(len(ids), bool)
    positions = np.zeros((3, len(ids)), np.int64)
    real = engine._forward

    def spy(leaves, k, v, table, context_len, num_new, step_ids, rows, rows_mask, pos):
        start, n = int(context_len[0]), int(num_new[0])
        m = np.asarray(rows_mask)[0, :n]
        if m.any():
            embeds[start : start + n][m] = np.asarray(rows)[0, :n][m]
        mask[start : start + n] |= m
        positions[:, start : start + n] = np.asarray(pos)[:, 0, :n]
        return real(leaves, k, v, table, context_len, num_new, step_ids, rows, rows_mask, pos)

    engine._forward = spy
    engine.generate([Request(ids, SamplingParams(temperature=0, max_new_tokens=1, stop_token_ids=()), media=media)])
    return embeds, mask, positions, engine.stats.tower_items


def test_forward_engine_and_training_see_the_same_slots_embeddings_and_positions(model, prompt):
    inputs, media = prompt
    ids = np.asarray(inputs["input_ids"])[0]
    assert [i.kind for i in media.media_items()] == ["audio", "audio", "image", "video"]
    expected = np.isin(ids, list(PLACEHOLDERS.values()))

    # the full forward's input layer, and the forward itself taking `**media`
    full = np.asarray(model.embed_media(inputs["input_ids"], media))[0]
    text = np.asarray(model.embed_tokens(jnp.asarray(ids)))
    np.testing.assert_array_equal(full[~expected], text[~expected])
    assert not np.isclose(full[expected], text[expected]).all(axis=-1).any()  # every placeholder was replaced
    forward_positions, _ = model.rope_index(inputs["input_ids"], inputs["attention_mask"], media)

    # training's batch preparation
    sample = {k: v for k, v in inputs.items() if k != "attention_mask"} | {
        "input_ids": ids, "labels": ids, "use_audio_in_video": np.asarray(True)}
    train = prepare(model, sample)
    np.testing.assert_array_equal(train["media_mask"], expected)
    np.testing.assert_array_equal(train["media_embeds"][expected], full[expected])
    np.testing.assert_array_equal(train["positions"], forward_positions[:, 0])

    # the engine: whole prompt in one prefill, then in chunks (each chunk encodes only its items)
    embeds, mask, positions, items = engine_view(model, ids, media, prefill_chunk=1024)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(embeds[expected], full[expected])
    np.testing.assert_array_equal(positions, forward_positions[:, 0])
    assert items == 4
    embeds, mask, positions, items = engine_view(model, ids, media, prefill_chunk=128)
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_allclose(embeds[expected], full[expected], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(positions, forward_positions[:, 0])
    assert items > 4  # items that straddle chunks are encoded once per chunk they reach

    logits = np.asarray(model(inputs["input_ids"], inputs["attention_mask"], **media))
    raw = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    np.testing.assert_array_equal(
        logits, np.asarray(model(inputs["input_ids"], inputs["attention_mask"], use_audio_in_video=True, **raw))
    )


def test_a_missing_placeholder_is_the_same_error_on_every_path(model, prompt):
    inputs, media = prompt
    ids = np.asarray(inputs["input_ids"])[0]
    short = np.delete(ids, np.flatnonzero(ids == tokens.IMAGE_ID)[0])
    message = "image placeholder/feature mismatch: input_ids hold"
    with pytest.raises(ValueError, match=message):
        model.embed_media(short[None], media)
    with pytest.raises(ValueError, match=message):
        prepare(model, {**media, "input_ids": short, "labels": short})
    with pytest.raises(ValueError, match=message):
        Engine(model, page_size=8, num_pages=64).submit(Request(short, media=media))
