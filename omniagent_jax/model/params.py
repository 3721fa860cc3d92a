"""Checkpoint keys ↔ NNX parameters, and loading/saving the thinker's weights (model.md §3).

One table (`RULES`) maps every on-disk key of the thinker (the names the release uses, without
the `thinker.` prefix) to the module path of its NNX parameter and the layout transform between
them; both directions are derived from it, so a new module is new rows.

Two on-disk formats are read, each streamed one tensor at a time:

* an HF directory: `model.safetensors`, or shards + `model.safetensors.index.json`; keys with or
  without the `thinker.` prefix; `talker.*` / `token2wav.*` (the speech generator) are ignored;
* a converted JAX checkpoint directory (`save_jax_checkpoint`, `tools/convert_weights.py hf-to-jax`):

      DST/omniagent_checkpoint.json   marker: format, version, dtype
      DST/config.json                 the thinker config (`ThinkerConfig.to_hf_dict`)
      DST/params/                     orbax checkpoint of the parameter tree, nested dicts keyed by
                                      module path (`{"model": {"layers": {"0": {...}}}}`), arrays in
                                      the NNX layout (Linear kernels `[in, out]`)

Any other key, a missing key or a shape mismatch is a `CheckpointError` naming the key and file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omniagent_jax.model.config import ThinkerConfig
from omniagent_jax.model.safetensors_io import DTYPES, CheckpointError, SafetensorsFile
from omniagent_jax.model.thinker import Thinker, abstract_thinker

__all__ = [
    "CheckpointError",
    "HFCheckpoint",
    "HFParamReader",
    "JaxParamReader",
    "JaxCheckpointWriter",
    "RULES",
    "hf_to_nnx",
    "load_thinker",
    "nnx_to_hf",
    "open_params",
    "param_shapes",
    "shapes_of",
    "save_jax_checkpoint",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
THINKER_PREFIX = "thinker."
# The speech generator of the full Omni model: not part of the thinker, skipped on load, carried
# through by `jax-to-hf --base`.
IGNORED_PREFIXES = ("talker.", "token2wav.")

MARKER_FILE = "omniagent_checkpoint.json"
MARKER_FORMAT = "omniagent-jax-thinker"
MARKER_VERSION = 1
PARAMS_DIR = "params"
# Orbax reads and writes parameters in groups of about this many bytes (a larger tensor goes
# alone): one call per tensor would cost ~1346 calls for the 7B thinker, and orbax's partial save
# re-reads every earlier save's metadata on each call (quadratic), while one call for the whole
# tree would hold the whole checkpoint in memory.
GROUP_BYTES = 512 << 20

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
    raise KeyError(f"parameter {name!r} has no checkpoint key (add a row to omniagent_jax.model.params.RULES)")


def natural_key(name: str) -> list[object]:
    # layers.10 after layers.9: the order HF writes and people read.
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def shapes_of(model: Thinker) -> dict[str, Shape]:
    """Module path → NNX shape of every parameter of a (possibly abstract) model, in checkpoint-key order."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    shapes = {".".join(map(str, path)): tuple(var.shape) for path, var in flat}
    return dict(sorted(shapes.items(), key=lambda kv: natural_key(nnx_to_hf(kv[0])[0])))


@functools.lru_cache(maxsize=4)
def _cached_shapes(config: ThinkerConfig) -> tuple[tuple[str, Shape], ...]:
    return tuple(shapes_of(abstract_thinker(config, jnp.float32)).items())


def param_shapes(config: ThinkerConfig) -> dict[str, Shape]:
    """Every parameter of the thinker: module path → NNX shape (`nnx.eval_shape`, nothing allocated;
    cached per config because tracing the 7B model takes seconds)."""
    return dict(_cached_shapes(config))


# ---------------------------------------------------------------------------------------- readers


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    shape: Shape  # NNX layout
    dtype: np.dtype


class ParamReader(Protocol):
    """A checkpoint: its config and stored dtypes when opened; after `validate` (against the
    model's shapes) every parameter's NNX shape/dtype, and the tensors one at a time."""

    path: Path
    config: ThinkerConfig
    specs: dict[str, ParamSpec]

    def stored_dtypes(self) -> set[np.dtype]: ...

    def validate(self, shapes: dict[str, Shape] | None = None) -> ParamReader: ...

    def read(self, name: str) -> np.ndarray: ...

    def iter_arrays(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]: ...


def _summarise(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", … and {len(items) - limit} more" if len(items) > limit else "")


def read_config(path: Path) -> ThinkerConfig:
    """The thinker config from a checkpoint directory's config.json (full Omni or thinker-only)."""
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json next to the weights")
    return ThinkerConfig.from_hf(path)


class HFCheckpoint:
    """An HF safetensors directory: which file holds each key, with every shard header read and
    validated up front (corrupt or missing shards fail before any tensor is read)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path} is not a directory")
        if (self.path / SINGLE_FILE).is_file():
            single = SafetensorsFile(self.path / SINGLE_FILE)
            self.files = {SINGLE_FILE: single}
            self.weight_map = {k: SINGLE_FILE for k in single.keys()}
        elif (self.path / INDEX_FILE).is_file():
            self.weight_map = self._read_index()
            self.files = {}
            for fname in sorted(set(self.weight_map.values())):
                if not (self.path / fname).is_file():
                    keys = [k for k, f in self.weight_map.items() if f == fname]
                    raise CheckpointError(
                        f"{self.path / INDEX_FILE} lists shard {fname!r} (holding {_summarise(keys, 3)}) but the file is missing"
                    )
                self.files[fname] = SafetensorsFile(self.path / fname)
            for key, fname in self.weight_map.items():
                if key not in self.files[fname].tensors:
                    raise CheckpointError(f"{self.path / INDEX_FILE} maps {key!r} to {fname!r}, which does not contain it")
        else:
            raise CheckpointError(
                f"{self.path} is not a checkpoint directory: no {SINGLE_FILE}, {INDEX_FILE} or {MARKER_FILE}"
            )
        self.prefix = THINKER_PREFIX if any(k.startswith(THINKER_PREFIX) for k in self.weight_map) else ""

    def _read_index(self) -> dict[str, str]:
        index = self.path / INDEX_FILE
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
        return weight_map

    def file_of(self, key: str) -> SafetensorsFile:
        return self.files[self.weight_map[key]]

    def keys_in_layout_order(self) -> list[str]:
        """Keys by file, then by position inside the file: the order the bytes lie on disk."""
        order = []
        for fname, f in self.files.items():
            order += sorted((k for k in f.keys() if self.weight_map.get(k) == fname), key=lambda k: f.tensors[k].begin)
        return order

    def thinker_keys(self) -> dict[str, tuple[str, Rule]]:
        """Full on-disk key → (module path, rule) for every thinker tensor. Keys that are neither
        thinker tensors nor ignored (`talker.*`, `token2wav.*`) are errors."""
        out, unknown = {}, []
        for key in self.weight_map:
            if key.startswith(IGNORED_PREFIXES):
                continue
            mapped = hf_to_nnx(key[len(self.prefix) :]) if key.startswith(self.prefix) else None
            if mapped is None:
                unknown.append(f"{key!r} (in {self.weight_map[key]})")
            else:
                out[key] = mapped
        if unknown:
            raise CheckpointError(f"{self.path}: unknown checkpoint key(s): {_summarise(unknown)}")
        return out


class HFParamReader:
    """Thinker parameters from an HF directory and its config.json."""

    def __init__(self, path: str | os.PathLike):
        self.ckpt = HFCheckpoint(path)
        self.path = self.ckpt.path
        self.config = read_config(self.path)
        self._found = self.ckpt.thinker_keys()  # full key → (module path, rule); unknown keys raise here
        self._keys: dict[str, tuple[str, Rule]] = {}  # module path → (full key, rule), once validated
        self.specs: dict[str, ParamSpec] = {}

    def _dtype(self, key: str) -> np.dtype:
        return DTYPES[self.ckpt.file_of(key).tensors[key].dtype]

    def stored_dtypes(self) -> set[np.dtype]:
        return {self._dtype(k) for k in self._found}

    def validate(self, shapes: dict[str, Shape] | None = None) -> HFParamReader:
        """Checks every tensor against the model's parameters (`shapes`, default: from the config)."""
        expected = param_shapes(self.config) if shapes is None else shapes
        keys: dict[str, tuple[str, Rule]] = {}
        problems = []
        for key, (name, rule) in self._found.items():
            where = self.ckpt.weight_map[key]
            if name not in expected:
                problems.append(f"unknown key {key!r} (in {where}): the config has no parameter {name}")
                continue
            want = rule.transform.hf_shape(expected[name], self.config)
            got = self.ckpt.file_of(key).tensors[key].shape
            if got != want:
                problems.append(f"shape mismatch for {key!r} (in {where}): checkpoint {list(got)}, model expects {list(want)}")
            keys[name] = (key, rule)
        missing = [self.ckpt.prefix + nnx_to_hf(n)[0] for n in expected if n not in keys]
        if missing:
            problems.append(f"missing key(s): {_summarise(missing)}")
        if problems:
            raise CheckpointError(f"{self.path}: " + "; ".join(problems))
        self._keys = keys
        self.specs = {name: ParamSpec(expected[name], self._dtype(keys[name][0])) for name in expected}
        return self

    def hf_key(self, name: str) -> str:
        return self._keys[name][0]

    def read(self, name: str) -> np.ndarray:
        """One parameter in the NNX layout (Linear kernels transposed: a view of the one copy read)."""
        key, rule = self._keys[name]
        return rule.transform.to_jax(self.ckpt.file_of(key).read(key))

    def iter_arrays(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        for name in names:
            yield name, self.read(name)


def _orbax():
    # Imported late: orbax pulls in a lot, and HF-only users never need it.
    import orbax.checkpoint.experimental.v1 as ocp

    return ocp


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _nest(name: str, value: object) -> dict:
    out: dict = {}
    node = out
    parts = name.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


class JaxParamReader:
    """Thinker parameters from a converted JAX checkpoint directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        marker_path = self.path / MARKER_FILE
        try:
            marker = json.loads(marker_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} is not a JAX checkpoint directory: no {MARKER_FILE}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{marker_path}: not valid JSON ({e})") from None
        if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
            raise CheckpointError(f"{marker_path}: not an {MARKER_FORMAT} checkpoint marker")
        if marker.get("version") != MARKER_VERSION:
            raise CheckpointError(
                f"{marker_path}: unsupported checkpoint version {marker.get('version')!r} (this code reads {MARKER_VERSION})"
            )
        self.marker = marker
        self.config = read_config(self.path)
        params = self.path / PARAMS_DIR
        try:
            stored = _flatten(_orbax().metadata(params).metadata)
        except Exception as e:  # orbax raises assorted types for an unreadable directory
            raise CheckpointError(f"{params}: cannot read the orbax checkpoint ({type(e).__name__}: {e})") from None
        self._meta = stored
        self.specs: dict[str, ParamSpec] = {}

    def stored_dtypes(self) -> set[np.dtype]:
        return {np.dtype(m.dtype) for m in self._meta.values()}  # type: ignore[attr-defined]

    def validate(self, shapes: dict[str, Shape] | None = None) -> JaxParamReader:
        """Checks every stored parameter against the model's (`shapes`, default: from the config)."""
        expected = param_shapes(self.config) if shapes is None else shapes
        stored, params = self._meta, self.path / PARAMS_DIR
        problems = [f"unknown parameter {n!r} (in {params})" for n in stored if n not in expected]
        for n in expected:
            got = tuple(stored[n].shape) if n in stored else expected[n]  # type: ignore[attr-defined]
            if got != expected[n]:
                want = list(expected[n])
                problems.append(f"shape mismatch for {n!r} (in {params}): checkpoint {list(got)}, model expects {want}")
        missing = [n for n in expected if n not in stored]
        if missing:
            problems.append(f"missing parameter(s) in {params}: {_summarise(missing)}")
        if problems:
            raise CheckpointError(f"{self.path}: " + "; ".join(problems))
        self.specs = {n: ParamSpec(expected[n], np.dtype(stored[n].dtype)) for n in expected}  # type: ignore[attr-defined]
        return self

    def read(self, name: str) -> np.ndarray:
        return self._load([name])[name]

    def iter_arrays(self, names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
        """The parameters in order, loaded in groups of about `GROUP_BYTES`."""
        for group in _groups(names, lambda n: _nbytes(self.specs[n])):
            arrays = self._load(group)
            for name in group:
                yield name, arrays.pop(name)

    def _load(self, names: list[str]) -> dict[str, np.ndarray]:
        ocp = _orbax()
        ctx = ocp.Context()
        ctx.pytree.loading.partial_load = True  # only these leaves: the rest stays on disk
        abstract: dict = {}
        for name in names:
            _merge(abstract, _nest(name, self._meta[name]))
        with ctx:
            tree = ocp.load(self.path / PARAMS_DIR, abstract)
        return {name: np.asarray(value) for name, value in _flatten(tree).items()}


def _nbytes(spec: ParamSpec) -> int:
    return int(np.prod(spec.shape)) * spec.dtype.itemsize


def _groups(names: list[str], nbytes: Callable[[str], int], budget: int | None = None) -> Iterator[list[str]]:
    """Consecutive runs of names of at most `budget` bytes (a larger tensor forms a group alone)."""
    budget = GROUP_BYTES if budget is None else budget
    group: list[str] = []
    size = 0
    for name in names:
        n = nbytes(name)
        if group and size + n > budget:
            yield group
            group, size = [], 0
        group.append(name)
        size += n
    if group:
        yield group


def _merge(into: dict, tree: dict) -> None:
    for k, v in tree.items():
        if isinstance(v, dict):
            _merge(into.setdefault(k, {}), v)
        else:
            into[k] = v


def open_params(path: str | os.PathLike, *, validate: bool = True) -> HFParamReader | JaxParamReader:
    """The reader for a checkpoint directory: a converted JAX checkpoint if it has the marker, else
    HF; validated against the config's parameters unless `validate=False`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory (it is a file)")
    reader = JaxParamReader(path) if (path / MARKER_FILE).exists() else HFParamReader(path)
    return reader.validate() if validate else reader


# ---------------------------------------------------------------------------------------- loading


def checkpoint_dtype(reader: ParamReader) -> np.dtype:
    """The one dtype of all thinker tensors; a mixed checkpoint needs an explicit dtype to load."""
    dtypes = reader.stored_dtypes()
    if len(dtypes) != 1:
        names = sorted(map(str, dtypes))
        raise CheckpointError(f"{reader.path}: parameters have mixed dtypes {names}; pass dtype= to choose one")
    return dtypes.pop()


def load_thinker(path: str | os.PathLike, dtype=None) -> Thinker:
    """A `Thinker` with the weights of an HF directory or a converted JAX checkpoint.

    Tensors are read one at a time (JAX checkpoints: one ~512 MB group) and placed straight into
    the model, so peak host memory is the model plus one tensor. `dtype=None` keeps the
    checkpoint's dtype. Parameters keep their logical axis names.
    """
    reader = open_params(path, validate=False)
    target = np.dtype(dtype) if dtype is not None else checkpoint_dtype(reader)
    abstract = abstract_thinker(reader.config, target)
    reader.validate(shapes_of(abstract))  # the same traced model: the 7B is traced once, not twice
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise TypeError("Thinker holds non-parameter state; load_thinker only knows how to fill parameters")
    flat = nnx.to_flat_state(params)
    variables = {".".join(map(str, p)): var for p, var in flat}
    for name, value in reader.iter_arrays(list(variables)):
        if value.dtype != target:
            value = value.astype(target)
        variables[name].set_value(jnp.asarray(value))
        del value
    return nnx.merge(graphdef, nnx.from_flat_state(flat), rest)


# ---------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_output_dir(dst: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """A temporary directory next to `dst` that becomes `dst` only when the block succeeds.

    An existing `dst` is an error unless `overwrite`; it is then replaced at the very end, so a
    failed or interrupted conversion never leaves a half-written output (or a lost old one).
    """
    dst = Path(dst).absolute()
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass overwrite=True / --overwrite to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output should look like any new directory
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.rename(dst, old / dst.name)
    os.rename(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class JaxCheckpointWriter:
    """Writes a converted JAX checkpoint parameter by parameter: tensors are buffered up to
    `GROUP_BYTES` and each group goes out as one orbax partial save; `finish` finalizes."""

    def __init__(self, path: str | os.PathLike, config: ThinkerConfig):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n", encoding="utf-8")
        self._dtypes: set[str] = set()
        self._count = 0
        self._pending: dict = {}
        self._pending_bytes = 0
        # Measured on a 1 GiB bf16 tensor: zstd (it buys ~10% on weights) and `chunk_byte_size`
        # chunking (strided chunks of a wide kernel) each leave about a tensor's worth of
        # tensorstore buffers resident after the save; plain whole-array chunks make one
        # transient copy and return it.
        self._ctx = _orbax().Context()
        self._ctx.array.saving.use_compression = False

    def add(self, name: str, value: np.ndarray | jax.Array) -> None:
        """Queues one parameter. Pass numpy arrays C-contiguous: orbax copies a strided view into
        yet another buffer (three copies of the tensor at once instead of two)."""
        nbytes = int(np.prod(value.shape)) * np.dtype(value.dtype).itemsize
        if self._pending and self._pending_bytes + nbytes > GROUP_BYTES:
            self._flush()
        _merge(self._pending, _nest(name, value))
        self._pending_bytes += nbytes
        self._dtypes.add(str(np.dtype(value.dtype)))
        self._count += 1
        if self._pending_bytes >= GROUP_BYTES:  # a big tensor goes out now, not while the next one is read
            self._flush()

    def _flush(self) -> None:
        with self._ctx:
            _orbax().partial.save(self.path / PARAMS_DIR, self._pending)
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> None:
        if self._pending:
            self._flush()
        _orbax().partial.finalize(self.path / PARAMS_DIR)
        marker = {
            "format": MARKER_FORMAT,
            "version": MARKER_VERSION,
            "dtype": next(iter(self._dtypes)) if len(self._dtypes) == 1 else "mixed",
            "num_tensors": self._count,
            "params": PARAMS_DIR,
        }
        (self.path / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def save_jax_checkpoint(model: Thinker, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Saves a model as a converted JAX checkpoint directory that `Thinker.from_pretrained` reads."""
    params = nnx.state(model, nnx.Param)
    with atomic_output_dir(path, overwrite=overwrite) as tmp:
        writer = JaxCheckpointWriter(tmp, model.config)
        for path_, var in nnx.to_flat_state(params):
            writer.add(".".join(map(str, path_)), var.get_value())
        writer.finish()
    return Path(path)

