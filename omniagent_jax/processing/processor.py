"""OTA messages → model inputs with the HF input names (docs/model.md §4.1, §4.5; docs/protocol.md §8).

`OmniProcessor(messages)` does in one step what the reference does with qwen-omni-utils and the
HF processor: render the chat template, resize and patchify images (get_frames budget) and clips
(clip budget), compute Whisper log-mel for audio parts (and for each clip's own audio with
`use_audio_in_video`), tokenize, and expand every placeholder to exactly the number of tokens
the towers emit. numpy only: it runs in data-loader workers and the agent's policy.

Message format (the SFT step logs): `{"role", "content": str | [part, ...]}` with parts
`{"type": "text", "text"}`, `{"type": "image", "image"}`, `{"type": "audio", "audio"}`,
`{"type": "video", "video"}`. Media payloads are decoded objects — a uint8 `[H, W, 3]` array or a
PIL image; a float 16 kHz mono array; uint8 `[T, H, W, 3]` clip frames or a clip object with
`.frames` and `.audio` (None when silent) — or a file path, decoded through `omniagent_jax.media`
(images with PIL). Clip frames are taken as sampled (2 fps by the media layer); the processor
assumes 2 fps for their time positions, as the reference processor does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from omniagent_jax.processing import audio as audio_features
from omniagent_jax.processing import budgets, layout, tokens, vision

Message = Mapping[str, Any]
MEDIA_TYPES = ("image", "audio", "video")


@dataclasses.dataclass(frozen=True)
class ProcessorSettings:
    """Budgets and time grid of the processor; the defaults are the released checkpoint's.

    Images are resized twice, as in the reference: first to the get_frames budget (qwen-omni-utils
    `fetch_image`), then by the HF image processor's own budget (preprocessor_config.json), which
    is a no-op for the released values. Clips get the clip budget of `budgets` (docs/model.md §4.4).
    """

    image_min_pixels: int = budgets.IMAGE_MIN_PIXELS
    image_max_pixels: int = budgets.IMAGE_MAX_PIXELS
    processor_image_min_pixels: int = budgets.PROCESSOR_IMAGE_MIN_PIXELS
    processor_image_max_pixels: int = budgets.PROCESSOR_IMAGE_MAX_PIXELS
    fps: float = budgets.VIDEO_FPS
    position_id_per_seconds: float = budgets.POSITION_ID_PER_SECONDS
    seconds_per_chunk: float = budgets.SECONDS_PER_CHUNK


# preprocessor_config.json fields this implementation hard-wires (docs/model.md §4.2, §4.3): a checkpoint
# that differs would need other features than the towers of this port read.
_FIXED_FIELDS: dict[str, Any] = {
    "patch_size": budgets.PATCH_SIZE,
    "merge_size": budgets.MERGE_SIZE,
    "temporal_patch_size": budgets.TEMPORAL_PATCH_SIZE,
    "image_mean": list(budgets.IMAGE_MEAN),
    "image_std": list(budgets.IMAGE_STD),
    "feature_size": budgets.N_MELS,
    "n_fft": budgets.N_FFT,
    "hop_length": budgets.HOP_LENGTH,
    "sampling_rate": budgets.SAMPLING_RATE,
    "chunk_length": budgets.CHUNK_LENGTH_S,
    "dither": 0.0,
}


def read_preprocessor_config(path: str | os.PathLike) -> ProcessorSettings:
    """Settings from a checkpoint's `preprocessor_config.json` (flat 4.x layout, or the 5.x layout
    with per-component sub-dicts); fields this port hard-wires must match, else ValueError."""
    raw = json.loads(pathlib.Path(path).read_text())
    flat: dict[str, Any] = {}
    for key in ("image_processor", "feature_extractor"):
        if isinstance(raw.get(key), dict):
            flat.update(raw[key])
    flat.update({k: v for k, v in raw.items() if k not in ("image_processor", "feature_extractor", "video_processor")})
    wrong = []
    for key, expected in _FIXED_FIELDS.items():
        if key in flat and not _same_value(flat[key], expected):
            wrong.append(f"{key}={flat[key]!r} (supported: {expected!r})")
    if wrong:
        raise ValueError(f"{path}: unsupported preprocessor settings: {', '.join(wrong)}")
    size = flat.get("size") if isinstance(flat.get("size"), dict) else {}
    min_pixels = flat.get("min_pixels", size.get("shortest_edge", budgets.PROCESSOR_IMAGE_MIN_PIXELS))
    max_pixels = flat.get("max_pixels", size.get("longest_edge", budgets.PROCESSOR_IMAGE_MAX_PIXELS))
    return ProcessorSettings(processor_image_min_pixels=int(min_pixels), processor_image_max_pixels=int(max_pixels))


def _same_value(value: Any, expected: Any) -> bool:
    got, want = np.asarray(value, np.float64), np.asarray(expected, np.float64)
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=0, atol=1e-9))


@dataclasses.dataclass
class _Media:
    """The media of one conversation in placeholder order (audio: every audio the towers encode,
    standalone or a clip's own, in conversation order)."""

    images: list[Image.Image | np.ndarray] = dataclasses.field(default_factory=list)
    videos: list[np.ndarray] = dataclasses.field(default_factory=list)
    audios: list[np.ndarray] = dataclasses.field(default_factory=list)
    # For each placeholder in order: ("image"|"audio"|"video", index into its list, audio index or None).
    order: list[tuple[str, int, int | None]] = dataclasses.field(default_factory=list)


class OmniProcessor:
    """Messages in, HF-named model inputs out. Build with `from_pretrained`.

    `special_ids` are the ids the tokenizer's vocabulary gives the Omni special tokens (padding,
    placeholders, bos/eos): read from the tokenizer unless given.
    """

    def __init__(self, tokenizer: Any, settings: ProcessorSettings | None = None, special_ids: tokens.SpecialIds | None = None):
        self.tokenizer = tokenizer
        self.settings = settings or ProcessorSettings()
        self.special_ids = special_ids or tokens.SpecialIds.from_tokenizer(tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> OmniProcessor:
        """Tokenizer (with the Qwen chat template) via `load_tokenizer(path)`; settings from
        `path/preprocessor_config.json` when present, else the released defaults."""
        from omniagent_jax.processing.tokenizer import load_tokenizer

        settings = None
        if path is not None and (pathlib.Path(path) / "preprocessor_config.json").is_file():
            settings = read_preprocessor_config(pathlib.Path(path) / "preprocessor_config.json")
        return cls(load_tokenizer(path), settings)

    # ------------------------------------------------------------------------------- public

    def __call__(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        add_generation_prompt: bool = True,
        use_audio_in_video: bool = False,
    ) -> dict[str, np.ndarray]:
        """One conversation or a batch → `input_ids`, `attention_mask` (left-padded with the
        tokenizer's pad id) and, when present, `pixel_values`/`image_grid_thw`,
        `pixel_values_videos`/`video_grid_thw`/`video_second_per_grid`,
        `input_features`/`feature_attention_mask`. Media are concatenated over the batch in order.

        With `use_audio_in_video` every clip must carry its audio: its tokens are interleaved with
        the clip's in 2-s chunks (pass the same flag to the model). Without it a clip's audio is ignored.
        """
        batch = self._as_batch(messages)
        media = [self._collect_media(conv, b, use_audio_in_video) for b, conv in enumerate(batch)]
        out: dict[str, np.ndarray] = {}
        out.update(self._encode_images([img for m in media for img in m.images]))
        video_out, video_spg = self._encode_videos([v for m in media for v in m.videos])
        out.update(video_out)
        out.update(self._encode_audios([a for m in media for a in m.audios]))
        image_grids = out.get("image_grid_thw", np.zeros((0, 3), np.int64))
        video_grids = out.get("video_grid_thw", np.zeros((0, 3), np.int64))
        audio_lengths = out["feature_attention_mask"].sum(axis=1) if "feature_attention_mask" in out else np.zeros(0, np.int64)

        sequences = []
        offsets = {"image": 0, "video": 0, "audio": 0}
        for b, (conv, m) in enumerate(zip(batch, media)):
            ids = self._tokenize(conv, add_generation_prompt)
            sequences.append(self._expand(ids, m, offsets, image_grids, video_grids, video_spg, audio_lengths, b))
            offsets["image"] += len(m.images)
            offsets["video"] += len(m.videos)
            offsets["audio"] += len(m.audios)

        longest = max(len(s) for s in sequences)
        input_ids = np.full((len(sequences), longest), self.special_ids.pad, np.int64)
        attention_mask = np.zeros((len(sequences), longest), np.int64)
        for b, seq in enumerate(sequences):
            input_ids[b, longest - len(seq) :] = seq  # left padding, as the reference processor
            attention_mask[b, longest - len(seq) :] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, **out}

    def _encode_images(self, images: list[Image.Image | np.ndarray]) -> dict[str, np.ndarray]:
        """Two resizes, as in the reference: get_frames budget, then the HF processor's own."""
        if not images:
            return {}
        s = self.settings
        stage1 = [vision.resize_image(img, s.image_min_pixels, s.image_max_pixels) for img in images]
        pixel_values, grids = vision.process_images(stage1, s.processor_image_min_pixels, s.processor_image_max_pixels)
        return {"pixel_values": pixel_values, "image_grid_thw": grids}

    def _encode_videos(self, videos: list[np.ndarray]) -> tuple[dict[str, np.ndarray], list[float]]:
        """Video inputs, and `second_per_grid` as Python floats: the reference processor lays out
        the audio-in-video chunks with those (float64) before its output becomes float32."""
        if not videos:
            return {}, []
        # The clip budget's per-frame max depends on each clip's frame count (docs/model.md §4.4). The
        # HF video processor's own budget (128·28² … 768·28²) would be a no-op after it.
        encoded = [vision.process_video(frames, fps=self.settings.fps) for frames in videos]
        second_per_grid = [spg for _, _, spg in encoded]
        return {
            "pixel_values_videos": np.concatenate([rows for rows, _, _ in encoded]),
            "video_grid_thw": np.concatenate([grid for _, grid, _ in encoded]),
            "video_second_per_grid": np.asarray(second_per_grid, np.float32),
        }, second_per_grid

    @staticmethod
    def _encode_audios(audios: list[np.ndarray]) -> dict[str, np.ndarray]:
        if not audios:
            return {}
        features, mask = audio_features.extract_features(audios)
        return {"input_features": features, "feature_attention_mask": mask}

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The chat-template text of one conversation, with one placeholder per media part."""
        return self.tokenizer.apply_chat_template(
            [self._template_view(msg, i) for i, msg in enumerate(messages)],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    # ------------------------------------------------------------------------------ helpers

    @staticmethod
    def _as_batch(messages: Any) -> list[Sequence[Message]]:
        if isinstance(messages, (Mapping, str, bytes)):
            raise TypeError("messages must be a list of {'role', 'content'} dicts (or a list of such lists)")
        messages = list(messages)
        if not messages:
            raise ValueError("no messages given")
        if all(isinstance(m, Mapping) for m in messages):
            return [messages]
        if all(isinstance(c, Sequence) and not isinstance(c, (str, bytes, Mapping)) for c in messages):
            for b, conv in enumerate(messages):
                if not conv or not all(isinstance(m, Mapping) for m in conv):
                    raise ValueError(f"conversation {b} must be a non-empty list of message dicts")
            return [list(conv) for conv in messages]
        raise TypeError("messages must be a list of message dicts or a list of conversations, not a mix")

    @staticmethod
    def _template_view(message: Message, index: int) -> dict[str, Any]:
        """The message as the chat template sees it: role, text and part types, no payloads
        (decoded arrays have no business in a Jinja render)."""
        if "role" not in message or "content" not in message:
            raise ValueError(f"message {index} needs 'role' and 'content', got keys {sorted(message)}")
        content = message["content"]
        if isinstance(content, str):
            return {"role": message["role"], "content": content}
        parts = []
        for part in content:
            kind = _part_type(part, index)
            parts.append({"type": "text", "text": part["text"]} if kind == "text" else {"type": kind, kind: ""})
        return {"role": message["role"], "content": parts}

    def _collect_media(self, conversation: Sequence[Message], sample: int, use_audio_in_video: bool) -> _Media:
        media = _Media()
        for i, message in enumerate(conversation):
            content = message.get("content")
            if isinstance(content, str) or content is None:
                continue
            for part in content:
                kind = _part_type(part, i)
                where = f"sample {sample}, message {i}"
                if kind == "image":
                    media.order.append(("image", len(media.images), None))
                    media.images.append(_load_image(part["image"], where))
                elif kind == "audio":
                    media.order.append(("audio", len(media.audios), len(media.audios)))
                    media.audios.append(_load_audio(part, where))
                elif kind == "video":
                    frames, clip_audio = _load_video(part, where)
                    audio_index = None
                    if use_audio_in_video:
                        if clip_audio is None:
                            raise ValueError(
                                f"{where}: use_audio_in_video=True but this clip has no audio; "
                                "process silent clips with use_audio_in_video=False"
                            )
                        audio_index = len(media.audios)
                        media.audios.append(_check_wave(clip_audio, where))
                    media.order.append(("video", len(media.videos), audio_index))
                    media.videos.append(frames)
        return media

    def _tokenize(self, conversation: Sequence[Message], add_generation_prompt: bool) -> list[int]:
        text = self.render(conversation, add_generation_prompt)
        return list(self.tokenizer(text)["input_ids"])

    def _expand(
        self,
        ids: list[int],
        media: _Media,
        offsets: dict[str, int],
        image_grids: np.ndarray,
        video_grids: np.ndarray,
        video_spg: list[float],
        audio_lengths: np.ndarray,
        sample: int,
    ) -> list[int]:
        """Replaces each placeholder id by its tokens (docs/model.md §4.5); the k-th placeholder of the
        sample must be the k-th media part, else the text itself holds placeholder strings."""
        special = self.special_ids
        placeholder_kind = special.placeholders
        found = [placeholder_kind[t] for t in ids if t in placeholder_kind]
        expected = [kind for kind, _, _ in media.order]
        if found != expected:
            raise ValueError(
                f"sample {sample}: the rendered prompt has media placeholders {found} but the messages carry "
                f"{expected}; text parts must not contain {tokens.IMAGE}/{tokens.AUDIO}/{tokens.VIDEO}"
            )
        out: list[int] = []
        slots = iter(media.order)
        merge = budgets.MERGE_SIZE
        for t in ids:
            if t not in placeholder_kind:
                out.append(t)
                continue
            kind, index, audio_index = next(slots)
            if kind == "image":
                out += [special.image] * layout.vision_token_count(image_grids[offsets["image"] + index], merge)
            elif kind == "audio":
                n = layout.audio_token_count(int(audio_lengths[offsets["audio"] + audio_index]))
                out += [special.audio] * n
            elif audio_index is None:
                out += [special.video] * layout.vision_token_count(video_grids[offsets["video"] + index], merge)
            else:
                v = offsets["video"] + index
                n_audio = layout.audio_token_count(int(audio_lengths[offsets["audio"] + audio_index]))
                chunks = layout.audio_in_video_chunks(
                    video_grids[v],
                    video_spg[v],
                    n_audio,
                    merge,
                    self.settings.position_id_per_seconds,
                    self.settings.seconds_per_chunk,
                )
                out.append(special.audio_bos)
                for n_video, n_audio_chunk in chunks:
                    out += [special.video] * n_video + [special.audio] * n_audio_chunk
                out.append(special.audio_eos)
        return out


# ------------------------------------------------------------------------------- media loading


def _part_type(part: Any, index: int) -> str:
    if not isinstance(part, Mapping) or "type" not in part:
        raise ValueError(f"message {index}: content parts must be dicts with a 'type', got {part!r:.80}")
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise ValueError(f"message {index}: a text part needs a string 'text'")
        return kind
    if kind not in MEDIA_TYPES:
        raise ValueError(f"message {index}: unknown content type {kind!r} (expected text, image, audio or video)")
    if part.get(kind) is None:
        raise ValueError(f"message {index}: a {kind} part needs its payload under {kind!r}")
    return kind


def _as_path(value: Any) -> pathlib.Path | None:
    if isinstance(value, os.PathLike):
        return pathlib.Path(value)
    if isinstance(value, str):
        if value.startswith(("http://", "https://", "data:")):
            raise ValueError(f"remote or inline media are not supported, got {value[:60]!r}")
        return pathlib.Path(value.removeprefix("file://"))
    return None


def _load_image(value: Any, where: str) -> Image.Image | np.ndarray:
    path = _as_path(value)
    if path is None:
        if not isinstance(value, (np.ndarray, Image.Image)):
            raise TypeError(f"{where}: an image must be a uint8 array, a PIL image or a path, got {type(value).__name__}")
        vision.to_rgb(value)  # validates dtype/shape here, where the message index is known
        return value
    try:
        with Image.open(path) as img:
            img.load()
            return vision.to_rgb(img)
    except (OSError, Image.UnidentifiedImageError) as e:
        raise ValueError(f"{where}: cannot read image {str(path)!r}: {e}") from e


def _check_wave(wave: Any, where: str) -> np.ndarray:
    if not isinstance(wave, np.ndarray) or not np.issubdtype(wave.dtype, np.floating) or wave.ndim != 1 or wave.size == 0:
        desc = f"{wave.dtype} {wave.shape}" if isinstance(wave, np.ndarray) else type(wave).__name__
        raise ValueError(f"{where}: audio must be a non-empty 1-D float array at 16 kHz, got {desc}")
    return wave


def _media_module(where: str, what: str):
    try:
        from omniagent_jax import media
    except ImportError as e:  # pragma: no cover - media is part of the package
        raise RuntimeError(f"{where}: decoding {what} from a path needs omniagent_jax.media") from e
    return media


def _load_audio(part: Mapping[str, Any], where: str) -> np.ndarray:
    value = part["audio"]
    path = _as_path(value)
    if path is None:
        return _check_wave(value, where)
    media = _media_module(where, "audio")
    start = float(part.get("audio_start", 0.0))
    end = part.get("audio_end")
    if end is None:
        end = media.probe(str(path)).duration
    return _check_wave(media.read_audio(str(path), start, float(end)), where)


def _load_video(part: Mapping[str, Any], where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Clip frames uint8 `[T, H, W, 3]` and the clip's audio (None when it has none)."""
    value = part["video"]
    path = _as_path(value)
    if path is not None:
        media = _media_module(where, "video")
        start = float(part.get("video_start", 0.0))
        end = part.get("video_end")
        if end is None:
            end = media.probe(str(path)).duration
        value = media.read_clip(str(path), start, float(end))
    if isinstance(value, np.ndarray):
        frames, clip_audio = value, None
    elif hasattr(value, "frames"):
        frames, clip_audio = value.frames, getattr(value, "audio", None)
    else:
        raise TypeError(
            f"{where}: a video must be uint8 [T, H, W, 3] frames, a clip with .frames/.audio or a path, "
            f"got {type(value).__name__}"
        )
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        desc = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"{where}: video frames must be uint8 [T, H, W, 3], got {desc}")
    if frames.shape[0] == 0:
        raise ValueError(f"{where}: video has no frames")
    return frames, clip_audio
