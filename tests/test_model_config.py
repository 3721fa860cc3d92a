"""ThinkerConfig: HF config.json reading (full Omni and thinker-only), presets, YAML, validation."""

from __future__ import annotations

import json

import pytest

from omniagent_jax.model.config import REPO_CONFIGS, ThinkerConfig, load_config, preset, qwen2_5_omni_7b, tiny, with_overrides
from omniagent_jax.processing import tokens


def test_7b_preset_matches_the_release_values():
    cfg = qwen2_5_omni_7b()
    t, v, a = cfg.text, cfg.vision, cfg.audio
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.head_dim) == (3584, 28, 28, 4, 128)
    assert (t.intermediate_size, t.vocab_size, t.rope_theta, t.mrope_section) == (18944, 152064, 1e6, (16, 24, 24))
    assert (v.depth, v.hidden_size, v.num_heads, v.patch_dim, v.fullatt_block_indexes) == (32, 1280, 16, 1176, (7, 15, 23, 31))
    assert (a.d_model, a.encoder_layers, a.n_window, a.output_dim) == (1280, 32, 100, 3584)
    assert (cfg.vision_start_token_id, cfg.image_token_id, cfg.audio_token_id) == (151652, 151655, 151646)


def test_special_ids_come_from_the_tokens_module():
    assert tokens.SPECIAL_TOKEN_IDS["<|VIDEO|>"] == 151656 == ThinkerConfig().video_token_id
    assert tokens.VOCAB_SIZE_TOKENIZER == 151_665


def _release_like_config() -> dict:
    """A full Omni config.json the way the release nests it (legacy `rope_scaling`, `embed_dim`)."""
    thinker = ThinkerConfig().to_hf_dict()
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
