"""Frozen configuration of the Qwen2.5-Omni thinker (text decoder, vision tower, audio tower).

`ThinkerConfig.from_hf` reads a full `Qwen2_5OmniConfig` config.json (settings nested under
`thinker_config`) or a thinker-only one, and the stop ids of the `generation_config.json` beside it;
`to_hf_dict` writes a thinker config that `transformers.Qwen2_5OmniThinkerForConditionalGeneration`
loads, `save_hf_config` both files. Presets: `qwen2_5_omni_7b`, `tiny`; they carry the Qwen special ids,
a config of another vocabulary names its own (`special_id_fields`).
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
                f"num_attention_heads {self.num_attention_heads} is not divisible by "
                f"num_key_value_heads {self.num_key_value_heads}"
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class ThinkerConfig:
    """The whole thinker: sub-configs, the special token ids the forward pass reads (placeholders and
    media bos/eos), and the checkpoint's pad id and generation stop ids (the engine's default stops).

    The ids have no defaults: they belong to the checkpoint's vocabulary (the presets give the Qwen ones).
    """

    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    audio: AudioConfig = AudioConfig()
    audio_token_id: int
    image_token_id: int
    video_token_id: int
    audio_start_token_id: int
    audio_end_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    pad_token_id: int
    stop_token_ids: tuple[int, ...]
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
        if not isinstance(self.stop_token_ids, tuple) or not self.stop_token_ids:
            raise ValueError(f"stop_token_ids must be a non-empty tuple of token ids, got {self.stop_token_ids!r}")
        ids = {name: getattr(self, name) for name in _SPECIAL_FIELDS}
        ids.update({f"stop_token_ids[{i}]": t for i, t in enumerate(self.stop_token_ids)})
        vocab = self.text.vocab_size
        outside = {name: t for name, t in ids.items() if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab}
        if outside:
            raise ValueError(
                f"special token ids must be token ids of the vocabulary, 0 <= id < vocab_size {self.text.vocab_size}; "
                f"these are not: {outside} (a config of another vocabulary names its own ids, see special_id_fields)"
            )

    def replace(self, **changes: Any) -> ThinkerConfig:
        return dataclasses.replace(self, **changes)

    def check_special_ids(self, ids: tokens.SpecialIds, source: str = "the processor") -> None:
        """ValueError unless `ids` (e.g. a processor's, read from its tokenizer) give the placeholders and
        media bos/eos the ids this model reads: a mismatch would fill the wrong slots with media."""
        wrong = [
            f"{ours}={getattr(self, ours)} vs {theirs}={getattr(ids, theirs)}"
            for ours, theirs in _SPECIAL_FIELDS.items()
            if ours != "pad_token_id" and getattr(self, ours) != getattr(ids, theirs)
        ]
        if wrong:
            raise ValueError(f"the model config and {source} disagree on special token ids: {', '.join(wrong)}")

    def generation_config_dict(self) -> dict[str, Any]:
        """The `generation_config.json` of this config: its stop ids (`eos_token_id`) and pad id."""
        return {"eos_token_id": list(self.stop_token_ids), "pad_token_id": self.pad_token_id}

    # ------------------------------------------------------------------ HF config.json

    @classmethod
    def from_hf(
        cls, path_or_dict: str | os.PathLike | dict[str, Any], generation_config: dict[str, Any] | None = None
    ) -> ThinkerConfig:
        """Reads a full Omni config (nested `thinker_config`), a thinker-only config, or a directory holding one.

        The stop ids are `generation_config`'s `eos_token_id` (int or list; read from the
        `generation_config.json` beside a config file when not given); without one, the config's
        `eos_token_id`: a list as is, an id together with the pad id, as Qwen chat checkpoints stop at
        `<|im_end|>` or `<|endoftext|>`. Ids the config does not name are Qwen's, as in transformers'
        config class.
        """
        if isinstance(path_or_dict, dict):
            raw = path_or_dict
        else:
            path = os.fspath(path_or_dict)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            raw = _read_json(path, "config.json")
            beside = os.path.join(os.path.dirname(path), "generation_config.json")
            if generation_config is None and os.path.isfile(beside):
                generation_config = _read_json(beside, "generation_config.json")
        thinker = raw.get("thinker_config", raw)
        if "text_config" not in thinker:
            raise ValueError("config has neither `thinker_config` nor `text_config`: not a Qwen2.5-Omni config")
        return cls(
            text=_text_from_hf(thinker["text_config"]),
            vision=_pick(VisionConfig, thinker["vision_config"], renames={"embed_dim": "hidden_size"}, drop={"rope_theta"})
            if thinker.get("vision_config") is not None
            else VisionConfig(),
            audio=_pick(AudioConfig, thinker["audio_config"]) if thinker.get("audio_config") is not None else AudioConfig(),
            **{
                **_QWEN_IDS,
                **{ours: thinker[theirs] for ours, theirs in _TOP_LEVEL_IDS.items() if thinker.get(theirs) is not None},
                **_pad_and_stop_from_hf(raw, thinker, generation_config or {}),
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
        # One eos id reads back as (eos, pad) (see from_hf); any other stop set is written whole.
        eos = self.stop_token_ids[0]
        if self.stop_token_ids != _dedupe((eos, self.pad_token_id)):
            eos = list(self.stop_token_ids)
        return {
            "architectures": ["Qwen2_5OmniThinkerForConditionalGeneration"],
            "model_type": "qwen2_5_omni_thinker",
            "text_config": text_cfg,
            "vision_config": vision_cfg,
            "audio_config": audio_cfg,
            **{theirs: getattr(self, ours) for ours, theirs in _TOP_LEVEL_IDS.items()},
            "tie_word_embeddings": False,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": eos,
        }


def save_hf_config(config: ThinkerConfig, directory: str | os.PathLike, **extra: Any) -> None:
    """Writes `config.json` (`to_hf_dict` plus `extra` keys) and, unless the directory already has one (e.g.
    copied from a source checkpoint), `generation_config.json` with the config's stop and pad ids."""
    directory = pathlib.Path(directory)
    (directory / "config.json").write_text(json.dumps({**config.to_hf_dict(), **extra}, indent=2) + "\n", encoding="utf-8")
    generation = directory / "generation_config.json"
    if not generation.exists():
        generation.write_text(json.dumps(config.generation_config_dict(), indent=2) + "\n", encoding="utf-8")


# ours -> SpecialIds field (placeholders, media bos/eos, pad)
_SPECIAL_FIELDS = {
    "audio_token_id": "audio",
    "image_token_id": "image",
    "video_token_id": "video",
    "audio_start_token_id": "audio_bos",
    "audio_end_token_id": "audio_eos",
    "vision_start_token_id": "vision_bos",
    "vision_end_token_id": "vision_eos",
    "pad_token_id": "pad",
}


def special_id_fields(ids: tokens.SpecialIds) -> dict[str, int]:
    """ThinkerConfig's placeholder, media bos/eos and pad id fields from a vocabulary's `SpecialIds`
    (for `ThinkerConfig(...)` / `dataclasses.replace`; the stop ids are given alongside)."""
    return {ours: getattr(ids, theirs) for ours, theirs in _SPECIAL_FIELDS.items()}


_QWEN_IDS: dict[str, Any] = {**special_id_fields(tokens.QWEN_SPECIAL_IDS), "stop_token_ids": tokens.STOP_TOKEN_IDS}


def _dedupe(ids: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(ids))


def _eos_ids(value: Any, where: str) -> tuple[int, ...]:
    """`eos_token_id` as HF writes it (an id or a list of ids) → a tuple."""
    ids = value if isinstance(value, list) else [value]
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
        raise ValueError(f"{where} eos_token_id must be a token id or a non-empty list of them, got {value!r}")
    return _dedupe(tuple(ids))


def _pad_and_stop_from_hf(raw: dict[str, Any], thinker: dict[str, Any], generation: dict[str, Any]) -> dict[str, Any]:
    """`pad_token_id` and `stop_token_ids` from generation_config.json, the thinker config or the full one."""

    def first(key: str) -> Any:
        return next((d[key] for d in (generation, thinker, raw) if d.get(key) is not None), None)

    pad = first("pad_token_id")
    pad = _QWEN_IDS["pad_token_id"] if pad is None else pad
    if generation.get("eos_token_id") is not None:
        stop = _eos_ids(generation["eos_token_id"], "generation_config.json")
    elif first("eos_token_id") is None:
        stop = _QWEN_IDS["stop_token_ids"]
    elif isinstance(eos := first("eos_token_id"), list):
        stop = _eos_ids(eos, "config.json")
    else:
        stop = _dedupe(_eos_ids(eos, "config.json") + (pad,))
    return {"pad_token_id": pad, "stop_token_ids": stop}


def _read_json(path: str, name: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no {name} at {path}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if isinstance(raw, dict):
        return raw
    raise ValueError(f"{path} is not a JSON object")


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
    """The released Qwen2.5-Omni-7B thinker (docs/model.md §1.5), with the Qwen special ids."""
    return ThinkerConfig(**_QWEN_IDS)


def tiny() -> ThinkerConfig:
    """A tiny random thinker for tests and the CPU demo (~20M params, mostly the 152k-row embeddings), with
    the Qwen vocabulary and special ids."""
    return ThinkerConfig(
        **_QWEN_IDS,
        text=TextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            mrope_section=(2, 3, 3),
        ),
        vision=VisionConfig(
            depth=4, hidden_size=32, num_heads=4, intermediate_size=48, fullatt_block_indexes=(1, 3), out_hidden_size=64
        ),
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
        changes[key] = tuple(value) if isinstance(value, list) else value
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
