"""Special tokens of the Qwen2.5-Omni vocabulary: the one place their strings and ids are written.

Ids 0..151642 are ordinary byte-level BPE tokens; the 22 specials below follow in id order
(model.md §6). The model config, the tokenizer, the processor and the agent import from here.
"""

from __future__ import annotations

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

# Generation stops at <|im_end|>; derived checkpoints also list <|endoftext|>.
STOP_TOKEN_IDS: tuple[int, ...] = (IM_END_ID, ENDOFTEXT_ID)

# Rendering of one content part inside a chat turn (model.md §4.6).
IMAGE_PART = VISION_BOS + IMAGE + VISION_EOS
VIDEO_PART = VISION_BOS + VIDEO + VISION_EOS
AUDIO_PART = AUDIO_BOS + AUDIO + AUDIO_EOS

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
