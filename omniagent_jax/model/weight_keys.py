"""The key table: every on-disk key of the thinker ↔ the module path of its NNX parameter (docs/model.md §3.2).

One table (`RULES`) maps every on-disk key of the thinker (the names the release uses, without
the `thinker.` prefix) to the module path of its NNX parameter and the layout transform between
them; both directions are derived from it, so a new module is new rows. Also here: what both
checkpoint readers (`hf_checkpoint`, `jax_checkpoint`) share — a parameter's NNX shape and dtype,
the model's shapes in key order, and the checkpoint's `config.json`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flax import nnx

from omniagent_jax.model.config import ThinkerConfig
from omniagent_jax.model.safetensors_io import CheckpointError

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------- layout transforms


@dataclasses.dataclass(frozen=True)
class Transform:
    """How a tensor's on-disk (PyTorch) layout relates to its NNX layout. Pure reshapes and
    transposes, so both directions are bit-exact."""

    name: str
    to_jax: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray, Shape], np.ndarray]
    hf_shape: Callable[[Shape, ThinkerConfig], Shape]


IDENTITY = Transform("identity", lambda x: x, lambda x, shape: x, lambda shape, cfg: shape)
# Linear weight (out, in) ↔ kernel [in, out]; Conv1d weight (out, in, k) ↔ kernel [k, in, out]:
# both are the reversal of all axes.
TRANSPOSE = Transform("transpose", lambda x: x.T, lambda x, shape: x.T, lambda shape, cfg: tuple(reversed(shape)))
# The vision Conv3d (out, C, T, P, P) with stride = kernel is a matmul over flattened rows of
# C·T·P·P pixels, in the order the processor flattens them: kernel [C·T·P·P, out].
PATCH_EMBED = Transform(
    "patch_embed",
    lambda x: x.reshape(x.shape[0], -1).T,
    lambda x, shape: x.T.reshape(shape),
    lambda shape, cfg: (
        shape[1],
        cfg.vision.in_channels,
        cfg.vision.temporal_patch_size,
        cfg.vision.patch_size,
        cfg.vision.patch_size,
    ),
)


# ---------------------------------------------------------------------------------------- the key table

_PLACEHOLDER = re.compile(r"\{(\w+)(?::([^}]*))?\}")


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of the key table. `hf` is the on-disk key without the `thinker.` prefix; `nnx` the
    module path. `{i}` stands for a layer index, `{name:a|b}` for one of the listed words; `nnx`
    refers to them by name."""

    hf: str
    nnx: str
    transform: Transform = IDENTITY

    def __post_init__(self) -> None:
        alternatives = {m[1]: m[2] for m in _PLACEHOLDER.finditer(self.hf)}
        object.__setattr__(self, "_hf_re", _template_regex(self.hf, alternatives))
        object.__setattr__(self, "_nnx_re", _template_regex(self.nnx, alternatives))
        object.__setattr__(self, "_hf_fmt", _PLACEHOLDER.sub(r"{\1}", self.hf))
        object.__setattr__(self, "_nnx_fmt", _PLACEHOLDER.sub(r"{\1}", self.nnx))

    def hf_to_nnx(self, key: str) -> str | None:
        m = self._hf_re.fullmatch(key)  # type: ignore[attr-defined]
        return None if m is None else self._nnx_fmt.format(**m.groupdict())  # type: ignore[attr-defined]

    def nnx_to_hf(self, name: str) -> str | None:
        m = self._nnx_re.fullmatch(name)  # type: ignore[attr-defined]
        return None if m is None else self._hf_fmt.format(**m.groupdict())  # type: ignore[attr-defined]


def _template_regex(template: str, alternatives: dict[str, str | None]) -> re.Pattern[str]:
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        alts = alternatives.get(m[1])
        body = r"\d+" if alts is None else "|".join(re.escape(a) for a in alts.split("|"))
        out.append(f"(?P<{m[1]}>{body})")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out))


_TEXT_PROJ = "{p:q_proj|k_proj|v_proj}"
RULES: tuple[Rule, ...] = (
    # text decoder (thinker.model.*) and head
    Rule("model.embed_tokens.weight", "model.embed_tokens.embedding"),
    Rule(f"model.layers.{{i}}.self_attn.{_TEXT_PROJ}.weight", "model.layers.{i}.self_attn.{p}.kernel", TRANSPOSE),
    Rule(f"model.layers.{{i}}.self_attn.{_TEXT_PROJ}.bias", "model.layers.{i}.self_attn.{p}.bias"),
    Rule("model.layers.{i}.self_attn.o_proj.weight", "model.layers.{i}.self_attn.o_proj.kernel", TRANSPOSE),
    Rule("model.layers.{i}.mlp.{p:gate_proj|up_proj|down_proj}.weight", "model.layers.{i}.mlp.{p}.kernel", TRANSPOSE),
    Rule("model.layers.{i}.{n:input_layernorm|post_attention_layernorm}.weight", "model.layers.{i}.{n}.weight"),
    Rule("model.norm.weight", "model.norm.weight"),
    Rule("lm_head.weight", "lm_head.kernel", TRANSPOSE),
    # vision tower (thinker.visual.*)
    Rule("visual.patch_embed.proj.weight", "visual.patch_embed.kernel", PATCH_EMBED),
    Rule("visual.blocks.{i}.{n:norm1|norm2}.weight", "visual.blocks.{i}.{n}.weight"),
    Rule("visual.blocks.{i}.attn.{p:q|k|v|proj}.weight", "visual.blocks.{i}.attn.{p}.kernel", TRANSPOSE),
    Rule("visual.blocks.{i}.attn.{p:q|k|v|proj}.bias", "visual.blocks.{i}.attn.{p}.bias"),
    Rule("visual.blocks.{i}.mlp.{p:gate_proj|up_proj|down_proj}.weight", "visual.blocks.{i}.mlp.{p}.kernel", TRANSPOSE),
    Rule("visual.blocks.{i}.mlp.{p:gate_proj|up_proj|down_proj}.bias", "visual.blocks.{i}.mlp.{p}.bias"),
    Rule("visual.merger.ln_q.weight", "visual.merger.ln_q.weight"),
    Rule("visual.merger.mlp.0.weight", "visual.merger.fc1.kernel", TRANSPOSE),
    Rule("visual.merger.mlp.0.bias", "visual.merger.fc1.bias"),
    Rule("visual.merger.mlp.2.weight", "visual.merger.fc2.kernel", TRANSPOSE),
    Rule("visual.merger.mlp.2.bias", "visual.merger.fc2.bias"),
    # audio tower (thinker.audio_tower.*)
    Rule("audio_tower.{c:conv1|conv2}.weight", "audio_tower.{c}.kernel", TRANSPOSE),
    Rule("audio_tower.{c:conv1|conv2}.bias", "audio_tower.{c}.bias"),
    Rule("audio_tower.audio_bos_eos_token.weight", "audio_tower.audio_bos_eos_token"),
    Rule(
        "audio_tower.layers.{i}.self_attn.{p:q_proj|k_proj|v_proj|out_proj}.weight",
        "audio_tower.layers.{i}.self_attn.{p}.kernel",
        TRANSPOSE,
    ),
    Rule("audio_tower.layers.{i}.self_attn.{p:q_proj|v_proj|out_proj}.bias", "audio_tower.layers.{i}.self_attn.{p}.bias"),
    Rule("audio_tower.layers.{i}.{p:fc1|fc2}.weight", "audio_tower.layers.{i}.{p}.kernel", TRANSPOSE),
    Rule("audio_tower.layers.{i}.{p:fc1|fc2}.bias", "audio_tower.layers.{i}.{p}.bias"),
    Rule(
        "audio_tower.layers.{i}.{n:self_attn_layer_norm|final_layer_norm}.{w:weight|bias}",
        "audio_tower.layers.{i}.{n}.{w}",
    ),
    Rule("audio_tower.ln_post.{w:weight|bias}", "audio_tower.ln_post.{w}"),
    Rule("audio_tower.proj.weight", "audio_tower.proj.kernel", TRANSPOSE),
    Rule("audio_tower.proj.bias", "audio_tower.proj.bias"),
)


def hf_to_nnx(key: str) -> tuple[str, Rule] | None:
    """On-disk key (no `thinker.` prefix) → (NNX module path, its rule), or None for an unknown key."""
    for rule in RULES:
        name = rule.hf_to_nnx(key)
        if name is not None:
            return name, rule
    return None


def nnx_to_hf(name: str) -> tuple[str, Rule]:
    """NNX module path (`model.layers.0.mlp.up_proj.kernel`) → (on-disk key without prefix, rule)."""
    for rule in RULES:
        key = rule.nnx_to_hf(name)
        if key is not None:
            return key, rule
    raise KeyError(f"parameter {name!r} has no checkpoint key (add a row to omniagent_jax.model.weight_keys.RULES)")


def natural_key(name: str) -> list[object]:
    # layers.10 after layers.9: the order HF writes and people read.
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def shapes_of(model: nnx.Module) -> dict[str, Shape]:
    """Module path → NNX shape of every parameter of a (possibly abstract) model, in checkpoint-key order."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    shapes = {".".join(map(str, path)): tuple(var.shape) for path, var in flat}
    return dict(sorted(shapes.items(), key=lambda kv: natural_key(nnx_to_hf(kv[0])[0])))


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """A stored parameter as the model will hold it."""

    shape: Shape  # NNX layout
    dtype: np.dtype


def summarise(items: list[str], limit: int = 8) -> str:
    """The first `limit` items of an error listing, and how many more there are."""
    shown = ", ".join(items[:limit])
    return shown + (f", … and {len(items) - limit} more" if len(items) > limit else "")


def read_config(path: Path) -> ThinkerConfig:
    """The thinker config from a checkpoint directory's config.json (full Omni or thinker-only); a
    missing, unparsable or unusable one is a CheckpointError naming the file."""
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{path}: no config.json next to the weights")
    try:
        return ThinkerConfig.from_hf(path)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        detail = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        # from_hf names the file (config.json or generation_config.json) of a JSON error itself
        raise CheckpointError(detail if str(path) in detail else f"{file}: not a usable thinker config ({detail})") from None
