"""`OmniProcessor` vs the reference's own processor: transformers 5.23 `Qwen2_5OmniProcessor` built
from `Qwen2VLImageProcessorPil`, `WhisperFeatureExtractor` and our tokenizer, with a minimal
stand-in video processor (torchvision cannot run here; docs/model.md §5). Media are pre-resized the way
qwen-omni-utils does before the HF processor sees them (docs/model.md §4.1, §4.3, §4.4)."""

from __future__ import annotations

import copy
import json
import types

import numpy as np
import pytest
from PIL import Image

from omniagent_jax.processing import budgets, tokens
from omniagent_jax.processing.processor import OmniProcessor, ProcessorSettings, read_preprocessor_config

transformers = pytest.importorskip("transformers")
from transformers import WhisperFeatureExtractor  # noqa: E402
from transformers.models.qwen2_5_omni import processing_qwen2_5_omni  # noqa: E402
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_vl  # noqa: E402
from transformers.models.whisper import feature_extraction_whisper  # noqa: E402

RNG = np.random.default_rng(7)
VIDEO = (budgets.VIDEO_MIN_PIXELS, budgets.VIDEO_MAX_PIXELS)


@pytest.fixture(scope="module")
def tokenizer():
    from omniagent_jax.processing.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    return OmniProcessor(tokenizer)


class StandInVideoProcessor:
    """What `Qwen2VLVideoProcessor` does to pre-resized frames (docs/model.md §4.4): /255, CLIP
    normalisation, pad T to even with the last frame, `view(...).permute(...)` patchify."""

    merge_size = 2
    temporal_patch_size = 2

    def __call__(self, videos, **kwargs):
        rows, grids = [], []
        mean = np.array(budgets.IMAGE_MEAN, np.float32)
        std = np.array(budgets.IMAGE_STD, np.float32)
        for frames in videos:
            x = ((np.asarray(frames).astype(np.float64) / 255).astype(np.float32) - mean) / std  # [T, H, W, C]
            if len(x) % 2:
                x = np.concatenate([x, x[-1:]])
            x = x.transpose(0, 3, 1, 2)  # [T, C, H, W]
            t, c, h, w = x.shape
            gt, gh, gw = t // 2, h // 14, w // 14
            x = x.reshape(gt, 2, c, gh // 2, 2, 14, gw // 2, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
            rows.append(x.reshape(gt * gh * gw, c * 2 * 14 * 14))
            grids.append([gt, gh, gw])
        return {"pixel_values_videos": np.concatenate(rows), "video_grid_thw": np.array(grids)}


@pytest.fixture(scope="module")
def reference(tokenizer):
    proc_cls = processing_qwen2_5_omni.Qwen2_5OmniProcessor
    # docs/model.md §5: the video slot cannot hold a real video processor, so skip the class checks.
    original = proc_cls.check_argument_for_proper_class
    proc_cls.check_argument_for_proper_class = lambda self, name, arg: type(arg)
    try:
        ref = proc_cls(
            image_processor=hf_vl.Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12_845_056),
            video_processor=StandInVideoProcessor(),
            feature_extractor=WhisperFeatureExtractor(
                feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300, n_fft=400,
                padding_value=0.0, dither=0.0, return_attention_mask=True,
            ),
            tokenizer=copy.deepcopy(tokenizer),  # load_tokenizer's result is shared: never mutate it
            chat_template=tokenizer.chat_template,
        )
    finally:
        proc_cls.check_argument_for_proper_class = original
    return ref


# --------------------------------------------------------------------------------- reference flow


def fetch_image(image):
    """qwen-omni-utils `fetch_image` on a decoded image: RGB, smart_resize in the get_frames budget, PIL resize."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    img = img.convert("RGB")
    h, w = hf_vl.smart_resize(img.height, img.width, 28, budgets.IMAGE_MIN_PIXELS, budgets.IMAGE_MAX_PIXELS)
    return img.resize((w, h), Image.BICUBIC)


def fetch_video(frames):
    """qwen-omni-utils `fetch_video` resize of sampled frames (PIL bicubic standing in for torchvision)."""
    n, height, width, _ = frames.shape
    h, w = hf_vl.smart_resize(height, width, 28, VIDEO[0], budgets.video_frame_max_pixels(n))
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])


def reference_inputs(ref, conversations, use_audio_in_video, monkeypatch):
    """The model-card flow: template text, media lists in conversation order, one processor call."""
    texts, images, videos, audios, audio_sources = [], [], [], [], []
    for conv in conversations:
        view = []
        for msg in conv:
            content = msg["content"]
            if not isinstance(content, str):
                content = [p if p["type"] == "text" else {"type": p["type"], p["type"]: "file.bin"} for p in content]
            view.append({"role": msg["role"], "content": content})
            for part in msg["content"] if not isinstance(msg["content"], str) else []:
                if part["type"] == "image":
                    images.append(fetch_image(part["image"]))
                elif part["type"] == "audio":
                    audios.append(part["audio"])
                    audio_sources.append(None)
                elif part["type"] == "video":
                    clip = part["video"]
                    frames = clip.frames if hasattr(clip, "frames") else clip
                    if use_audio_in_video:
                        audios.append(clip.audio)
                        audio_sources.append(len(videos))
                    videos.append(fetch_video(frames))
        texts.append(ref.apply_chat_template(view, tokenize=False, add_generation_prompt=True))
    kwargs = {}
    if use_audio_in_video:
        kwargs = {"load_audio_from_video": True, "audio_from_video_indices": audio_sources}
    with monkeypatch.context() as patch:
        # The extractor's numpy path is the exact float64 spectrum (see test_processing_features).
        patch.setattr(feature_extraction_whisper, "is_torch_available", lambda: False)
        out = ref(
            text=texts, images=images or None, videos=videos or None, audio=audios or None,
            padding=True, return_tensors="np", **kwargs,
        )
    return dict(out)


def assert_same_inputs(ours, ref):
    np.testing.assert_array_equal(ours["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(ours["attention_mask"], ref["attention_mask"])
    expected_keys = {"input_ids", "attention_mask"}
    if "pixel_values" in ref:
        expected_keys |= {"pixel_values", "image_grid_thw"}
        np.testing.assert_array_equal(ours["image_grid_thw"], ref["image_grid_thw"])
        np.testing.assert_allclose(ours["pixel_values"], ref["pixel_values"], rtol=0, atol=1e-6)
    if "pixel_values_videos" in ref:
        expected_keys |= {"pixel_values_videos", "video_grid_thw", "video_second_per_grid"}
        np.testing.assert_array_equal(ours["video_grid_thw"], ref["video_grid_thw"])
        np.testing.assert_allclose(ours["pixel_values_videos"], ref["pixel_values_videos"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(ours["video_second_per_grid"], ref["video_second_per_grid"])
    if "input_features" in ref:
        expected_keys |= {"input_features", "feature_attention_mask"}
        length = ours["feature_attention_mask"].shape[1]
        np.testing.assert_array_equal(ours["feature_attention_mask"], ref["feature_attention_mask"][:, :length])
        assert ref["feature_attention_mask"][:, length:].sum() == 0
        np.testing.assert_allclose(ours["input_features"], ref["input_features"][:, :, :length], rtol=0, atol=1e-5)
    assert set(ours) == expected_keys


# ------------------------------------------------------------------------------------ media makers


def image(height, width):
    return RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def wave(seconds):
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 300 * t) + 0.02 * RNG.standard_normal(n)).astype(np.float32)


def clip(n_frames, height, width, audio_seconds=None):
    frames = RNG.integers(0, 256, size=(n_frames, height, width, 3), dtype=np.uint8)
    audio = wave(audio_seconds) if audio_seconds is not None else None
    return types.SimpleNamespace(frames=frames, audio=audio, timestamps=tuple(np.arange(n_frames) / 2))


SYSTEM = {"role": "system", "content": [{"type": "text", "text": "You are the agent."}]}


def user(*parts):
    content = []
    for p in parts:
        if isinstance(p, str):
            content.append({"type": "text", "text": p})
        else:
            content.append(p)
    return {"role": "user", "content": content}


def part(kind, payload):
    return {"type": kind, kind: payload}


# ------------------------------------------------------------------------------------------ tests


def test_text_only(processor, reference, monkeypatch):
    conv = [SYSTEM, user("Question: what happens? Ünïcödé 漢字 🙂"), {"role": "assistant", "content": "ok"}, user("go")]
    ours = processor(conv)
    assert_same_inputs(ours, reference_inputs(reference, [conv], False, monkeypatch))
    assert ours["input_ids"][0, :3].tolist() == [tokens.IM_START_ID, 8948, 198]  # "<|im_start|>system\n"


def test_sft_step_log_prompt(processor, reference, monkeypatch, reference_dir):
    # The released system prompt and a real first user turn, as the SFT step logs hold them.
    record = json.loads((reference_dir / "example_train_sft.jsonl").read_text().splitlines()[0])
    conv = record["raw_input"]
    ours = processor(conv)
    assert_same_inputs(ours, reference_inputs(reference, [conv], False, monkeypatch))
    assert ours["input_ids"].shape[1] > 500


def test_default_system_turn_and_generation_prompt(processor, tokenizer):
    ids = processor([{"role": "user", "content": "hi"}])["input_ids"][0].tolist()
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")
    no_prompt = processor([{"role": "user", "content": "hi"}], add_generation_prompt=False)["input_ids"][0].tolist()
    assert ids[: len(no_prompt)] == no_prompt and len(ids) > len(no_prompt)


def test_images(processor, reference, monkeypatch):
    conv = [
        SYSTEM,
        user("Frames 0.00s-2.00s (num=3).", "Frame 0.00s:", part("image", image(1080, 1920)),
             "Frame 1.00s:", part("image", Image.fromarray(image(360, 640))), "Frame 2.00s:", part("image", image(90, 40))),
    ]
    ours = processor(conv)
    assert_same_inputs(ours, reference_inputs(reference, [conv], False, monkeypatch))
    n_image_tokens = int((ours["input_ids"] == tokens.IMAGE_ID).sum())
    assert n_image_tokens == int(ours["image_grid_thw"].prod(axis=1).sum()) // 4


def test_audio(processor, reference, monkeypatch):
    conv = [SYSTEM, user("Audio 0.00s-3.21s", part("audio", wave(3.2125))), user("and", part("audio", wave(0.5)))]
    ours = processor(conv)
    assert_same_inputs(ours, reference_inputs(reference, [conv], False, monkeypatch))
    # 51,400 samples → 322 mel frames → 80 tokens; 8,000 samples → 50 frames → 12 tokens.
    assert int((ours["input_ids"] == tokens.AUDIO_ID).sum()) == 80 + 12


def test_video_without_audio(processor, reference, monkeypatch):
    conv = [SYSTEM, user("Clip 0.00s-2.50s", part("video", clip(5, 120, 200, audio_seconds=2.5)))]
    ours = processor(conv)
    assert_same_inputs(ours, reference_inputs(reference, [conv], False, monkeypatch))
    assert ours["video_second_per_grid"].tolist() == [1.0]


def test_video_with_audio_in_video(processor, reference, monkeypatch):
    # A 6-s clip at 2 fps and its audio, a standalone audio before it and an image after it: the
    # clip's audio consumes the next audio slot; its tokens interleave in 2-s chunks.
    conv = [
        SYSTEM,
        user("Audio 0.00s-1.00s", part("audio", wave(1.0)), "Clip 1.00s-7.00s", part("video", clip(12, 140, 250, 6.0)),
             part("image", image(64, 64))),
    ]
    ours = processor(conv, use_audio_in_video=True)
    assert_same_inputs(ours, reference_inputs(reference, [conv], True, monkeypatch))
    ids = ours["input_ids"][0].tolist()
    start = ids.index(tokens.VISION_BOS_ID)
    assert ids[start + 1] == tokens.AUDIO_BOS_ID
    assert ours["feature_attention_mask"].sum(axis=1).tolist() == [100, 600]


def test_batch_left_padding_and_media_order(processor, reference, monkeypatch):
    convs = [
        [SYSTEM, user("short", part("image", image(56, 56)))],
        [SYSTEM, user("a longer question with two frames", part("image", image(300, 200)), part("image", image(200, 300)),
                      part("audio", wave(2.0)), part("video", clip(4, 100, 100, 2.0)))],
        [{"role": "user", "content": "text only"}],
    ]
    ours = processor(convs, use_audio_in_video=True)
    assert_same_inputs(ours, reference_inputs(reference, convs, True, monkeypatch))
    mask = ours["attention_mask"]
    assert mask[0, 0] == 0 and mask[1].all() and (ours["input_ids"][mask == 0] == tokens.PAD_ID).all()


@pytest.mark.parametrize("fps", [0.5, 3.0])
def test_other_fps_layout(tokenizer, reference, monkeypatch, fps):
    # fps 0.5: temporal patches 100 position units apart, so the single-step chunk scanner
    # misaligns video and audio chunks; fps 3: fractional positions (2/3 s per temporal patch).
    # Both exactly as the reference processor lays them out.
    processor = OmniProcessor(tokenizer, ProcessorSettings(fps=fps))
    video = clip(8, 56, 56, 16.0)
    ours = processor([SYSTEM, user(part("video", video))], use_audio_in_video=True)
    text = reference.apply_chat_template([SYSTEM, user(part("video", "clip.mp4"))], tokenize=False, add_generation_prompt=True)
    with monkeypatch.context() as patch:
        patch.setattr(feature_extraction_whisper, "is_torch_available", lambda: False)
        ref = reference(
            text=[text], videos=[fetch_video(video.frames)], audio=[video.audio], padding=True, return_tensors="np",
            load_audio_from_video=True, audio_from_video_indices=[0], videos_kwargs={"fps": fps},
        )
    np.testing.assert_array_equal(ours["input_ids"], ref["input_ids"])
    np.testing.assert_allclose(ours["video_second_per_grid"], ref["video_second_per_grid"])
    assert ours["video_second_per_grid"].tolist() == [pytest.approx(2 / fps)]


def test_use_audio_in_video_needs_clip_audio(processor):
    silent = clip(2, 56, 56)
    with pytest.raises(ValueError, match="no audio"):
        processor([user(part("video", silent))], use_audio_in_video=True)
    with pytest.raises(ValueError, match="no audio"):
        processor([user(part("video", silent.frames))], use_audio_in_video=True)
    # Without the flag silent clips are fine and a clip's audio is ignored.
    out = processor([user(part("video", silent))])
    # 56×56 frames grow to the clip minimum of 128·28² pixels: 336×336.
    assert "input_features" not in out and out["video_grid_thw"].tolist() == [[1, 24, 24]]
    with_audio = processor([user(part("video", clip(2, 56, 56, 1.0)))])
    assert "input_features" not in with_audio


def test_image_path(processor, tmp_path):
    pixels = image(100, 150)
    Image.fromarray(pixels).save(tmp_path / "frame.png")
    from_path = processor([user(part("image", str(tmp_path / "frame.png")))])
    from_array = processor([user(part("image", pixels))])
    for key in from_array:
        np.testing.assert_array_equal(from_path[key], from_array[key])
    with pytest.raises(ValueError, match="cannot read image"):
        processor([user(part("image", str(tmp_path / "missing.jpg")))])


def test_media_paths_decode_through_media(processor, tmp_path):
    media = pytest.importorskip("omniagent_jax.media")
    import media_factory

    video_path = media_factory.make_video(tmp_path / "clip.mp4", duration=3.0, fps=10.0, width=64, height=48, audio=True)
    audio_path = media_factory.make_audio_only(tmp_path / "speech.wav", duration=1.5)
    info = media.probe(video_path)
    by_path = processor(
        [user(part("audio", str(audio_path)), {"type": "video", "video": str(video_path), "video_start": 0.5, "video_end": 2.5})],
        use_audio_in_video=True,
    )
    decoded_audio = media.read_audio(audio_path, 0.0, media.probe(audio_path).duration)
    decoded_clip = media.read_clip(video_path, 0.5, 2.5)
    by_object = processor([user(part("audio", decoded_audio), part("video", decoded_clip))], use_audio_in_video=True)
    assert set(by_path) == set(by_object)
    for key in by_object:
        np.testing.assert_array_equal(by_path[key], by_object[key])
    assert len(decoded_clip.frames) == 4 and info.has_audio
    whole = processor([user(part("video", video_path))])  # a PathLike and no range: the whole video
    whole_clip = media.read_clip(video_path, 0.0, info.duration)
    by_clip = processor([user(part("video", whole_clip))])
    np.testing.assert_array_equal(whole["pixel_values_videos"], by_clip["pixel_values_videos"])
    with pytest.raises(media.MediaError):
        processor([user(part("video", str(tmp_path / "missing.mp4")))])


def test_message_errors(processor):
    with pytest.raises(TypeError, match="list"):
        processor({"role": "user", "content": "hi"})
    with pytest.raises(ValueError, match="no messages"):
        processor([])
    with pytest.raises(ValueError, match="'role' and 'content'"):
        processor([{"role": "user"}])
    with pytest.raises(ValueError, match="unknown content type"):
        processor([user({"type": "gif", "gif": 1})])
    with pytest.raises(ValueError, match="payload"):
        processor([user({"type": "image"})])
    with pytest.raises(ValueError, match="placeholders"):
        processor([user("a literal <|IMAGE|> in the text")])
    with pytest.raises(TypeError, match="uint8"):
        processor([user(part("image", np.zeros((28, 28, 3), np.float32)))])
    with pytest.raises(TypeError, match="an image must be"):
        processor([user(part("image", 3))])
    with pytest.raises(ValueError, match="audio must be"):
        processor([user(part("audio", np.zeros(100, np.int16)))])
    with pytest.raises(ValueError, match="frames must be uint8"):
        processor([user(part("video", np.zeros((2, 28, 28), np.uint8)))])
    with pytest.raises(TypeError, match="a video must be"):
        processor([user(part("video", 1.5))])
    with pytest.raises(ValueError, match="remote"):
        processor([user(part("image", "https://example.com/a.jpg"))])
    with pytest.raises(TypeError, match="not a mix"):
        processor([[user("a")], user("b")])


def test_preprocessor_config(tmp_path, tokenizer):
    released = {
        "chunk_length": 300, "dither": 0.0, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128,
        "hop_length": 160, "image_mean": list(budgets.IMAGE_MEAN), "image_std": list(budgets.IMAGE_STD),
        "max_pixels": 12845056, "merge_size": 2, "min_pixels": 3136, "n_fft": 400, "n_samples": 4800000,
        "nb_max_frames": 30000, "padding_side": "right", "padding_value": 0.0, "patch_size": 14,
        "processor_class": "Qwen2_5OmniProcessor", "return_attention_mask": True, "sampling_rate": 16000,
        "temporal_patch_size": 2,
    }
    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps(released))
    assert read_preprocessor_config(path) == ProcessorSettings()
    # 5.x layout: per-component sub-dicts and a size dict.
    nested = {"image_processor": {"size": {"shortest_edge": 6272, "longest_edge": 401408}, "patch_size": 14},
              "feature_extractor": {"feature_size": 128}}
    path.write_text(json.dumps(nested))
    settings = read_preprocessor_config(path)
    assert (settings.processor_image_min_pixels, settings.processor_image_max_pixels) == (6272, 401408)
    # A tighter HF budget resizes a second time, as in the reference.
    processor = OmniProcessor(tokenizer, settings)
    grid = processor([user(part("image", image(1080, 1920)))])["image_grid_thw"]
    ref = hf_vl.Qwen2VLImageProcessorPil(min_pixels=6272, max_pixels=401408)(images=[fetch_image(image(1080, 1920))])
    np.testing.assert_array_equal(grid, ref["image_grid_thw"])
    loaded = OmniProcessor.from_pretrained(tmp_path)  # no tokenizer files there: the built-in tokenizer
    assert loaded.settings == settings and loaded.tokenizer.convert_tokens_to_ids(tokens.VIDEO) == tokens.VIDEO_ID
    assert OmniProcessor.from_pretrained().settings == ProcessorSettings()
    path.write_text(json.dumps({**released, "feature_size": 80, "patch_size": 16}))
    with pytest.raises(ValueError, match="feature_size=80.*patch_size=16|patch_size=16.*feature_size=80"):
        read_preprocessor_config(path)


def test_inputs_feed_both_thinkers(processor, reference_pairs):
    # End to end: the placeholder counts equal what the towers emit (the reference model raises on
    # any mismatch) and our thinker gives the reference's logits on the processor's output.
    import torch

    ref_model, ours_model, _ = reference_pairs("tiny.yaml")
    convs = [
        [user("look", part("image", image(50, 70)), part("audio", wave(1.3)), part("video", clip(6, 60, 80, 2.6)))],
        [user("hello")],
    ]
    inputs = processor(convs, use_audio_in_video=True)
    media = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        want = ref_model(
            input_ids=torch.as_tensor(inputs["input_ids"]), attention_mask=torch.as_tensor(inputs["attention_mask"]),
            use_audio_in_video=True, **{k: torch.as_tensor(v) for k, v in media.items()},
        ).logits.float().numpy()
    got = np.asarray(ours_model(inputs["input_ids"], inputs["attention_mask"], use_audio_in_video=True, **media))
    real = inputs["attention_mask"] == 1
    assert np.abs(got - want)[real].max() <= 1e-4
