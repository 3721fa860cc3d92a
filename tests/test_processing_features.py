"""Processing features and layout vs the reference's own code (transformers 5.23):
`Qwen2VLImageProcessorPil`, `WhisperFeatureExtractor`, the Qwen2.5-Omni processor's chunk scanner
and token formulas. Video patchify is checked against a loop-by-loop reading of docs/model.md §4.4."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from omniagent_jax.processing import audio, budgets, layout, vision

transformers = pytest.importorskip("transformers")
from transformers import WhisperFeatureExtractor  # noqa: E402
from transformers.audio_utils import mel_filter_bank as hf_mel_filter_bank  # noqa: E402
from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni, processing_qwen2_5_omni  # noqa: E402
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_vl  # noqa: E402
from transformers.models.whisper import feature_extraction_whisper  # noqa: E402

RNG = np.random.default_rng(1234)
GET_FRAMES = (4 * 28 * 28, 1024 * 28 * 28)
HF_CLASS_DEFAULT = (56 * 56, 28 * 28 * 1280)
CHECKPOINT = (3136, 12_845_056)


def textured(height: int, width: int, mode: str = "RGB") -> Image.Image:
    """A smooth gradient plus noise, so that resizing has real work to do."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)), (xx + yy) % 256], -1)
    noise = RNG.integers(-40, 41, size=(height, width, 3))
    rgb = np.clip(base + noise, 0, 255).astype(np.uint8)
    if mode == "RGBA":
        alpha = RNG.integers(0, 256, size=(height, width, 1), dtype=np.uint8)
        return Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA")
    image = Image.fromarray(rgb, "RGB")
    return image.convert(mode) if mode != "RGB" else image


# ------------------------------------------------------------------------------------ smart_resize


@settings(max_examples=300, deadline=None)
@given(
    st.integers(15, 4000),  # from 15 px: round(side / 28) ≥ 1 (see the next test for shorter sides)
    st.integers(15, 4000),
    st.sampled_from([GET_FRAMES, HF_CLASS_DEFAULT, CHECKPOINT, (budgets.VIDEO_MIN_PIXELS, budgets.VIDEO_MAX_PIXELS)]),
)
def test_smart_resize_equals_reference(height, width, budget):
    if max(height, width) / min(height, width) > 200:
        with pytest.raises(ValueError, match="aspect ratio"):
            vision.smart_resize(height, width, min_pixels=budget[0], max_pixels=budget[1])
        return
    ours = vision.smart_resize(height, width, min_pixels=budget[0], max_pixels=budget[1])
    assert ours == hf_vl.smart_resize(height, width, 28, budget[0], budget[1])
    assert ours[0] % 28 == 0 and ours[1] % 28 == 0 and min(ours) >= 28


def test_smart_resize_clamps_tiny_sides_like_qwen_vl_utils():
    # A side of at most 14 px rounds to 0 in the HF copy (then the min-pixels branch rescales both
    # sides); qwen-vl-utils, which the reference runs first, clamps it to 28 and keeps the other side.
    assert vision.smart_resize(10, 1000, min_pixels=3136, max_pixels=802816) == (28, 1008)
    assert hf_vl.smart_resize(10, 1000, 28, 3136, 802816) == (28, 560)
    assert vision.smart_resize(14, 98, min_pixels=3136, max_pixels=802816) == (28, 112)
    assert hf_vl.smart_resize(14, 98, 28, 3136, 802816) == (28, 168)


def test_smart_resize_errors():
    with pytest.raises(ValueError, match="aspect ratio"):
        vision.smart_resize(10, 2011)
    with pytest.raises(ValueError, match="positive"):
        vision.smart_resize(0, 100)
    with pytest.raises(ValueError, match="exceeds"):
        vision.smart_resize(100, 100, min_pixels=10_000, max_pixels=100)


def test_video_frame_budget():
    assert budgets.video_frame_max_pixels(2) == 768 * 28 * 28
    assert budgets.video_frame_max_pixels(300) == 768 * 28 * 28
    assert budgets.video_frame_max_pixels(400) == 128000 * 28 * 28 * 0.9 / 400 * 2
    # Far beyond the 768-frame cap the floor 1.05·min takes over.
    assert budgets.video_frame_max_pixels(100_000) == pytest.approx(1.05 * 128 * 28 * 28)
    with pytest.raises(ValueError):
        budgets.video_frame_max_pixels(0)


# ------------------------------------------------------------------------------------------ images


IMAGE_CASES = [(1080, 1920, "RGB"), (360, 640, "RGB"), (37, 100, "RGB"), (28, 28, "L"), (512, 300, "RGBA"), (20, 3000, "RGB")]


@pytest.mark.parametrize("budget", [GET_FRAMES, HF_CLASS_DEFAULT, CHECKPOINT], ids=["get_frames", "hf_default", "checkpoint"])
def test_images_equal_hf_pil_processor(budget):
    images = [textured(h, w, mode) for h, w, mode in IMAGE_CASES]
    if budget == CHECKPOINT:  # keep the 12.8 MP budget cheap: it leaves mid-size images untouched
        images = images[1:]
    ref = hf_vl.Qwen2VLImageProcessorPil(min_pixels=budget[0], max_pixels=budget[1])(images=images, return_tensors="np")
    pixel_values, grid = vision.process_images(images, min_pixels=budget[0], max_pixels=budget[1])
    assert pixel_values.dtype == np.float32 and grid.dtype == np.int64
    np.testing.assert_array_equal(grid, ref["image_grid_thw"])
    assert pixel_values.shape == ref["pixel_values"].shape
    np.testing.assert_allclose(pixel_values, ref["pixel_values"], rtol=0, atol=1e-6)


def test_image_arrays_equal_pil_images():
    rgb = textured(200, 333)
    rgba = textured(90, 120, "RGBA")
    from_pil = vision.process_images([rgb, rgba])
    from_arrays = vision.process_images([np.asarray(rgb), np.asarray(rgba)])
    np.testing.assert_array_equal(from_pil[0], from_arrays[0])
    np.testing.assert_array_equal(from_pil[1], from_arrays[1])
    gray = np.asarray(textured(64, 64, "L"))
    np.testing.assert_array_equal(vision.process_images([gray])[0], vision.process_images([np.repeat(gray[..., None], 3, -1)])[0])


def test_image_token_count_matches_grid():
    _, grid = vision.process_images([textured(1080, 1920)])
    # 1080×1920 in the get_frames budget: 672×1176 → 24×42 merged tokens.
    assert grid.tolist() == [[1, 48, 84]]
    assert layout.vision_token_count(grid[0]) == 24 * 42
    ref = hf_vl.Qwen2VLImageProcessorPil(min_pixels=GET_FRAMES[0], max_pixels=GET_FRAMES[1])
    assert layout.vision_token_count(grid[0]) == ref.get_number_of_image_patches(1080, 1920) // 4


def test_image_errors():
    with pytest.raises(ValueError, match="at least one"):
        vision.process_images([])
    with pytest.raises(TypeError, match="uint8"):
        vision.process_images([np.zeros((32, 32, 3), np.float32)])
    with pytest.raises(ValueError, match="shape"):
        vision.process_images([np.zeros((32, 32, 2), np.uint8)])
    with pytest.raises(ValueError, match="empty"):
        vision.process_images([np.zeros((0, 32, 3), np.uint8)])
    with pytest.raises(TypeError, match="numpy array or a PIL"):
        vision.process_images(["not an image"])
    with pytest.raises(ValueError, match="aspect ratio"):
        vision.process_images([np.zeros((1, 300, 3), np.uint8)])


# ------------------------------------------------------------------------------------------ videos


def reference_video_rows(frames: np.ndarray, height: int, width: int) -> tuple[np.ndarray, list[int]]:
    """docs/model.md §4.4 read literally: resize every frame (PIL bicubic), x/255, CLIP mean/std, repeat the
    last frame to an even count, then one row per (t, bh, bw, ih, iw) holding pixels[c][tt][py][px]."""
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    resized = [np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in frames]
    norm = [((r.astype(np.float64) / 255).astype(np.float32) - mean) / std for r in resized]
    if len(norm) % 2:
        norm.append(norm[-1])
    grid_t, grid_h, grid_w = len(norm) // 2, height // 14, width // 14
    rows = []
    for t in range(grid_t):
        for bh in range(grid_h // 2):
            for bw in range(grid_w // 2):
                for ih in range(2):
                    for iw in range(2):
                        y, x = (bh * 2 + ih) * 14, (bw * 2 + iw) * 14
                        row = []
                        for c in range(3):
                            for tt in range(2):
                                row.append(norm[2 * t + tt][y : y + 14, x : x + 14, c].reshape(-1))
                        rows.append(np.concatenate(row))
    return np.stack(rows), [grid_t, grid_h, grid_w]


@pytest.mark.parametrize("n_frames,height,width", [(4, 90, 160), (5, 200, 120), (1, 64, 64)])
def test_video_patchify_equals_documented_rule(n_frames, height, width):
    frames = RNG.integers(0, 256, size=(n_frames, height, width, 3), dtype=np.uint8)
    rows, grid, second_per_grid = vision.process_video(frames)
    new_h, new_w = vision.smart_resize(height, width, min_pixels=budgets.VIDEO_MIN_PIXELS, max_pixels=budgets.VIDEO_MAX_PIXELS)
    ref_rows, ref_grid = reference_video_rows(frames, new_h, new_w)
    assert grid.tolist() == [ref_grid]
    assert second_per_grid == 1.0
    assert rows.shape == ref_rows.shape == (ref_grid[0] * ref_grid[1] * ref_grid[2], 1176)
    np.testing.assert_allclose(rows, ref_rows, rtol=0, atol=1e-6)


def test_video_budget_and_fps():
    frames = RNG.integers(0, 256, size=(2, 1080, 1920, 3), dtype=np.uint8)
    _, grid, spg = vision.process_video(frames, fps=0.5)
    # 1080p clips land on 560×1008 pixels per frame (≤ 768·28²) at any frame count ≤ 300.
    assert grid.tolist() == [[1, 40, 72]] and 560 * 1008 <= budgets.VIDEO_MAX_PIXELS
    assert spg == 4.0
    _, grid_small, _ = vision.process_video(frames[:, :100, :100], max_pixels=budgets.VIDEO_MAX_PIXELS)
    assert grid_small.tolist() == [[1, 24, 24]]  # grown to the 128·28² minimum: 336×336


def test_still_image_equals_two_frame_video():
    image = np.asarray(textured(300, 400))
    image_rows, image_grid = vision.process_images([image], *GET_FRAMES)
    video_rows, video_grid, _ = vision.process_video(np.stack([image, image]), *GET_FRAMES)
    np.testing.assert_array_equal(image_grid, video_grid)
    np.testing.assert_array_equal(image_rows, video_rows)


def test_video_errors():
    with pytest.raises(TypeError, match="numpy array"):
        vision.process_video([np.zeros((28, 28, 3), np.uint8)])
    with pytest.raises(TypeError, match="uint8"):
        vision.process_video(np.zeros((2, 28, 28, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        vision.process_video(np.zeros((28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        vision.process_video(np.zeros((0, 28, 28, 3), np.uint8))
    with pytest.raises(ValueError, match="fps"):
        vision.process_video(np.zeros((2, 28, 28, 3), np.uint8), fps=0)
    with pytest.raises(ValueError, match="aspect ratio"):
        vision.process_video(np.zeros((2, 1, 400, 3), np.uint8))


# ------------------------------------------------------------------------------------------- audio


def whisper() -> WhisperFeatureExtractor:
    # The released preprocessor_config.json values (docs/model.md §4.2).
    return WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300, n_fft=400,
        padding_value=0.0, dither=0.0, return_attention_mask=True,
    )


def hf_features(waveforms, numpy_path: bool, monkeypatch) -> tuple[np.ndarray, np.ndarray]:
    """The processor's call: `return_attention_mask=True, padding="max_length"` (300 s)."""
    with monkeypatch.context() as patch:
        if numpy_path:
            patch.setattr(feature_extraction_whisper, "is_torch_available", lambda: False)
        out = whisper()(waveforms, sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="np")
    return out["input_features"], out["attention_mask"]


def speech_like(n: int, loud_ending: bool) -> np.ndarray:
    t = np.arange(n) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    wave = envelope * (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1730 * t)) + 0.02 * RNG.standard_normal(n)
    if loud_ending:
        # A quiet body ending in a click: the frames just past ceil(n/160), which the recipe must
        # compute but not keep, see the click almost unwindowed and set the utterance max.
        wave *= 0.05
        wave[-24:] = 0.95 * np.sign(RNG.standard_normal(min(24, n)))
    return wave.astype(np.float32)


# Lengths 0.5 s … 45 s, several not multiples of the 160-sample hop.
AUDIO_LENGTHS = [8000, 16000, 16123, 48050, 48100, 160 * 301 + 1, 330_017, 720_000, 24_080]


def test_mel_filter_bank_equals_transformers():
    ref = hf_mel_filter_bank(
        num_frequency_bins=201, num_mel_filters=128, min_frequency=0.0, max_frequency=8000.0,
        sampling_rate=16000, norm="slaney", mel_scale="slaney",
    )
    ours = audio.mel_filter_bank()
    assert ours.shape == (201, 128)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_mel_features_equal_whisper_extractor(monkeypatch):
    waves = [speech_like(n, loud_ending=i % 2 == 0) for i, n in enumerate(AUDIO_LENGTHS)]
    features, mask = audio.extract_features(waves)
    ref_features, ref_mask = hf_features(waves, numpy_path=True, monkeypatch=monkeypatch)
    longest = max(math.ceil(n / 160) for n in AUDIO_LENGTHS)
    assert features.shape == (len(waves), 128, longest) and features.dtype == np.float32
    np.testing.assert_array_equal(mask, ref_mask[:, :longest])
    assert ref_mask[:, longest:].sum() == 0
    np.testing.assert_array_equal(mask.sum(1), [math.ceil(n / 160) for n in AUDIO_LENGTHS])
    # Valid frames and padded ones alike: the features are the reference's cut to the longest audio.
    np.testing.assert_allclose(features, ref_features[:, :, :longest], rtol=0, atol=1e-5)
    for i, wave in enumerate(waves):
        np.testing.assert_array_equal(audio.log_mel(wave), features[i, :, : mask[i].sum()])


def test_mel_features_vs_torch_stft_path(monkeypatch):
    # With torch installed the extractor runs its STFT in float32 (the deployed reference), which
    # deviates from the exact (float64) spectrum by up to ~5e-5 in low-power bins; so do we.
    waves = [speech_like(n, loud_ending=True) for n in (8000, 48050, 330_017)]
    features, mask = audio.extract_features(waves)
    ref_features, ref_mask = hf_features(waves, numpy_path=False, monkeypatch=monkeypatch)
    np.testing.assert_array_equal(mask, ref_mask[:, : mask.shape[1]])
    np.testing.assert_allclose(features, ref_features[:, :, : features.shape[2]], rtol=0, atol=1e-4)


def test_mel_truncates_at_300_seconds(monkeypatch):
    n = budgets.MAX_AUDIO_SAMPLES + 3217
    wave = speech_like(n, loud_ending=True)
    features, mask = audio.extract_features([wave])
    ref_features, ref_mask = hf_features([wave], numpy_path=True, monkeypatch=monkeypatch)
    assert features.shape == ref_features.shape == (1, 128, 30000)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(features, ref_features, rtol=0, atol=1e-5)
    assert audio.mel_frame_count(n) == 30000 and layout.audio_token_count(30000) == 7500


def test_mel_accepts_float64_like_the_reference():
    wave = speech_like(16123, loud_ending=False)
    np.testing.assert_array_equal(audio.log_mel(wave.astype(np.float64)), audio.log_mel(wave))


def test_audio_errors():
    with pytest.raises(ValueError, match="at least one"):
        audio.extract_features([])
    with pytest.raises(ValueError, match="empty"):
        audio.extract_features([np.zeros(0, np.float32)])
    with pytest.raises(TypeError, match="float"):
        audio.extract_features([np.zeros(1600, np.int16)])
    with pytest.raises(ValueError, match="mono"):
        audio.extract_features([np.zeros((2, 1600), np.float32)])
    with pytest.raises(ValueError, match="NaN"):
        audio.extract_features([np.full(1600, np.nan, np.float32)])
    with pytest.raises(TypeError, match="numpy"):
        audio.extract_features([[0.0] * 1600])
    with pytest.raises(TypeError, match="audio 1"):
        audio.extract_features([np.zeros(1600, np.float32), np.zeros(1600, np.int32)])


# ------------------------------------------------------------------------------------------ layout


def test_audio_token_count_equals_reference():
    lengths = np.arange(1, 30001)
    ref = processing_qwen2_5_omni._get_feat_extract_output_lengths(lengths)
    assert [layout.audio_token_count(int(n)) for n in lengths] == ref.tolist()
    assert [layout.audio_token_count(n) for n in (100, 200, 1000, 3000, 30000)] == [25, 50, 250, 750, 7500]


def test_vision_token_count():
    assert layout.vision_token_count([1, 48, 86]) == 1032
    assert layout.vision_token_count(np.array([3, 4, 4])) == 12


def reference_chunked_index(values, tokens_per_chunk):
    return processing_qwen2_5_omni.Qwen2_5OmniProcessor.get_chunked_index(None, np.asarray(values), tokens_per_chunk)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=60), st.sampled_from([1, 7, 50]))
def test_chunked_index_equals_reference(steps, tokens_per_chunk):
    values = np.cumsum(steps)  # increasing, with jumps of several chunks at a time
    ours = layout.chunked_index(values, tokens_per_chunk)
    assert ours == reference_chunked_index(values, tokens_per_chunk)
    import torch

    model_ref = modeling_qwen2_5_omni.Qwen2_5OmniPreTrainedModelForConditionalGeneration.get_chunked_index(
        None, torch.as_tensor(values, dtype=torch.long), tokens_per_chunk, 0
    )
    assert ours == [tuple(int(v) for v in pair) for pair in model_ref]


def test_chunked_index_fps_below_one_misaligns():
    # fps 0.5 → second_per_grid 4 → temporal steps of 100 units. The scanner advances one chunk per
    # token that reaches the next boundary, so a step of two chunks splits off a one-token chunk
    # (boundary 50 closes [0, 4); the token at 100 also reaches 100 and closes [4, 5); …).
    values = layout.video_temporal_positions([4, 4, 4], 4.0)
    assert values.tolist() == [0.0] * 4 + [100.0] * 4 + [200.0] * 4 + [300.0] * 4
    ours = layout.chunked_index(values, 50)
    expected = [(0, 4), (4, 5), (5, 8), (8, 9), (9, 12), (12, 13), (13, 16)]
    assert ours == reference_chunked_index(values, 50) == expected


def reference_interleave(grid_thw, second_per_grid, n_audio):
    """transformers' `replace_video_with_audio_token` on a minimal stand-in processor."""
    proc_cls = processing_qwen2_5_omni.Qwen2_5OmniProcessor
    fake = types.SimpleNamespace(
        video_processor=types.SimpleNamespace(merge_size=2),
        audio_bos_token="B", audio_eos_token="E", video_token="V", audio_token="A",
    )
    fake.get_chunked_index = lambda values, n: proc_cls.get_chunked_index(fake, values, n)
    text = proc_cls.replace_video_with_audio_token(
        fake,
        {"video_grid_thw": [np.array(grid_thw)], "video_second_per_grid": [second_per_grid]},
        0,
        {"num_audio_tokens": [n_audio]},
        0,
        position_id_per_seconds=25,
        seconds_per_chunk=2.0,
    )
    return text


def render(chunks) -> str:
    return "B" + "".join("V" * v + "A" * a for v, a in chunks) + "E"


@pytest.mark.parametrize(
    "grid,spg,n_audio",
    [
        ([3, 4, 4], 1.0, 65),  # docs/model.md §2.1 worked example
        ([8, 26, 46], 1.0, 200),
        ([10, 4, 6], 1.0, 40),  # audio shorter than the video
        ([2, 4, 4], 1.0, 400),  # audio longer than the video
        ([4, 4, 4], 4.0, 300),  # fps 0.5: misaligned chunks
        ([5, 4, 4], 2 / 3, 170),  # fps 3: fractional positions
        ([6, 4, 4], 0.8, 0),
    ],
)
def test_audio_in_video_chunks_equal_reference(grid, spg, n_audio):
    chunks = layout.audio_in_video_chunks(grid, spg, n_audio)
    assert render(chunks) == reference_interleave(grid, spg, n_audio)
    assert sum(v for v, _ in chunks) == layout.vision_token_count(grid)
    assert sum(a for _, a in chunks) == n_audio


def test_worked_example_layout():
    assert layout.audio_in_video_chunks([3, 4, 4], 1.0, layout.audio_token_count(260)) == [(8, 50), (4, 15)]
