"""ThinkerConfig: HF config.json reading (full Omni and thinker-only), presets, YAML, validation."""

from __future__ import annotations

import json

import pytest

from omniagent_jax.model.config import (
    REPO_CONFIGS,
    ThinkerConfig,
    load_config,
    preset,
    qwen2_5_omni_7b,
    save_hf_config,
    special_id_fields,
    tiny,
    with_overrides,
)
from omniagent_jax.processing import tokens


def test_7b_preset_matches_the_release_values():
    cfg = qwen2_5_omni_7b()
    t, v, a = cfg.text, cfg.vision, cfg.audio
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads) == (3584, 28, 28)
    assert (t.num_key_value_heads, t.head_dim) == (4, 128)
    assert (t.intermediate_size, t.vocab_size, t.rope_theta, t.mrope_section) == (18944, 152064, 1e6, (16, 24, 24))
    assert (v.depth, v.hidden_size, v.num_heads, v.patch_dim, v.fullatt_block_indexes) == (32, 1280, 16, 1176, (7, 15, 23, 31))
    assert (a.d_model, a.encoder_layers, a.n_window, a.output_dim) == (1280, 32, 100, 3584)
    assert (cfg.vision_start_token_id, cfg.image_token_id, cfg.audio_token_id) == (151652, 151655, 151646)


def test_special_ids_come_from_the_tokens_module():
    assert tokens.SPECIAL_TOKEN_IDS["<|VIDEO|>"] == 151656 == qwen2_5_omni_7b().video_token_id
    assert tokens.VOCAB_SIZE_TOKENIZER == 151_665


def _release_like_config() -> dict:
    """A full Omni config.json the way the release nests it (legacy `rope_scaling`, `embed_dim`)."""
    thinker = qwen2_5_omni_7b().to_hf_dict()
    thinker["text_config"].pop("rope_parameters")
    thinker["vision_config"]["embed_dim"] = thinker["vision_config"].pop("hidden_size")
    return {"architectures": ["Qwen2_5OmniModel"], "model_type": "qwen2_5_omni", "thinker_config": thinker,
            "talker_config": {"hidden_size": 896}, "token2wav_config": {}}


def test_from_hf_reads_full_and_thinker_only_configs(tmp_path):
    full = _release_like_config()
    assert ThinkerConfig.from_hf(full) == qwen2_5_omni_7b()
    assert ThinkerConfig.from_hf(full["thinker_config"]) == qwen2_5_omni_7b()
    (tmp_path / "config.json").write_text(json.dumps(tiny().to_hf_dict()))
    assert ThinkerConfig.from_hf(tmp_path) == tiny()
    assert ThinkerConfig.from_hf(tmp_path / "config.json") == tiny()


def test_to_hf_dict_is_accepted_by_transformers():
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen2_5OmniThinkerConfig(**tiny().to_hf_dict())
    assert hf.text_config.hidden_size == 64
    assert hf.vision_config.hidden_size == 32
    assert hf.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert ThinkerConfig.from_hf(hf.to_dict()) == tiny()


def test_yaml_presets_load():
    assert load_config(REPO_CONFIGS / "model" / "tiny.yaml") == tiny()
    assert load_config(REPO_CONFIGS / "model" / "qwen2_5_omni_7b.yaml") == qwen2_5_omni_7b()
    gqa3 = load_config(REPO_CONFIGS / "model" / "tiny_gqa3.yaml")
    assert gqa3.text.num_attention_heads // gqa3.text.num_key_value_heads == 3
    assert gqa3.text.num_hidden_layers % 2 == 1


@pytest.mark.parametrize(
    "change, message",
    [
        ({"text": {"num_attention_heads": 5}}, "not divisible"),
        ({"text": {"num_key_value_heads": 3}}, "not divisible"),
        ({"text": {"mrope_section": [2, 3, 4]}}, "mrope_section"),
        ({"text": {"hidden_size": 128, "num_attention_heads": 8}}, "must equal text.hidden_size"),
        ({"vision": {"fullatt_block_indexes": [9]}}, "fullatt_block_indexes"),
        ({"text": {"vocab_size": 1000}}, "vocab_size"),
        ({"text": {"nope": 1}}, "unknown field"),
        ({"bogus": 1}, "unknown model config field"),
    ],
)
def test_invalid_configs_are_clear_errors(change, message):
    with pytest.raises(ValueError, match=message):
        with_overrides(tiny(), change)


def test_bad_config_sources(tmp_path):
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("huge")
    with pytest.raises(FileNotFoundError, match="config.json"):
        ThinkerConfig.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ThinkerConfig.from_hf(tmp_path)
    with pytest.raises(ValueError, match="not a Qwen2.5-Omni config"):
        ThinkerConfig.from_hf({"model_type": "llama"})
    rope = tiny().to_hf_dict()
    rope["text_config"]["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0}
    with pytest.raises(ValueError, match="unsupported rope type"):
        ThinkerConfig.from_hf(rope)


# ------------------------------------------------------------------------------------ special ids

SMALL_IDS = tokens.SpecialIds(im_start=301, im_end=302, pad=300, image=312, video=313, audio=303,
                              vision_bos=309, vision_eos=310, audio_bos=304, audio_eos=305)  # fmt: skip


def _small(**changes) -> ThinkerConfig:
    text = tiny().text.__class__(**{**vars(tiny().text), "vocab_size": 512})
    return ThinkerConfig(**{"text": text, "vision": tiny().vision, "audio": tiny().audio,
                            **special_id_fields(SMALL_IDS), "stop_token_ids": (302, 300), **changes})  # fmt: skip


def test_presets_carry_the_qwen_ids_and_the_dataclass_none():
    cfg = tiny()
    assert (cfg.pad_token_id, cfg.stop_token_ids) == (tokens.PAD_ID, tokens.STOP_TOKEN_IDS) == (151643, (151645, 151643))
    cfg.check_special_ids(tokens.QWEN_SPECIAL_IDS)
    with pytest.raises(TypeError, match="image_token_id"):
        ThinkerConfig()


def test_small_vocabulary_config_round_trips_its_ids(tmp_path):
    small = _small()
    assert small.image_token_id == 312 and small.text.vocab_size == 512
    small.check_special_ids(SMALL_IDS)
    hf = small.to_hf_dict()
    assert (hf["image_token_index"], hf["pad_token_id"], hf["eos_token_id"]) == (312, 300, 302)
    assert ThinkerConfig.from_hf(hf) == small  # eos 302 with pad 300 reads back as the stops (302, 300)

    save_hf_config(small, tmp_path, dtype="float32")
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"eos_token_id": [302, 300], "pad_token_id": 300}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float32"
    assert ThinkerConfig.from_hf(tmp_path) == ThinkerConfig.from_hf(tmp_path / "config.json") == small

    # generation_config.json decides the stops; an existing one is never overwritten.
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 302}))
    save_hf_config(small, tmp_path)
    assert ThinkerConfig.from_hf(tmp_path).stop_token_ids == (302,)
    assert ThinkerConfig.from_hf(hf, generation_config={"eos_token_id": [302, 311]}).stop_token_ids == (302, 311)


def test_stop_sets_other_than_eos_and_pad_are_written_whole():
    odd = _small(stop_token_ids=(302, 311, 300))
    assert odd.to_hf_dict()["eos_token_id"] == [302, 311, 300]
    assert ThinkerConfig.from_hf(odd.to_hf_dict()) == odd


def test_release_config_without_generation_config_stops_like_before():
    """The release's config.json names eos 151645 and pad 151643: the engine stops at both, as it always did."""
    full = _release_like_config()
    assert (full["thinker_config"]["eos_token_id"], full["thinker_config"]["pad_token_id"]) == (151645, 151643)
    assert ThinkerConfig.from_hf(full).stop_token_ids == (151645, 151643)
    del full["thinker_config"]["eos_token_id"], full["thinker_config"]["pad_token_id"]
    assert ThinkerConfig.from_hf({**full, "eos_token_id": 151645, "pad_token_id": 151643}) == qwen2_5_omni_7b()
    assert ThinkerConfig.from_hf(full) == qwen2_5_omni_7b()  # nothing named: Qwen's, as transformers' defaults


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"image_token_id": 151655}, r"vocab_size 512; these are not: \{'image_token_id': 151655\}"),
        ({"stop_token_ids": (302, 512)}, r"'stop_token_ids\[1\]': 512"),
        ({"pad_token_id": -1}, "pad_token_id"),
        ({"stop_token_ids": ()}, "non-empty tuple"),
        ({"stop_token_ids": [302]}, "non-empty tuple"),
    ],
)
def test_ids_outside_the_vocabulary_are_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        _small(**changes)


def test_processor_ids_that_differ_from_the_model_config_are_rejected():
    one_off = tokens.SpecialIds(**{**vars(tokens.QWEN_SPECIAL_IDS), "image": 312})
    with pytest.raises(ValueError, match=r"and the processor disagree on special token ids: image_token_id=151655 vs image=312$"):
        tiny().check_special_ids(one_off)


def test_bad_generation_configs(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_small().to_hf_dict()))
    (tmp_path / "generation_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="generation_config.json is not valid JSON"):
        ThinkerConfig.from_hf(tmp_path)
    (tmp_path / "generation_config.json").write_text("[302]")
    with pytest.raises(ValueError, match="generation_config.json is not a JSON object"):
        ThinkerConfig.from_hf(tmp_path)
    for eos in ([], "302", [302, True]):
        (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
        with pytest.raises(ValueError, match="generation_config.json eos_token_id must be a token id"):
            ThinkerConfig.from_hf(tmp_path)
    with pytest.raises(ValueError, match="config.json eos_token_id must be a token id"):
        ThinkerConfig.from_hf({**_small().to_hf_dict(), "eos_token_id": 30.5})


def test_yaml_may_override_the_ids(tmp_path):
    (tmp_path / "small.yaml").write_text(
        "preset: tiny\ntext: {vocab_size: 512}\n"
        + "".join(f"{k}: {v}\n" for k, v in special_id_fields(SMALL_IDS).items())
        + "stop_token_ids: [302, 300]\n"
    )
    assert load_config(tmp_path / "small.yaml") == _small()
