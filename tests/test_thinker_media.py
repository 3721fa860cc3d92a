"""Whole-thinker logits parity with media (fp32 ≤ 1e-4) and bf16 agreement with the reference.

Features come from the reference's own preprocessing: `Qwen2VLImageProcessorPil` for images,
`WhisperFeatureExtractor` for audio, and for video frames the documented patchify rule (the HF
video processor needs torchvision, which cannot run here). Token layouts come from `layouts.py`,
which uses the reference's chunk scanner.
"""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

from omniagent_jax.model import Thinker

torch_ref = pytest.importorskip("torch_ref")
import layouts  # noqa: E402
from transformers import WhisperFeatureExtractor  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def patchify_video(frames: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """docs/model.md §4.4: normalise, then view(gt, 2, C, gh/2, 2, 14, gw/2, 2, 14) permuted to
    (t, bh, bw, ih, iw, C, T, ph, pw)."""
    t, h, w, _ = frames.shape
    x = ((frames.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(0, 3, 1, 2)  # T, C, H, W
    gt, gh, gw = t // 2, h // 14, w // 14
    x = x.reshape(gt, 2, 3, gh // 2, 2, 14, gw // 2, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, 1176), [gt, gh, gw]


class Media:
    """Synthetic media through the reference preprocessing, in conversation order."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.images, self.image_grids, self.videos, self.video_grids, self.waves = [], [], [], [], []

    def image(self, h: int, w: int) -> tuple:
        img = Image.fromarray(self.rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        out = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=1024 * 28 * 28)(images=[img], return_tensors="np")
        self.images.append(out["pixel_values"])
        grid = out["image_grid_thw"][0].tolist()
        self.image_grids.append(grid)
        return ("image", grid[1], grid[2])

    def audio(self, seconds: float) -> tuple:
        self.waves.append((0.1 * self.rng.standard_normal(int(seconds * 16000))).astype(np.float32))
        return ("audio", int(np.ceil(len(self.waves[-1]) / 160)))

    def video(self, frames: int, h: int, w: int, audio_seconds: float | None = None) -> tuple:
        rows, grid = patchify_video(self.rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8))
        self.videos.append(rows)
        self.video_grids.append(grid)
        if audio_seconds is None:
            return ("video", *grid, 1.0)
        mel = self.audio(audio_seconds)[1]
        return ("video", *grid, 1.0, mel)

    def inputs(self) -> dict:
        out: dict = {}
        if self.images:
            out["pixel_values"] = np.concatenate(self.images)
            out["image_grid_thw"] = np.array(self.image_grids)
        if self.videos:
            out["pixel_values_videos"] = np.concatenate(self.videos)
            out["video_grid_thw"] = np.array(self.video_grids)
            out["video_second_per_grid"] = np.ones(len(self.videos), np.float32)
        if self.waves:
            feats = WhisperFeatureExtractor(feature_size=128)(
                self.waves, sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="np"
            )
            used = int(feats["attention_mask"].sum(axis=1).max())
            out["input_features"] = feats["input_features"][:, :, :used]  # our model takes any padded length
            out["feature_attention_mask"] = feats["attention_mask"][:, :used]
        return out


def build_case(name: str, ref):
    m = Media(seed=len(name))
    use_audio_in_video = False
    if name == "image+text":
        samples = [[("text", 5), m.image(84, 140), ("text", 7)]]
    elif name == "video+text":
        samples = [[("text", 4), m.video(4, 56, 84), ("text", 6)]]
    elif name == "audio+text":
        samples = [[("text", 3), m.audio(2.5), ("text", 5)]]
    elif name == "image+audio":
        samples = [[("text", 2), m.image(112, 56), ("text", 2), m.audio(1.3), ("text", 4)]]
    elif name == "video+audio_in_video":
        samples = [[("text", 3), m.video(6, 56, 56, audio_seconds=2.6), ("text", 4)]]
        use_audio_in_video = True
    elif name == "batch_of_2_left_padded":
        samples = [[("text", 9), m.image(56, 56), ("text", 2)],
                   [("text", 2), m.audio(1.0), ("text", 3), m.image(84, 56), ("text", 1)]]
    else:
        raise KeyError(name)
    ids, mask, *_ = layouts.batch(samples, ref, use_audio_in_video)
    rng = np.random.default_rng(1)
    text = (ids == layouts.TEXT) & (mask == 1)
    ids[text] = rng.integers(0, 150_000, text.sum())
    return ids, mask, m.inputs(), use_audio_in_video


CASES = ["image+text", "video+text", "audio+text", "image+audio", "video+audio_in_video", "batch_of_2_left_padded"]


def reference_logits(ref, ids, mask, inputs, use_audio_in_video, dtype=torch.float32):
    tensors = {k: torch.as_tensor(v) for k, v in inputs.items()}
    for k in ("pixel_values", "pixel_values_videos", "input_features"):
        if k in tensors:
            tensors[k] = tensors[k].to(dtype)
    with torch.no_grad():
        out = ref(
            input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), use_audio_in_video=use_audio_in_video, **tensors
        )
    return out.logits.float().numpy()


@pytest.fixture(scope="module")
def pair(reference_pairs):
    return reference_pairs("tiny.yaml")


@pytest.mark.parametrize("case", CASES)
def test_thinker_logits_parity_with_media(pair, case):
    ref, ours, _ = pair
    ids, mask, inputs, aiv = build_case(case, ref)
    want = reference_logits(ref, ids, mask, inputs, aiv)
    got = np.asarray(ours(ids, mask, use_audio_in_video=aiv, **inputs))
    diff = np.abs(got - want)[mask == 1]
    assert diff.max() <= 1e-4, f"{case}: max |Δlogit| {diff.max():.3g}"


def test_bf16_forward_tracks_the_reference_bf16(pair):
    """Our bf16 vs the reference's bf16 on the same weights and inputs: argmax agreement ≥ 95 % and
    max |Δlogit| ≤ 3× the reference's own bf16-vs-fp32 max |Δlogit|."""
    ref, _, path = pair
    ref16 = copy.deepcopy(ref).to(torch.bfloat16)
    ours16 = Thinker.from_pretrained(path, dtype=jnp.bfloat16)
    agree, total, worst_ratio = 0, 0, 0.0
    for case in ("image+audio", "video+audio_in_video", "batch_of_2_left_padded"):
        ids, mask, inputs, aiv = build_case(case, ref)
        ref32 = reference_logits(ref, ids, mask, inputs, aiv)
        refbf = reference_logits(ref16, ids, mask, inputs, aiv, dtype=torch.bfloat16)
        got = np.asarray(ours16(ids, mask, use_audio_in_video=aiv, **inputs).astype(jnp.float32))
        valid = mask == 1
        own_error = np.abs(refbf - ref32)[valid].max()
        ours_error = np.abs(got - refbf)[valid].max()
        worst_ratio = max(worst_ratio, ours_error / own_error)
        agree += (got.argmax(-1) == refbf.argmax(-1))[valid].sum()
        total += valid.sum()
    assert agree / total >= 0.95, f"argmax agreement {agree / total:.3f}"
    assert worst_ratio <= 3.0, f"max |Δlogit| is {worst_ratio:.2f}× the reference's own bf16 error"
