"""Special tokens of the Omni vocabulary: the one place their strings, and the Qwen ids, are written.

The strings are the same for every checkpoint; their ids belong to a checkpoint's vocabulary.
`SpecialIds.from_tokenizer` reads them from a tokenizer, and `QWEN_SPECIAL_IDS` holds the
Qwen2.5-Omni values, where ids 0..151642 are ordinary byte-level BPE tokens and the 22 specials
below follow in id order (docs/model.md §1.4, §6). The Qwen constants are the defaults of the Qwen model presets
and of the tokenizer built from `qwen.tiktoken`; code that serves a loaded checkpoint reads the
ids of that checkpoint (its processor's `special_ids`, its model config) instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any

NUM_BPE_TOKENS = 151_643

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|vision_pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
SPECIAL_TOKEN_IDS: dict[str, int] = {tok: NUM_BPE_TOKENS + i for i, tok in enumerate(SPECIAL_TOKENS)}
VOCAB_SIZE_TOKENIZER = NUM_BPE_TOKENS + len(SPECIAL_TOKENS)  # 151,665

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
VISION_BOS = "<|vision_bos|>"
VISION_EOS = "<|vision_eos|>"
IMAGE = "<|IMAGE|>"
VIDEO = "<|VIDEO|>"

ENDOFTEXT_ID = SPECIAL_TOKEN_IDS[ENDOFTEXT]  # 151643, also the pad id
IM_START_ID = SPECIAL_TOKEN_IDS[IM_START]  # 151644
IM_END_ID = SPECIAL_TOKEN_IDS[IM_END]  # 151645, generation eos
AUDIO_ID = SPECIAL_TOKEN_IDS[AUDIO]  # 151646
AUDIO_BOS_ID = SPECIAL_TOKEN_IDS[AUDIO_BOS]  # 151647
AUDIO_EOS_ID = SPECIAL_TOKEN_IDS[AUDIO_EOS]  # 151648
VISION_BOS_ID = SPECIAL_TOKEN_IDS[VISION_BOS]  # 151652
VISION_EOS_ID = SPECIAL_TOKEN_IDS[VISION_EOS]  # 151653
IMAGE_ID = SPECIAL_TOKEN_IDS[IMAGE]  # 151655
VIDEO_ID = SPECIAL_TOKEN_IDS[VIDEO]  # 151656
PAD_ID = ENDOFTEXT_ID
USER_TOKEN_ID = 872  # "user"; only the talker pipeline reads it

# Qwen generation stops at <|im_end|>; derived checkpoints also list <|endoftext|>.
STOP_TOKEN_IDS: tuple[int, ...] = (IM_END_ID, ENDOFTEXT_ID)

# Rendering of one content part inside a chat turn (docs/model.md §4.6).
IMAGE_PART = VISION_BOS + IMAGE + VISION_EOS
VIDEO_PART = VISION_BOS + VIDEO + VISION_EOS
AUDIO_PART = AUDIO_BOS + AUDIO + AUDIO_EOS

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The ids one checkpoint's vocabulary gives the Omni special tokens the processor, the model
    and training read: turn delimiters, padding, media placeholders and their bos/eos markers."""

    im_start: int
    im_end: int
    pad: int
    image: int
    video: int
    audio: int
    vision_bos: int
    vision_eos: int
    audio_bos: int
    audio_eos: int

    def __post_init__(self) -> None:
        values = dataclasses.asdict(self)
        bad = {name: v for name, v in values.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
        if bad:
            raise ValueError(f"special token ids must be non-negative integers, got {bad}")
        # The pad id may coincide with another (some vocabularies pad with their eos); the rest must not.
        named = {name: v for name, v in values.items() if name != "pad"}
        if len(set(named.values())) != len(named):
            raise ValueError(f"special token ids must be distinct, got {named}")

    @property
    def placeholders(self) -> dict[int, str]:
        """Placeholder id → media kind (`image`, `audio`, `video`)."""
        return {self.image: "image", self.audio: "audio", self.video: "video"}

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> SpecialIds:
        """The ids of the Omni special strings in `tokenizer` (a `transformers` tokenizer); the pad
        id is the tokenizer's pad token, else `<|endoftext|>`'s.

        Every string must be one token of the vocabulary that encodes as itself (an added special
        token): the chat template writes the strings and the processor finds the ids in the encoding.
        Raises ValueError naming the strings that are missing or would be split.
        """
        found: dict[str, int] = {}
        problems = []
        pad_token = getattr(tokenizer, "pad_token", None) or ENDOFTEXT
        for name, text in {**_SPECIAL_ID_STRINGS, "pad": pad_token}.items():
            token_id = tokenizer.convert_tokens_to_ids(text)
            unknown = token_id is None or (token_id == getattr(tokenizer, "unk_token_id", None) and text != tokenizer.unk_token)
            if unknown:
                problems.append(f"{text} is not in the vocabulary")
            elif list(tokenizer.encode(text, add_special_tokens=False)) != [token_id]:
                problems.append(f"{text} (id {token_id}) is not an added special token: it encodes as several tokens")
            else:
                found[name] = int(token_id)
        if problems:
            raise ValueError("the tokenizer lacks Omni special tokens: " + "; ".join(problems))
        return cls(**found)


# SpecialIds field → the string whose id it holds (`pad` comes from the tokenizer's pad token).
_SPECIAL_ID_STRINGS: dict[str, str] = {
    "im_start": IM_START,
    "im_end": IM_END,
    "image": IMAGE,
    "video": VIDEO,
    "audio": AUDIO,
    "vision_bos": VISION_BOS,
    "vision_eos": VISION_EOS,
    "audio_bos": AUDIO_BOS,
    "audio_eos": AUDIO_EOS,
}

QWEN_SPECIAL_IDS = SpecialIds(
    im_start=IM_START_ID,
    im_end=IM_END_ID,
    pad=PAD_ID,
    image=IMAGE_ID,
    video=VIDEO_ID,
    audio=AUDIO_ID,
    vision_bos=VISION_BOS_ID,
    vision_eos=VISION_EOS_ID,
    audio_bos=AUDIO_BOS_ID,
    audio_eos=AUDIO_EOS_ID,
)
