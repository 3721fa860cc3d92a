"""Loading, caching and saving the tokenizer, and the Qwen2.5-Omni chat template (docs/model.md §6, §4.6).

`load_tokenizer(path)` prefers a checkpoint directory's own tokenizer files, whatever ids its vocabulary
gives the Omni special tokens (`tokens.SpecialIds.from_tokenizer` reads them), and otherwise builds the
Qwen2 tokenizer from `qwen.tiktoken` (`qwen_bpe`), caching the serialised `tokenizer.json` on disk (keyed
by the vocabulary's sha256) and the wrapped tokenizer in-process.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pathlib
import tempfile

from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from omniagent_jax.processing import tokens
from omniagent_jax.processing.qwen_bpe import (
    PRETOKENIZE_REGEX,
    QWEN_TIKTOKEN_SHA256,
    TokenizerError,
    build_backend,
    check_qwen_ids,
    parse_tiktoken,
    qwen_tiktoken_path,
    read_verified,
)

log = logging.getLogger(__name__)

MODEL_MAX_LENGTH = 32_768
# Bump when the build in `qwen_bpe` changes, so stale on-disk caches are never picked up.
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
        check_qwen_ids(backend.token_to_id, str(path))
        if backend.get_vocab_size(with_added_tokens=True) != tokens.VOCAB_SIZE_TOKENIZER:
            raise TokenizerError(f"{path}: wrong vocabulary size")
    except Exception as err:  # noqa: BLE001 - any damage to a cache file means: rebuild it
        log.warning("ignoring the unusable tokenizer cache %s (%s); rebuilding it", path, err)
        return None
    return backend


# ----------------------------------------------------------------------------------------- loading


def wrap_backend(backend: Tokenizer) -> PreTrainedTokenizerFast:
    """`backend` as a `transformers` fast tokenizer with Qwen2.5-Omni's settings: eos `<|im_end|>`, pad
    `<|endoftext|>`, no bos, left padding, the Omni chat template (`backend` must hold those specials)."""
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
    data = read_verified(pathlib.Path(source))
    cache_file = cached_backend_path()
    backend = _load_cached_backend(cache_file)
    if backend is None:
        backend = build_backend(parse_tiktoken(data, source))
        try:
            _atomic_write_text(cache_file, backend.to_str())
        except OSError as err:  # a read-only home must not stop anyone from tokenising
            log.warning("could not cache the built tokenizer at %s: %s", cache_file, err)
    return wrap_backend(backend)


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
    """A checkpoint's own tokenizer, checked to hold the Omni specials and completed with the Omni defaults."""
    del fingerprint  # part of the cache key only
    path = pathlib.Path(directory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as err:
        raise TokenizerError(f"cannot load the tokenizer files in {path}: {type(err).__name__}: {err}") from err
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TokenizerError(f"{path}: expected a fast (tokenizers) tokenizer, got {type(tokenizer).__name__}")
    # A bare tokenizer.json carries no eos/pad: fill in the Omni ones rather than leave generation without a stop.
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokens.IM_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokens.ENDOFTEXT
    try:  # the ids may be any; the strings must be there, or the chat template and processor cannot work
        tokens.SpecialIds.from_tokenizer(tokenizer)
    except ValueError as err:
        raise TokenizerError(f"{path}: {err}") from err
    if not tokenizer.chat_template:
        tokenizer.chat_template = _chat_template_beside(path) or CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(path: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """A checkpoint's tokenizer with its chat template; the Qwen2.5-Omni one by default.

    `path` may be a checkpoint directory (HF release, fine-tune, or converted JAX checkpoint). When it
    holds its own tokenizer (`tokenizer.json`, or `vocab.json` + `merges.txt`) that one is loaded,
    offline, with whatever ids its vocabulary gives the Omni special strings (all of which it must
    hold); its chat template comes from its config, else `chat_template.jinja`/`chat_template.json`
    beside it, else the default Omni template. Otherwise (or with `path=None`) the Qwen2 tokenizer is
    built from `qwen.tiktoken` (`qwen_bpe`).

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
    # Only a tokenizer that splits text as Qwen's does may be labelled Qwen2Tokenizer: that class rebuilds its
    # own pre-tokenizer on load, which would silently re-split another vocabulary's text (e.g. the toy BPE's).
    if config.get("tokenizer_class") in (None, "TokenizersBackend", "PreTrainedTokenizerFast") and _splits_as_qwen(tokenizer):
        config["tokenizer_class"] = "Qwen2Tokenizer"
        _atomic_write_text(config_file, json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return sorted({p for p in written if p.is_file()})


def _splits_as_qwen(tokenizer: PreTrainedTokenizerFast) -> bool:
    """Whether the tokenizer's pre-tokenizer is the Qwen2 one (`qwen_bpe.PRETOKENIZE_REGEX` then byte-level)."""
    pre = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") or []
    return bool(steps) and steps[0].get("type") == "Split" and (steps[0].get("pattern") or {}).get("Regex") == PRETOKENIZE_REGEX


__all__ = [
    "CHAT_TEMPLATE",
    "EXTRA_SPECIAL_TOKENS",
    "TokenizerError",
    "cache_dir",
    "cached_backend_path",
    "clear_caches",
    "load_tokenizer",
    "save_pretrained_tokenizer",
    "wrap_backend",
]
