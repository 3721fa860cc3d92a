"""Frozen configuration of the Qwen2.5-Omni thinker (text decoder, vision tower, audio tower).

`ThinkerConfig.from_hf` reads a full `Qwen2_5OmniConfig` config.json (settings nested under
`thinker_config`) or a thinker-only one; `to_hf_dict` writes a thinker config that
`transformers.Qwen2_5OmniThinkerForConditionalGeneration` loads. Presets: `qwen2_5_omni_7b`, `tiny`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

from omniagent_jax.processing import budgets, tokens

# The YAML presets of a source checkout (`configs/`); installed wheels use the presets in code.
REPO_CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """The Qwen2.5 decoder (`thinker_config.text_config`)."""

    vocab_size: int = 152_064
    hidden_size: int = 3584
    intermediate_size: int = 18_944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rope_theta: float = 1_000_000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32_768

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by num_key_value_heads {self.num_key_value_heads}"
            )
        if 2 * sum(self.mrope_section) != self.head_dim:
            raise ValueError(f"sum(mrope_section) {sum(self.mrope_section)} must equal head_dim/2 = {self.head_dim // 2}")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The Qwen2.5-VL-style ViT (`thinker_config.vision_config`)."""

    depth: int = 32
    hidden_size: int = 1280
    num_heads: int = 16
    intermediate_size: int = 3420
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    out_hidden_size: int = 3584
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Floats per pixel row: C · T · P · P (1176 for the release)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    def validate(self) -> None:
        if self.hidden_size % self.num_heads or self.head_dim % 4:
            raise ValueError(f"vision head_dim {self.hidden_size}/{self.num_heads} must be an integer divisible by 4")
        if any(not 0 <= i < self.depth for i in self.fullatt_block_indexes):
            raise ValueError(f"fullatt_block_indexes {self.fullatt_block_indexes} must lie in range(depth={self.depth})")


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """The Whisper-style audio encoder (`thinker_config.audio_config`)."""

    num_mel_bins: int = 128
    d_model: int = 1280
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    max_source_positions: int = 1500
    n_window: int = 100
    output_dim: int = 3584

    def validate(self) -> None:
        if self.d_model % self.encoder_attention_heads:
            raise ValueError(f"audio d_model {self.d_model} is not divisible by heads {self.encoder_attention_heads}")
        if self.max_source_positions < self.n_window:
            raise ValueError("audio max_source_positions must be >= n_window")


@dataclasses.dataclass(frozen=True)
class ThinkerConfig:
    """The whole thinker: sub-configs plus the special token ids the forward pass reads."""

    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    audio: AudioConfig = AudioConfig()
    audio_token_id: int = tokens.AUDIO_ID
    image_token_id: int = tokens.IMAGE_ID
    video_token_id: int = tokens.VIDEO_ID
    audio_start_token_id: int = tokens.AUDIO_BOS_ID
    audio_end_token_id: int = tokens.AUDIO_EOS_ID
    vision_start_token_id: int = tokens.VISION_BOS_ID
    vision_end_token_id: int = tokens.VISION_EOS_ID
    position_id_per_seconds: int = budgets.POSITION_ID_PER_SECONDS
    seconds_per_chunk: int = int(budgets.SECONDS_PER_CHUNK)

    def __post_init__(self) -> None:
        self.text.validate()
        self.vision.validate()
        self.audio.validate()
        if self.vision.out_hidden_size != self.text.hidden_size or self.audio.output_dim != self.text.hidden_size:
            raise ValueError(
                "vision.out_hidden_size and audio.output_dim must equal text.hidden_size "
                f"({self.vision.out_hidden_size}, {self.audio.output_dim} vs {self.text.hidden_size})"
            )
        ids = (self.audio_token_id, self.image_token_id, self.video_token_id, self.vision_start_token_id)
        if max(ids) >= self.text.vocab_size:
            raise ValueError(f"vocab_size {self.text.vocab_size} must exceed every special token id (max {max(ids)})")

    def replace(self, **changes: Any) -> ThinkerConfig:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ HF config.json

    @classmethod
    def from_hf(cls, path_or_dict: str | os.PathLike | dict[str, Any]) -> ThinkerConfig:
        """Reads a full Omni config (nested `thinker_config`), a thinker-only config, or a directory holding one."""
        if isinstance(path_or_dict, dict):
            raw = path_or_dict
        else:
            path = os.fspath(path_or_dict)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            try:
                with open(path, encoding="utf-8") as f:
                    raw = json.load(f)
            except FileNotFoundError as e:
                raise FileNotFoundError(f"no config.json at {path}") from e
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from e
        thinker = raw.get("thinker_config", raw)
        if "text_config" not in thinker:
            raise ValueError("config has neither `thinker_config` nor `text_config`: not a Qwen2.5-Omni config")
        return cls(
            text=_text_from_hf(thinker["text_config"]),
            vision=_pick(VisionConfig, thinker.get("vision_config", {}), renames={"embed_dim": "hidden_size"}, drop={"rope_theta"})
            if thinker.get("vision_config") is not None
            else VisionConfig(),
            audio=_pick(AudioConfig, thinker.get("audio_config", {})) if thinker.get("audio_config") is not None else AudioConfig(),
            **{
                ours: thinker[theirs]
                for ours, theirs in _TOP_LEVEL_IDS.items()
                if theirs in thinker and thinker[theirs] is not None
            },
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """A thinker-only config.json that transformers 5.x loads."""
        t, v, a = self.text, self.vision, self.audio
        text_cfg = {
            "model_type": "qwen2_5_omni_text",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "hidden_act": "silu",
            "max_position_embeddings": t.max_position_embeddings,
            "rms_norm_eps": t.rms_norm_eps,
            "rope_theta": t.rope_theta,
            "rope_scaling": {"type": "default", "rope_type": "default", "mrope_section": list(t.mrope_section)},
            "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)},
            "use_sliding_window": False,
            "tie_word_embeddings": False,
        }
        vision_cfg = {"model_type": "qwen2_5_omni_vision_encoder", **dataclasses.asdict(v)}
        vision_cfg["fullatt_block_indexes"] = list(v.fullatt_block_indexes)
        vision_cfg.pop("rope_theta")
        vision_cfg.pop("rms_norm_eps")
        vision_cfg["hidden_act"] = "silu"
        audio_cfg = {"model_type": "qwen2_5_omni_audio_encoder", **dataclasses.asdict(a), "activation_function": "gelu"}
        return {
            "architectures": ["Qwen2_5OmniThinkerForConditionalGeneration"],
            "model_type": "qwen2_5_omni_thinker",
            "text_config": text_cfg,
            "vision_config": vision_cfg,
            "audio_config": audio_cfg,
            **{theirs: getattr(self, ours) for ours, theirs in _TOP_LEVEL_IDS.items()},
            "tie_word_embeddings": False,
            "pad_token_id": tokens.PAD_ID,
            "eos_token_id": tokens.IM_END_ID,
        }


# ours -> key in the HF thinker config
_TOP_LEVEL_IDS = {
    "audio_token_id": "audio_token_index",
    "image_token_id": "image_token_index",
    "video_token_id": "video_token_index",
    "audio_start_token_id": "audio_start_token_id",
    "audio_end_token_id": "audio_end_token_id",
    "vision_start_token_id": "vision_start_token_id",
    "vision_end_token_id": "vision_end_token_id",
    "position_id_per_seconds": "position_id_per_seconds",
    "seconds_per_chunk": "seconds_per_chunk",
}


def _pick(cls: type, raw: dict[str, Any], renames: dict[str, str] | None = None, drop: set[str] | None = None) -> Any:
    """Builds `cls` from the HF keys it knows; tuples for list-valued fields."""
    fields = {f.name for f in dataclasses.fields(cls)} - (drop or set())
    kwargs = {}
    for key, value in raw.items():
        key = (renames or {}).get(key, key)
        if key in fields and value is not None:
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def _text_from_hf(raw: dict[str, Any]) -> TextConfig:
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    cfg = _pick(TextConfig, raw, drop={"mrope_section", "rope_theta"})
    theta = rope.get("rope_theta", raw.get("rope_theta", TextConfig.rope_theta))
    section = rope.get("mrope_section", TextConfig.mrope_section)
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"unsupported rope type {rope.get('rope_type')!r}: only the default M-RoPE is implemented")
    return dataclasses.replace(cfg, rope_theta=float(theta), mrope_section=tuple(section))


def qwen2_5_omni_7b() -> ThinkerConfig:
    """The released Qwen2.5-Omni-7B thinker (model.md §1)."""
    return ThinkerConfig()


def tiny() -> ThinkerConfig:
    """A tiny random thinker for tests and the CPU demo (~20M params, mostly the 152k-row embeddings)."""
    return ThinkerConfig(
        text=TextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=(2, 3, 3),
        ),
        vision=VisionConfig(depth=4, hidden_size=32, num_heads=4, intermediate_size=48, fullatt_block_indexes=(1, 3), out_hidden_size=64),
        audio=AudioConfig(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, output_dim=64),
    )


PRESETS = {"qwen2_5_omni_7b": qwen2_5_omni_7b, "tiny": tiny}


def preset(name: str) -> ThinkerConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None


def with_overrides(config: ThinkerConfig, overrides: dict[str, Any]) -> ThinkerConfig:
    """Applies nested overrides such as `{"text": {"num_hidden_layers": 3}}`; unknown keys are errors."""
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ValueError(f"unknown model config field {key!r}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"model config field {key!r} takes a mapping, got {value!r}")
            known = {f.name for f in dataclasses.fields(current)}
            bad = sorted(set(value) - known)
            if bad:
                raise ValueError(f"unknown field(s) {bad} in model config section {key!r}")
            value = dataclasses.replace(current, **{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        changes[key] = value
    return dataclasses.replace(config, **changes)


def load_config(path_or_name: str | os.PathLike) -> ThinkerConfig:
    """A preset name (`tiny`), a YAML file (`preset:` + nested overrides), or an HF config.json / checkpoint dir."""
    name = os.fspath(path_or_name)
    if name in PRESETS:
        return preset(name)
    if name.endswith((".yaml", ".yml")):
        import yaml

        with open(name, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{name}: expected a mapping at the top level")
        base = preset(raw.pop("preset", "qwen2_5_omni_7b"))
        return with_overrides(base, raw)
    return ThinkerConfig.from_hf(name)
