"""SFT run configuration: frozen dataclasses, YAML files in `configs/sft/`, `key=value` overrides.

A YAML file maps onto `SFTConfig` section by section (`mesh`, `optim`, `data`, `checkpoint`, plus
top-level run fields); `a.b=value` overrides parse `value` as YAML (so `optim.lr=3e-4` is a float).
Unknown keys are errors, never silently ignored. `resolved(cfg)` is what each run writes next to
its output.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import yaml

# Every audio/vision tower parameter (the vision merger lives under `visual.merger`): the
# reference fine-tunes the language model only (docs/training.md §3).
DEFAULT_FROZEN = (r"^audio_tower\.", r"^visual\.")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axes; -1 takes every device left over (at most one axis may be -1)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5
    schedule: str = "linear"  # linear | cosine | constant (after warm-up)
    warmup_ratio: float = 0.03
    end_lr_ratio: float = 0.0  # final lr as a fraction of `lr`
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 disables
    frozen: tuple[str, ...] = DEFAULT_FROZEN  # regexes over dotted parameter paths


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train_file: str = ""
    data_root: str = "."  # `extra_info.video` is resolved under this directory
    mode: str = "step"  # step: one sample per step-log row | trajectory: one packed sample per trajectory
    max_length: int = 8192  # samples longer than this are skipped (counted), never truncated mid-target
    batch_size: int = 1  # per micro-batch, global over all processes
    grad_accum: int = 1  # micro-batches per optimizer step
    buckets: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)  # padded lengths: one compile per bucket
    # Group each step's samples by bucket (pipeline.py / grouping.py) instead of padding consecutive
    # samples to their longest; identical order when batch_size·grad_accum is 1 or one bucket is used.
    group_by_length: bool = True
    shuffle: bool = True
    workers: int = 0  # grain prefetch worker processes (0 = in the main process)
    use_audio_in_video: bool = True  # clips of videos with audio carry their audio (docs/protocol.md §8)
    vocab_remap: int = 0  # >0: map token ids into [0, vocab_remap) (tiny test models only; text-only data)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500  # steps between saves; 0 = only at the end
    keep: int = 3
    async_save: bool = True
    resume: bool = True  # continue from the latest checkpoint in `output_dir/checkpoints`


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    model: str = "tiny"  # preset name, configs/model/*.yaml, or an HF checkpoint directory
    init: str = ""  # weights to start from (HF or converted dir); empty = random init
    dtype: str = "float32"
    remat: str = "none"  # none | full | dots (jax.checkpoint policy per decoder layer)
    loss_chunk: int = 1024  # tokens per logits chunk: [chunk, vocab] is the largest logits block
    epochs: float = 1.0
    max_steps: int = 0  # >0 caps the number of optimizer steps
    seed: int = 42
    output_dir: str = "runs/sft"
    log_every: int = 1
    progress: bool = True
    export_hf: bool = False  # write an HF checkpoint (safetensors) at the end
    mesh: MeshConfig = MeshConfig()
    optim: OptimConfig = OptimConfig()
    data: DataConfig = DataConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()


class ConfigError(ValueError):
    """A bad config file or override; the message names the key."""


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[f'{where}{k}' for k in unknown]}; known: {sorted(fields)}")
    defaults = cls()
    kwargs = {}
    for name, value in raw.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}{name}.")
        elif isinstance(default, tuple):
            kwargs[name] = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}{name} must be true/false, got {value!r}")
            kwargs[name] = value
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}{name} must be a number, got {value!r}")
            if type(default) is int and float(value) != int(value):
                raise ConfigError(f"{where}{name} must be an integer, got {value!r}")
            kwargs[name] = type(default)(value)
        else:
            kwargs[name] = "" if value is None else str(value)
    return cls(**kwargs)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = value


def read_config_mapping(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = (),
                        error: type[Exception] = ConfigError) -> dict[str, Any]:
    """A YAML config file (optional) as a mapping, with `key=value` overrides applied (values parsed as YAML,
    dotted keys reach into sections). Every problem is an `error` naming the file or the override: the one
    reader behind the SFT, RL and toy pipeline configs."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f)
        except FileNotFoundError:
            raise error(f"config file not found: {path}") from None
        except OSError as e:
            raise error(f"cannot read config file {path}: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise error(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
        if raw is None:
            raise error(f"{path}: the config file is empty (expected a mapping of config keys)")
        if not isinstance(raw, dict):
            raise error(f"{path}: expected a mapping at the top level")
    for item in overrides:
        if "=" not in item:
            raise error(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        try:
            _set_dotted(raw, key.strip(), yaml.safe_load(text) if text.strip() else "")
        except ConfigError as e:
            raise error(str(e)) from None
        except yaml.YAMLError as e:
            raise error(f"override {item!r}: not valid YAML: {' '.join(str(e).split())}") from None
    return raw


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> SFTConfig:
    """YAML file (optional) + `key=value` overrides → validated `SFTConfig`."""
    raw = read_config_mapping(path, overrides)
    cfg = _build(SFTConfig, raw, "")
    validate(cfg)
    return cfg


def _check_ranges(cfg: SFTConfig) -> None:
    """Numbers the run would reject later, or silently misuse (a negative learning rate ascends)."""
    o, d, c = cfg.optim, cfg.data, cfg.checkpoint
    rules = [
        ("optim.lr", o.lr, o.lr > 0 and math.isfinite(o.lr), "a positive number"),
        ("optim.end_lr_ratio", o.end_lr_ratio, 0 <= o.end_lr_ratio <= 1, "in [0, 1]"),
        ("optim.weight_decay", o.weight_decay, 0 <= o.weight_decay < math.inf, "a finite number >= 0"),
        ("optim.b1", o.b1, 0 <= o.b1 < 1, "in [0, 1)"),
        ("optim.b2", o.b2, 0 <= o.b2 < 1, "in [0, 1)"),
        ("optim.eps", o.eps, 0 < o.eps < math.inf, "a positive number"),
        ("optim.grad_clip", o.grad_clip, 0 <= o.grad_clip < math.inf, "a finite number >= 0 (0 disables)"),
        ("epochs", cfg.epochs, 0 < cfg.epochs < math.inf, "a positive number"),
        ("max_steps", cfg.max_steps, cfg.max_steps >= 0, ">= 0 (0: from epochs)"),
        ("seed", cfg.seed, cfg.seed >= 0, ">= 0"),
        ("log_every", cfg.log_every, cfg.log_every >= 1, ">= 1"),
        ("data.max_length", d.max_length, d.max_length >= 1, ">= 1"),
        ("data.vocab_remap", d.vocab_remap, d.vocab_remap >= 0, ">= 0 (0: off)"),
        ("checkpoint.every", c.every, c.every >= 0, ">= 0 (0: only at the end)"),
        ("checkpoint.keep", c.keep, c.keep >= 1, ">= 1"),
    ]
    for name, value, ok, want in rules:
        if not ok:
            raise ConfigError(f"{name} must be {want}, got {value}")
    for name in ("model", "output_dir"):
        if not getattr(cfg, name).strip():
            raise ConfigError(f"{name} is not set")


def validate(cfg: SFTConfig) -> None:
    """Values alone (no file is read): `check_run_inputs` in `train.cli` checks what they point at."""
    _check_ranges(cfg)
    if cfg.remat not in ("none", "full", "dots"):
        raise ConfigError(f"remat must be none|full|dots, got {cfg.remat!r}")
    if cfg.optim.schedule not in ("linear", "cosine", "constant"):
        raise ConfigError(f"optim.schedule must be linear|cosine|constant, got {cfg.optim.schedule!r}")
    if cfg.data.mode not in ("step", "trajectory"):
        raise ConfigError(f"data.mode must be step|trajectory, got {cfg.data.mode!r}")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype must be float32|bfloat16, got {cfg.dtype!r}")
    sizes = (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh sizes must be positive with at most one -1, got {sizes}")
    if cfg.data.batch_size < 1 or cfg.data.grad_accum < 1:
        raise ConfigError("data.batch_size and data.grad_accum must be >= 1")
    if not 0.0 <= cfg.optim.warmup_ratio < 1.0:
        raise ConfigError(f"optim.warmup_ratio must lie in [0, 1), got {cfg.optim.warmup_ratio}")
    if cfg.loss_chunk < 1:
        raise ConfigError("loss_chunk must be >= 1")
    buckets = cfg.data.buckets
    if (not buckets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets)
            or len(set(buckets)) != len(buckets)):
        raise ConfigError(f"data.buckets must be distinct positive integers, got {list(buckets)}")
    if cfg.data.workers < 0:
        raise ConfigError(f"data.workers must be >= 0, got {cfg.data.workers}")


def resolved(cfg: SFTConfig) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))


def run_config_command(args: Any, prog: str, *, load: Callable[[Any, Any], Any], check: Callable[[Any], None],
                       resolve: Callable[[Any], dict[str, Any]], run: Callable[[Any], str]) -> int:
    """A training command's shape: ``--config`` + ``key=value`` overrides loaded by ``load`` and checked by ``check``
    (a ConfigError exits 2 with one ``prog: error:`` line), printed resolved with ``--dry-run``, else trained by
    ``run(cfg)``, whose one-line summary is printed."""
    import logging

    from omniagent_jax.agent.cli import report_usage_error

    try:
        cfg = load(args.config, args.overrides)
        check(cfg)
    except ConfigError as e:
        return report_usage_error(prog, e)
    if args.dry_run:
        print(yaml.safe_dump(resolve(cfg), sort_keys=False), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(run(cfg))
    return 0
