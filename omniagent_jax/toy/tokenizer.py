"""The toy vocabulary (docs/toy.md §3): a 4,096-token byte-level BPE trained on toy prompts and expert
trajectories, one token per frame-grid time, and the 22 Omni special strings at ids 4074..4095.

Every time on the toy frame grid (a quarter second, ``0.00`` to ``600.00``: :data:`TIMES`) is one token, so a
frame label, the log entry that names it, a summary and an action that copy it are the same single token: a
copying head finds one match, where a time cut into pieces (``1`` + ``63`` + ``.64``) shares its pieces with the
other labels of a look and a decoder this small does not learn to copy it (docs/toy.md §5). Other numbers are
cut into pairs of digits from the right and their decimals, each piece one token. One following space is glued
to each run of other characters, so JSON keys such as ``"observation": `` become single tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from omniagent_jax.agent.episode import EpisodeResult
from omniagent_jax.agent.messages import Message
from omniagent_jax.processing import tokens
from omniagent_jax.toy import world

VOCAB_SIZE = 4096
NUM_BPE = VOCAB_SIZE - len(tokens.SPECIAL_TOKENS)  # ordinary tokens 0..4073; the specials follow in order
MIN_BPE = 512  # fewer learned tokens means too little text to train on
MAX_TIME = 600  # seconds: the last time with its own token
# Every time on the frame grid, as the environment prints it (``52.25``): one token each.
TIMES = tuple(f"{i / world.FPS:.2f}" for i in range(MAX_TIME * world.FPS + 1))
# What PRETOKENIZE cuts a number into: one or two digits, and two-digit decimals.
NUMBER_PIECES = (*(str(i) for i in range(10)), *(f"{i:02d}" for i in range(100)), *(f".{d:02d}" for d in range(100)))
PRETOKENIZE = r"\d{1,2}(?=(?:\d\d)*(?!\d))|\.\d+|[^\s\d]+\s?|\s+"


def special_ids() -> tokens.SpecialIds:
    """The ids the toy vocabulary gives the Omni special strings (pad: ``<|endoftext|>``)."""
    ids = {text: NUM_BPE + i for i, text in enumerate(tokens.SPECIAL_TOKENS)}
    return tokens.SpecialIds(
        im_start=ids[tokens.IM_START], im_end=ids[tokens.IM_END], pad=ids[tokens.ENDOFTEXT], image=ids[tokens.IMAGE],
        video=ids[tokens.VIDEO], audio=ids[tokens.AUDIO], vision_bos=ids[tokens.VISION_BOS], vision_eos=ids[tokens.VISION_EOS],
        audio_bos=ids[tokens.AUDIO_BOS], audio_eos=ids[tokens.AUDIO_EOS],
    )


def train_tokenizer(texts: Iterable[str]) -> Any:
    """A byte-level BPE trained on ``texts``, then the :data:`TIMES` tokens, reserved tokens up to :data:`NUM_BPE`
    and the Omni specials, wrapped as the project's tokenizers are (chat template, eos/pad). Raises ValueError
    when the texts are too few to learn :data:`MIN_BPE` tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from omniagent_jax.processing.tokenizer import wrap_backend

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=NUM_BPE - len(TIMES), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(texts, trainer)
    learned = backend.get_vocab_size()
    if learned < MIN_BPE:
        raise ValueError(f"the toy corpus yields only {learned} BPE tokens, at least {MIN_BPE} are needed: "
                         "train on more episodes")
    # Matched before pre-tokenisation, longest first: a time is one token wherever it stands in a text.
    backend.add_tokens([AddedToken(t, normalized=False) for t in TIMES])
    # A corpus whose merges run out early leaves reserved tokens (never in any text) up to NUM_BPE, so that the
    # Omni specials keep their ids whatever the corpus.
    reserved = [f"<|toy_reserved_{i}|>" for i in range(NUM_BPE - backend.get_vocab_size())]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in reserved])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens.SPECIAL_TOKENS])
    return wrap_backend(backend)


def message_texts(messages: Sequence[Message]) -> Iterator[str]:
    """The text a conversation puts through the tokenizer (roles and text parts; media are special tokens)."""
    for m in messages:
        content = m.get("content")
        parts = [content] if isinstance(content, str) else [p.get("text", "") for p in content or () if p.get("type") == "text"]
        yield f"{m['role']}\n" + "".join(parts) + "\n"


def number_pieces() -> str:
    """Every number piece, a few times each: with them in the corpus BPE learns each as one token, not only those
    the episodes happen to use."""
    return "\n".join([" ".join(NUMBER_PIECES)] * 3)


def corpus(results: Iterable[EpisodeResult]) -> Iterator[str]:
    """Training text: the number pieces, then every step's input and output of the played episodes."""
    yield number_pieces()
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
