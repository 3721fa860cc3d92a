"""SFT step logs (docs/protocol.md §7.2) → token sequences with target-only labels.

One sample per step-log row: context = `raw_input` rendered through the processor with a generation
prompt, target = `output` + `<|im_end|>`; labels are the next token on target positions and
`IGNORE` elsewhere. The released step logs carry dummy media paths, so every media part is re-cut
from `extra_info.video` (under `data_root`) using the text header before it: `Frames s-e (num=n).`
and the `Frame t s:` label for each image, `Audio s-e` for an audio part, `Clip s-e` for a video
part, read by `agent.prompts.parse_media_header` (the inverse of the environment's formatters).
Trajectory mode packs one trajectory into one sample (its last step's history + output) with
a loss on every assistant turn.

Numpy + media + processing + agent only (no JAX): this runs inside data-loader worker processes.
Bad rows raise `SampleError`; the pipeline counts and skips them.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from omniagent_jax.agent.messages import MEDIA_PART_TYPES, PART_TYPE_OF_KIND, has_media
from omniagent_jax.agent.prompts import MediaHeader, parse_media_header
from omniagent_jax.media import MediaError, open_video
from omniagent_jax.processing import tokens
from omniagent_jax.train.labels import IGNORE

_PART_TYPE_OF_HEADER = {**PART_TYPE_OF_KIND, "frame": "image"}  # the media part type a header locates
_MISSING = {"image": "an image part without a `Frame t s:` label before it",
            "audio": "an audio part without an `Audio s-e` header before it",
            "video": "a video part without a `Clip s-e` header before it"}


class SampleError(ValueError):
    """A step-log row that cannot become a training sample (the message says why)."""


def parse_line(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise SampleError(f"{where}: malformed JSON: {e}") from None
    if not isinstance(row, dict):
        raise SampleError(f"{where}: a row must be a JSON object")
    for key in ("raw_input", "output", "extra_info"):
        if key not in row:
            raise SampleError(f"{where}: missing field {key!r}")
    if not isinstance(row["raw_input"], list) or not isinstance(row["output"], str):
        raise SampleError(f"{where}: raw_input must be a list and output a string")
    return row


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty lines of a JSONL file (parsed later, per sample, so a bad line costs one sample)."""
    with open(path, encoding="utf-8") as f:
        return [line for line in f if line.strip()]


def _needs_media(messages: Sequence[Mapping[str, Any]]) -> bool:
    return any(has_media(m) for m in messages)


def media_sources(content: Sequence[Mapping[str, Any]], where: str = "message") -> list[MediaHeader]:
    """For each media part of a message's content, in order, the header that says what to cut: an
    image's `Frame t s:` label (or a one-frame `Frame at t s (num=1).` header), an audio part's
    `Audio s-e`, a video part's `Clip s-e`. Each header locates the next part of its type only."""
    pending: dict[str, MediaHeader | None] = dict.fromkeys(MEDIA_PART_TYPES)
    sources = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            header = parse_media_header(part.get("text", ""))
            if header is None:
                continue
            # a frames header of several frames only announces the labels that locate its images
            pending[_PART_TYPE_OF_HEADER[header.kind]] = None if header.kind == "frames" and header.num != 1 else header
        elif kind in MEDIA_PART_TYPES:
            if (header := pending[kind]) is None:
                raise SampleError(f"{where}: {_MISSING[kind]}")
            sources.append(header)
            pending[kind] = None
    return sources


def recut_media(messages: Sequence[Mapping[str, Any]], video_path: str, where: str) -> list[dict[str, Any]]:
    """A copy of `messages` whose media parts hold media decoded from `video_path`, located by the
    text header (and frame label) that precedes each part (`media_sources`)."""
    out = copy.deepcopy(list(messages))
    if not _needs_media(out):
        return out
    try:
        reader = open_video(video_path)
    except MediaError as e:
        raise SampleError(f"{where}: unreadable video: {e}") from None
    with reader:
        for m in out:
            content = m.get("content")
            if not isinstance(content, list):
                continue
            parts = [p for p in content if p.get("type") in MEDIA_PART_TYPES]
            for part, src in zip(parts, media_sources(content, where)):
                kind = part["type"]
                try:
                    if kind == "image":
                        part["image"] = reader.frames([src.start])[0]
                    elif kind == "audio":
                        part["audio"] = reader.audio(src.start, src.end)
                    else:
                        part["video"] = reader.clip(src.start, src.end)
                except MediaError as e:
                    raise SampleError(f"{where}: {kind} re-cut failed: {e}") from None
    return out


class SampleEncoder:
    """Step-log rows → `{"input_ids", "labels", media inputs…}` numpy dicts (picklable for workers)."""

    def __init__(self, processor: Any, *, data_root: str, max_length: int, mode: str = "step",
                 use_audio_in_video: bool = True, vocab_remap: int = 0):
        if vocab_remap and processor.special_ids != tokens.QWEN_SPECIAL_IDS:
            raise ValueError("vocab_remap shrinks the Qwen vocabulary; this tokenizer has its own special ids (use it without)")
        self.processor = processor
        self.data_root = data_root
        self.max_length = max_length
        self.mode = mode
        self.use_audio_in_video = use_audio_in_video
        self.vocab_remap = vocab_remap

    def _encode_text(self, text: str) -> list[int]:
        return list(self.processor.tokenizer.encode(text, add_special_tokens=False))

    def encode(self, row: Mapping[str, Any], where: str = "row") -> dict[str, np.ndarray]:
        info = row.get("extra_info") or {}
        video = info.get("video")
        messages = row["raw_input"]
        if _needs_media(messages):
            if not isinstance(video, str) or not video:
                raise SampleError(f"{where}: media parts but no extra_info.video")
            messages = recut_media(messages, os.path.join(self.data_root, video), where)
        has_audio = bool(info.get("has_audio", False))
        aiv = self.use_audio_in_video and has_audio and _has_clip(messages)
        try:
            inputs = self.processor(messages, add_generation_prompt=True, use_audio_in_video=aiv)
        except (ValueError, TypeError, KeyError) as e:
            raise SampleError(f"{where}: the processor rejected the messages: {e}") from None
        context = inputs.pop("input_ids")[0]
        inputs.pop("attention_mask")
        target = self._encode_text(row["output"]) + [self.processor.special_ids.im_end]
        ids = np.concatenate([context, np.asarray(target, context.dtype)])
        labels = np.full(ids.shape, IGNORE, np.int64)
        labels[len(context) - 1 : len(ids) - 1] = ids[len(context) :]
        if self.mode == "trajectory":
            self._label_earlier_turns(row["raw_input"], ids, labels)
        if len(ids) > self.max_length:
            raise SampleError(f"{where}: {len(ids)} tokens exceed max_length {self.max_length}")
        if self.vocab_remap:  # placeholders move with the model config's special ids (setup.model_config)
            ids = remap_ids(ids, self.vocab_remap)
            labels = np.where(labels == IGNORE, IGNORE, remap_ids(np.maximum(labels, 0), self.vocab_remap))
        return {
            "input_ids": ids.astype(np.int32), "labels": labels.astype(np.int32), "use_audio_in_video": np.asarray(aiv), **inputs
        }

    def _label_earlier_turns(self, messages: Sequence[Mapping[str, Any]], ids: np.ndarray, labels: np.ndarray) -> None:
        """Trajectory mode: also train on every earlier assistant turn of the history. Each turn's
        start is the length of the rendered (text-only) prefix with a generation prompt; it ends at
        its `<|im_end|>` (included)."""
        for i, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            start = len(self.processor(list(messages[:i]), add_generation_prompt=True)["input_ids"][0])
            ends = np.flatnonzero(ids[start:] == self.processor.special_ids.im_end)
            if not len(ends):
                continue
            end = start + int(ends[0])
            labels[start - 1 : end] = ids[start : end + 1]


def remap_ids(ids: np.ndarray, vocab: int) -> np.ndarray:
    """Token ids of the full vocabulary → `[0, vocab)`: the 22 special tokens keep distinct ids at the
    top, ordinary BPE ids wrap around below them. For tiny test models only (fast logits)."""
    n_special = len(tokens.SPECIAL_TOKENS)
    if vocab <= n_special:
        raise ValueError(f"vocab_remap {vocab} must exceed the {n_special} special tokens")
    ids = np.asarray(ids)
    special = ids >= tokens.NUM_BPE_TOKENS
    return np.where(special, vocab - n_special + (ids - tokens.NUM_BPE_TOKENS), ids % (vocab - n_special)).astype(ids.dtype)


def _has_clip(messages: Iterable[Mapping[str, Any]]) -> bool:
    return any(isinstance(m.get("content"), list) and any(p.get("type") == "video" for p in m["content"]) for m in messages)


def trajectory_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One row per trajectory: its last step (whose history holds every earlier turn)."""
    last: dict[Any, Mapping[str, Any]] = {}
    for r in rows:
        key = r.get("traj_id", id(r))
        if key not in last or int(r.get("step", 0)) >= int(last[key].get("step", 0)):
            last[key] = r
    return list(last.values())
