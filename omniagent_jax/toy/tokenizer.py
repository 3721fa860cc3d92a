"""The toy vocabulary (docs/toy.md §3): a 2,048-token byte-level BPE trained on toy prompts and expert
trajectories, with the 22 Omni special strings at ids 2026..2047.

Pre-tokenisation keeps every number whole (``163.64`` is one piece, merged by BPE like any word, so a
number copied from a frame label into an action is the same token sequence in both places) and glues
one following space to each run of other characters, so JSON keys such as ``"observation": `` become
single tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from omniagent_jax.agent.episode import EpisodeResult
from omniagent_jax.agent.messages import Message
from omniagent_jax.processing import tokens

VOCAB_SIZE = 2048
NUM_BPE = VOCAB_SIZE - len(tokens.SPECIAL_TOKENS)  # ordinary tokens 0..2025; the specials follow in order
PRETOKENIZE = r"\d+(?:\.\d+)?|[^\s\d]+\s?|\s+"


def special_ids() -> tokens.SpecialIds:
    """The ids the toy vocabulary gives the Omni special strings (pad: ``<|endoftext|>``)."""
    ids = {text: NUM_BPE + i for i, text in enumerate(tokens.SPECIAL_TOKENS)}
    return tokens.SpecialIds(
        im_start=ids[tokens.IM_START], im_end=ids[tokens.IM_END], pad=ids[tokens.ENDOFTEXT], image=ids[tokens.IMAGE],
        video=ids[tokens.VIDEO], audio=ids[tokens.AUDIO], vision_bos=ids[tokens.VISION_BOS], vision_eos=ids[tokens.VISION_EOS],
        audio_bos=ids[tokens.AUDIO_BOS], audio_eos=ids[tokens.AUDIO_EOS],
    )


def train_tokenizer(texts: Iterable[str]) -> Any:
    """A byte-level BPE of exactly :data:`NUM_BPE` tokens trained on ``texts``, the Omni specials added after
    it, wrapped as the project's tokenizers are (chat template, eos/pad). Raises ValueError when the texts
    are too few to learn that many tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from omniagent_jax.processing.tokenizer import wrap_backend

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=NUM_BPE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    if backend.get_vocab_size() != NUM_BPE:
        raise ValueError(f"the toy corpus yields only {backend.get_vocab_size()} BPE tokens, {NUM_BPE} are needed: "
                         "train on more episodes")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens.SPECIAL_TOKENS])
    return wrap_backend(backend)


def message_texts(messages: Sequence[Message]) -> Iterator[str]:
    """The text a conversation puts through the tokenizer (roles and text parts; media are special tokens)."""
    for m in messages:
        content = m.get("content")
        parts = [content] if isinstance(content, str) else [p.get("text", "") for p in content or () if p.get("type") == "text"]
        yield f"{m['role']}\n" + "".join(parts) + "\n"


def corpus(results: Iterable[EpisodeResult]) -> Iterator[str]:
    """Training text of played episodes: every step's input and output."""
    for result in results:
        for step in result.steps:
            yield from message_texts(step.raw_input)
            yield step.output


@dataclasses.dataclass(frozen=True)
class RowLengths:
    """Token counts of SFT rows (a step's input + its output), by the real processor."""

    lengths: tuple[int, ...]

    @property
    def max(self) -> int:
        return max(self.lengths)

    @property
    def mean(self) -> float:
        return sum(self.lengths) / len(self.lengths)


def row_lengths(processor: Any, results: Iterable[EpisodeResult]) -> RowLengths:
    """How many tokens each step of ``results`` is as an SFT row (``raw_input`` + the assistant output)."""
    out = []
    for result in results:
        for step in result.steps:
            row = [*step.raw_input, {"role": "assistant", "content": [{"type": "text", "text": step.output}]}]
            out.append(int(processor(row, add_generation_prompt=False)["input_ids"].shape[1]))
    return RowLengths(tuple(out))
