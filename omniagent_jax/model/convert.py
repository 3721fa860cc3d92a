"""Weight conversion HF safetensors ↔ converted JAX checkpoint, streaming, both directions.

`tools/convert_weights.py` is the command line over `main`; tests call the functions.

* `hf_to_jax(SRC, DST)`: reads an HF directory one tensor at a time and writes the JAX checkpoint
  layout described in `omniagent_jax.model.jax_checkpoint` (plus SRC's tokenizer/processor files).
* `jax_to_hf(SRC, DST, base=None)`: writes size-bounded safetensors shards tensor by tensor, the
  index and `config.json`. With `base` (an HF directory, e.g. the full Omni release) the export
  takes the base's key prefix and tensor order, carries every base tensor the JAX checkpoint does
  not hold (`talker.*`, `token2wav.*`) through byte for byte, and copies the base's non-weight
  files; without it, a thinker-only checkpoint that
  `transformers.Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained` loads.

Both write into a temporary directory next to DST and rename it at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from omniagent_jax.model.config import ThinkerConfig, save_hf_config
from omniagent_jax.model.hf_checkpoint import INDEX_FILE, HFCheckpoint, HFParamReader
from omniagent_jax.model.jax_checkpoint import MARKER_FILE, PARAMS_DIR, JaxCheckpointWriter, JaxParamReader, atomic_output_dir
from omniagent_jax.model.safetensors_io import CheckpointError, TensorSource, dtype_name, write_safetensors
from omniagent_jax.model.thinker import abstract_thinker
from omniagent_jax.model.weight_keys import Shape, natural_key, nnx_to_hf, read_config, shapes_of

DEFAULT_MAX_SHARD_SIZE = "5GB"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i)?)?b?\s*$", re.IGNORECASE)


def parse_size(size: int | str) -> int:
    """Bytes from `5GB` (10⁹, as HF counts), `5GiB` (2³⁰), `500MB`, or a plain integer."""
    if isinstance(size, int):
        return size
    m = _SIZE.match(size)
    if m is None:
        raise ValueError(f"cannot parse size {size!r} (expected e.g. 5GB, 500MB, 2GiB or a number of bytes)")
    unit = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}[(m[2] or "").lower()]
    value = float(m[1]) * ((1024 if m[3] else 1000) ** unit)
    if value < 1:
        raise ValueError(f"size {size!r} must be at least one byte")
    return int(value)


@functools.lru_cache(maxsize=4)
def _cached_shapes(config: ThinkerConfig) -> tuple[tuple[str, Shape], ...]:
    return tuple(shapes_of(abstract_thinker(config, np.float32)).items())


def param_shapes(config: ThinkerConfig) -> dict[str, Shape]:
    """Every parameter of the thinker: module path → NNX shape (`nnx.eval_shape`, nothing allocated;
    cached per config because tracing the 7B model takes seconds)."""
    return dict(_cached_shapes(config))


def _is_weight_file(name: str) -> bool:
    return name.endswith(".safetensors") or name == INDEX_FILE or name.startswith("pytorch_model")


def _copy_side_files(src: Path, dst: Path, skip: set[str]) -> list[str]:
    """Copies the non-weight files of a checkpoint directory (tokenizer, processor and generation
    configs, chat template, `spk_dict.pt`, …); hidden entries, weights and `skip` stay behind."""
    copied = []
    for entry in sorted(src.iterdir()):
        if entry.name.startswith(".") or entry.name in skip or _is_weight_file(entry.name):
            continue
        if entry.is_dir():
            shutil.copytree(entry, dst / entry.name)
        else:
            shutil.copy2(entry, dst / entry.name)
        copied.append(entry.name)
    return copied


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled, file=sys.stderr)


# ---------------------------------------------------------------------------------------- HF → JAX


def hf_to_jax(
    src: str | os.PathLike, dst: str | os.PathLike, *, dtype=None, overwrite: bool = False, progress: bool = True
) -> Path:
    """Converts an HF directory into a JAX checkpoint directory. `dtype=None` keeps each tensor's dtype."""
    src = Path(src)
    if (src / MARKER_FILE).exists():
        raise CheckpointError(f"{src} is already a converted JAX checkpoint (use jax-to-hf to export it)")
    reader = HFParamReader(src)
    reader.validate(param_shapes(reader.config))
    target = None if dtype is None else np.dtype(dtype)
    names = list(reader.specs)
    total = sum(int(np.prod(reader.specs[n].shape)) * (target or reader.specs[n].dtype).itemsize for n in names)
    with atomic_output_dir(dst, overwrite=overwrite) as tmp, _progress(total, "hf-to-jax", progress) as bar:
        writer = JaxCheckpointWriter(tmp, reader.config)
        for name, value in reader.iter_arrays(names):
            # One contiguous copy in the target dtype; rebinding frees the (transposed) tensor read.
            value = np.ascontiguousarray(value, dtype=target if target is not None else value.dtype)
            writer.add(name, value)
            bar.update(value.nbytes)
            del value
        writer.finish()
        _copy_side_files(src, tmp, skip={"config.json", MARKER_FILE, PARAMS_DIR})
    return Path(dst)


# ---------------------------------------------------------------------------------------- JAX → HF


def _shard_plan(tensors: list[TensorSource], max_bytes: int) -> list[list[TensorSource]]:
    """Consecutive tensors packed into shards of at most `max_bytes` (a larger tensor gets its own)."""
    shards: list[list[TensorSource]] = []
    size = 0
    for t in tensors:
        if not shards or (shards[-1] and size + t.nbytes > max_bytes):
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


class _InOrder:
    """Hands out the JAX checkpoint's tensors (already in the on-disk layout) in the order the
    shards are written, loading them group by group."""

    def __init__(self, reader: JaxParamReader, names: list[str]):
        self._arrays: Iterator[tuple[str, np.ndarray]] = reader.iter_arrays(names)
        self._config = reader.config
        self._specs = reader.specs

    def producer(self, name: str):
        def produce() -> np.ndarray:
            got, value = next(self._arrays)
            if got != name:  # the writer asks in plan order; anything else is a bug here
                raise RuntimeError(f"internal: expected {name}, the reader produced {got}")
            _, rule = nnx_to_hf(name)
            return rule.transform.to_hf(value, rule.transform.hf_shape(self._specs[name].shape, self._config))

        return produce


def _raw_producer(ckpt: HFCheckpoint, key: str):
    return lambda: ckpt.file_of(key).iter_bytes(key)


def _config_diff(a: ThinkerConfig, b: ThinkerConfig) -> list[str]:
    def flat(x, prefix=""):
        out = {}
        for f in dataclasses.fields(x):
            v = getattr(x, f.name)
            out.update(flat(v, f"{prefix}{f.name}.") if dataclasses.is_dataclass(v) else {f"{prefix}{f.name}": v})
        return out

    fa, fb = flat(a), flat(b)
    return [f"{k}: {fa[k]!r} vs {fb[k]!r}" for k in fa if fa[k] != fb[k]]


def jax_to_hf(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    base: str | os.PathLike | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Exports a JAX checkpoint directory as safetensors shards + index + config.json."""
    reader = JaxParamReader(src)
    reader.validate(param_shapes(reader.config))
    cfg = reader.config
    max_bytes = parse_size(max_shard_size)
    ours = {}  # full on-disk key → module path
    tensors: list[TensorSource] = []
    if base is None:
        base_ckpt = None
        for name in sorted(reader.specs, key=lambda n: natural_key(nnx_to_hf(n)[0])):
            ours[nnx_to_hf(name)[0]] = name
        order = list(ours)
    else:
        base_ckpt = HFCheckpoint(base)
        diff = _config_diff(cfg, read_config(base_ckpt.path))
        if diff:
            raise CheckpointError(f"{src} and base {base} have different thinker configs: {'; '.join(diff)}")
        for name in reader.specs:
            ours[base_ckpt.prefix + nnx_to_hf(name)[0]] = name
        _check_against_base(reader, ours, base_ckpt)
        order = base_ckpt.keys_in_layout_order()
    in_order = _InOrder(reader, [ours[k] for k in order if k in ours])
    for key in order:
        if key in ours:
            name = ours[key]
            spec = reader.specs[name]
            _, rule = nnx_to_hf(name)
            shape = rule.transform.hf_shape(spec.shape, cfg)
            tensors.append(TensorSource(key, dtype_name(spec.dtype), shape, in_order.producer(name)))
        else:  # assert base_ckpt: only a base holds keys we do not
            info = base_ckpt.file_of(key).tensors[key]  # type: ignore[union-attr]
            tensors.append(TensorSource(key, info.dtype, info.shape, _raw_producer(base_ckpt, key)))  # type: ignore[arg-type]

    shards = _shard_plan(tensors, max_bytes)
    total = sum(t.nbytes for t in tensors)
    with atomic_output_dir(dst, overwrite=overwrite) as tmp, _progress(total, "jax-to-hf", progress) as bar:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(tmp / fname, shard, metadata={"format": "pt"}, on_tensor=lambda t: bar.update(t.nbytes))
            weight_map.update({t.key: fname for t in shard})
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        if base_ckpt is not None:
            _copy_side_files(base_ckpt.path, tmp, skip=set())
        else:
            dtypes = {str(s.dtype) for s in reader.specs.values()}
            # transformers 5.x reads `dtype` for dtype="auto"
            extra = {"dtype": dtypes.pop()} if len(dtypes) == 1 else {}
            _copy_side_files(reader.path, tmp, skip={"config.json", MARKER_FILE, PARAMS_DIR})
            save_hf_config(cfg, tmp, **extra)  # after the copy: a generation_config.json there is kept
    return Path(dst)


def _check_against_base(reader: JaxParamReader, ours: dict[str, str], base: HFCheckpoint) -> None:
    """Every exported tensor must replace a base tensor of the same shape; dtype changes are warned about."""
    problems, dtype_changes = [], []
    for key, name in ours.items():
        if key not in base.weight_map:
            problems.append(f"{key!r} is not in the base")
            continue
        info = base.file_of(key).tensors[key]
        _, rule = nnx_to_hf(name)
        shape = rule.transform.hf_shape(reader.specs[name].shape, reader.config)
        if info.shape != shape:
            problems.append(
                f"shape mismatch for {key!r}: base {list(info.shape)} (in {base.weight_map[key]}), JAX checkpoint {list(shape)}"
            )
        if info.dtype != dtype_name(reader.specs[name].dtype):
            dtype_changes.append(f"{info.dtype}→{dtype_name(reader.specs[name].dtype)}")
    if problems:
        raise CheckpointError(f"the base {base.path} does not match {reader.path}: {'; '.join(problems[:8])}")
    if dtype_changes:
        warnings.warn(
            f"exported thinker tensors change dtype against the base ({', '.join(sorted(set(dtype_changes)))}); "
            "carried tensors keep the base's dtype",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_weights.py",
        description="Convert Qwen2.5-Omni thinker weights between HF safetensors and the JAX (orbax) checkpoint layout.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    h2j = sub.add_parser("hf-to-jax", help="HF safetensors directory → JAX checkpoint directory")
    h2j.add_argument("src", type=Path, help="HF directory (sharded with an index, or model.safetensors)")
    h2j.add_argument("dst", type=Path, help="output JAX checkpoint directory (must not exist unless --overwrite)")
    h2j.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="cast every tensor (default: keep)")
    j2h = sub.add_parser("jax-to-hf", help="JAX checkpoint directory → HF safetensors directory")
    j2h.add_argument("src", type=Path, help="JAX checkpoint directory (from hf-to-jax or save_jax_checkpoint)")
    j2h.add_argument("dst", type=Path, help="output HF directory (must not exist unless --overwrite)")
    j2h.add_argument("--base", type=Path, help="HF directory whose layout, other tensors (talker, token2wav) and files to keep")
    j2h.add_argument(
        "--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, help="largest shard (default 5GB; GB = 10^9, GiB = 2^30)"
    )
    for p in (h2j, j2h):
        p.add_argument("--overwrite", action="store_true", help="replace an existing DST (only once the new one is complete)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "hf-to-jax":
            out = hf_to_jax(args.src, args.dst, dtype=args.dtype, overwrite=args.overwrite, progress=not args.no_progress)
        else:
            out = jax_to_hf(
                args.src,
                args.dst,
                base=args.base,
                max_shard_size=args.max_shard_size,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
    except (OSError, ValueError) as e:  # CheckpointError is a ValueError; FileExistsError an OSError
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
