"""Vision and audio towers: output parity with the reference classes (fp32, ≤ 1e-4) on inputs made
by the reference's own PIL image processor and Whisper feature extractor, plus the host-side layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omniagent_jax.model.config import tiny
from omniagent_jax.model.vision import vision_layout, window_order

transformers = pytest.importorskip("transformers")
from transformers import WhisperFeatureExtractor  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

TOL = 1e-4


@pytest.fixture(scope="module")
def pair(reference_pairs):
    ref, ours, _ = reference_pairs("tiny.yaml")
    return ref, ours


def _image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# Merged grids: 8×8 and 4×12 (sides divisible by 4 → a full empty pad window), 11×15 and 5×3 (not divisible).
IMAGE_SIZES = [(224, 224), (112, 336), (308, 420), (140, 84)]


@pytest.mark.parametrize("size", IMAGE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_vision_tower_parity_on_images(pair, size):
    ref, ours = pair
    proc = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=1024 * 28 * 28)
    inputs = proc(images=[_image(*size, seed=size[0])], return_tensors="np")
    grid = inputs["image_grid_thw"]
    assert (grid[0, 1] * 14, grid[0, 2] * 14) == size
    with torch.no_grad():
        want = ref.model.visual(torch.as_tensor(inputs["pixel_values"]), grid_thw=torch.as_tensor(grid)).pooler_output.numpy()
    got = np.asarray(ours.encode_images(inputs["pixel_values"], grid))
    assert got.shape == want.shape == (grid.prod() // 4, ours.config.text.hidden_size)
    assert np.abs(got - want).max() <= TOL


def test_vision_tower_parity_on_a_multi_frame_video_and_several_items(pair):
    """A 6-frame video (3 temporal patches: full attention stays within each) plus two images in one call."""
    ref, ours = pair
    rng = np.random.default_rng(3)
    grid = np.array([[3, 8, 12], [1, 4, 4], [1, 16, 8]])
    rows = rng.standard_normal((int(grid.prod(axis=1).sum()), 1176)).astype(np.float32)
    with torch.no_grad():
        want = ref.model.visual(torch.as_tensor(rows), grid_thw=torch.as_tensor(grid)).pooler_output.numpy()
    got = np.asarray(ours.encode_videos(rows, grid))
    assert np.abs(got - want).max() <= TOL
    # frames must not see each other in full-attention blocks: changing frame 2 leaves frame 0's tokens alone
    rows2 = rows.copy()
    rows2[96 * 2 : 96 * 3] += 1.0
    again = np.asarray(ours.encode_videos(rows2, grid))
    np.testing.assert_allclose(again[:24], got[:24], atol=1e-6)
    assert np.abs(again[48:72] - got[48:72]).max() > 1e-3


@pytest.mark.parametrize("seconds", [1.0, 2.0, 2.5, 7.3])
def test_audio_tower_parity(pair, seconds):
    ref, ours = pair
    extractor = WhisperFeatureExtractor(feature_size=128)
    rng = np.random.default_rng(int(seconds * 10))
    wave = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    feats = extractor(wave, sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="np")
    features, mask = feats["input_features"], feats["attention_mask"]
    with torch.no_grad():
        want = ref.get_audio_features(
            torch.as_tensor(features), feature_attention_mask=torch.as_tensor(mask)
        ).pooler_output.numpy()
    got = np.asarray(ours.encode_audios(features, mask))
    assert got.shape == want.shape == (round(seconds * 25), ours.config.text.hidden_size)
    assert np.abs(got - want).max() <= TOL


def test_audio_tower_batch_equals_one_by_one(pair):
    """Padding in the batch and other audios never leak into an audio's tokens."""
    _, ours = pair
    rng = np.random.default_rng(0)
    lengths = [130, 401, 60]
    feats = rng.standard_normal((3, 128, 450)).astype(np.float32)
    mask = (np.arange(450)[None] < np.array(lengths)[:, None]).astype(np.int64)
    batched = np.asarray(ours.encode_audios(feats, mask))
    alone = [np.asarray(ours.encode_audios(feats[i : i + 1, :, :n], mask[i : i + 1, :n])) for i, n in enumerate(lengths)]
    np.testing.assert_allclose(batched, np.concatenate(alone), atol=1e-5)


def test_window_order_matches_the_spec_example():
    """docs/model.md §2.4: a 308×420 image (11×15 merged) gives 12 windows of these patch counts."""
    _, cu = window_order(np.array([[1, 22, 30]]), merge=2, window_tokens=4)
    assert np.diff(cu).tolist() == [64, 64, 64, 48, 64, 64, 64, 48, 48, 48, 48, 36]
    layout = vision_layout(np.array([[1, 22, 30]]), tiny().vision)
    assert sorted(np.asarray(layout.token_restore).tolist()) == list(range(165))


def test_audio_without_valid_frames_is_an_error(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="no valid mel frames"):
        ours.encode_audios(np.zeros((1, 128, 10), np.float32), np.zeros((1, 10), np.int64))
    with pytest.raises(ValueError, match=r"input_features must be \[B, 128, T\]"):
        ours.encode_audios(np.zeros((1, 80, 10), np.float32), np.ones((1, 10), np.int64))


def test_segment_attention_in_groups_equals_all_at_once():
    """Bounding the scores held at once (long clips) must not change the result."""
    import jax

    from omniagent_jax.model.segments import segment_attention, segments_from_cu_seqlens

    rng = np.random.default_rng(0)
    q, k, v = (jax.numpy.asarray(rng.standard_normal((70, 2, 8)), dtype=jax.numpy.float32) for _ in range(3))
    segs = segments_from_cu_seqlens(np.array([0, 16, 16, 40, 52, 70]))  # includes an empty run
    whole = segment_attention(q, k, v, segs)
    grouped = segment_attention(q, k, v, segs, max_scores=2 * 24 * 24 * 2)  # 2 segments per group, 2 groups padded
    np.testing.assert_allclose(np.asarray(grouped), np.asarray(whole), atol=1e-6)
    # rows only see their own segment: perturbing rows 40..51 leaves rows 0..39 unchanged
    v2 = v.at[40:52].add(1.0)
    np.testing.assert_allclose(np.asarray(segment_attention(q, k, v2, segs))[:40], np.asarray(whole)[:40], atol=1e-6)


def test_towers_compile_once_per_shape_bucket(pair):
    """Images of different sizes and audios of different lengths within one bucket share a compilation."""
    from omniagent_jax.model import thinker

    _, ours = pair
    rng = np.random.default_rng(5)
    ours.encode_images(rng.standard_normal((96 * 2, 1176)).astype(np.float32), np.array([[1, 12, 16]]))
    before = thinker._run_vision._cache_size()
    for h, w in ((12, 14), (10, 16), (16, 12)):  # 168, 160, 192 patches: the bucket of 192
        out = ours.encode_images(rng.standard_normal((h * w, 1176)).astype(np.float32), np.array([[1, h, w]]))
        assert out.shape == (h * w // 4, ours.config.text.hidden_size)
    assert thinker._run_vision._cache_size() == before
    feats = rng.standard_normal((1, 128, 700)).astype(np.float32)
    ours.encode_audios(feats[:, :, :610], np.ones((1, 610), np.int64))
    before = thinker._run_audio._cache_size()
    for n in (650, 700):  # 4 chunks each
        assert ours.encode_audios(feats[:, :, :n], np.ones((1, n), np.int64)).shape[0] == ((n - 1) // 2 + 1 - 2) // 2 + 1
    assert thinker._run_audio._cache_size() == before
