"""RL run configuration (`configs/rl/*.yaml`, docs/training.md §10.6): frozen dataclasses, `key=value`
overrides, unknown keys refused — the SFT config's machinery (`train/config.py`) over RL's sections."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from omniagent_jax.agent import rewards
from omniagent_jax.agent.limits import DEFAULT_MAX_PROMPT_TOKENS, RL_MAX_STEPS
from omniagent_jax.train.config import (
    CheckpointConfig,
    ConfigError,
    MeshConfig,
    OptimConfig,
    SFTConfig,
    _build,
    read_config_mapping,
)

# The question types RL trains on (FF needs a judge: eval only, docs/protocol.md §6).
RL_TYPES = ("MCQ", "TR", "NUM", "SIZE")


@dataclasses.dataclass(frozen=True)
class RLDataConfig:
    train_file: str = ""  # RL JSONL (docs/protocol.md §7.1)
    data_root: str = "."  # each row's `video` is resolved under this directory
    # Prompts per step by major question type ("MCQ=20", "TR=8", "SIZE=4"); empty: the shuffled rows in order.
    mix: tuple[str, ...] = ()
    shuffle: bool = True


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    prompts: int = 32  # prompts per step (ignored with data.mix: the mix's total)
    n: int = 8  # rollouts per prompt (a GRPO group)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_new_tokens: int = 4096  # per turn
    # The paged engine the rollouts run on.
    page_size: int = 16
    num_pages: int = 4096
    max_batch: int = 64
    decode_steps: int = 8
    prefill_chunk: int = 512
    max_live: int = 256  # episodes in flight in the driver
    workers: int = 8  # environment threads (media decoding)


@dataclasses.dataclass(frozen=True)
class EnvSection:
    max_steps: int = RL_MAX_STEPS
    dynamic_steps: bool = True
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS  # 0: no token limit
    max_frames: int = 60
    max_audio: float = 300.0
    max_clip: float = 60.0
    strict_confidence: bool = True  # the reference's STRICT_CONFIDENCE_CHECK during RL
    mcq_mode: str = "strict"
    system_prompt_file: str = ""  # empty: the default OTA system prompt


@dataclasses.dataclass(frozen=True)
class AlgoConfig:
    taura: bool = True  # off: plain GRPO (the only difference between configs/rl/taura.yaml and grpo.yaml)
    taura_entropy: str = "trainer"  # trainer: the loss's own forward (stop_gradient) | sampler: the engine's
    retry_on_format_error: bool = True  # drop invalid, non-terminal turns from the batch
    ppo_epochs: int = 1
    mini_batches: int = 1  # optimizer steps per rollout batch per epoch (split by group)
    clip_low: float = 0.2
    clip_high: float = 0.3
    dual_clip: float = 3.0
    is_cap: float = 2.0  # truncated IS weight min(π_old/π_rollout, is_cap); 0: off
    kl: str = "none"  # none | k1 | k3 (against the initial policy)
    kl_coef: float = 0.0
    grpo_eps: float = 1e-6
    taura_eps: float = 1e-8
    zero_advantages: bool = False  # ablation: every advantage 0 (nothing to learn from)


@dataclasses.dataclass(frozen=True)
class RLConfig:
    model: str = "tiny"  # preset, configs/model/*.yaml, or a checkpoint directory
    init: str = ""  # the SFT checkpoint to start from (its tokenizer too); empty: random (tests only)
    dtype: str = "float32"
    remat: str = "none"
    loss_chunk: int = 1024
    steps: int = 100  # RL steps (rollout batches)
    seed: int = 42
    output_dir: str = "runs/rl"
    log_every: int = 1
    progress: bool = True
    rows_per_micro: int = 8  # rows per micro-batch (padded with empty rows: fixed shapes)
    buckets: tuple[int, ...] = (1024, 4096, 16384, 69632)  # padded row lengths: one compile each
    # The toy two-turn bandit task (train/rl/bandit.py) is built in this directory if missing, and the
    # run's model, init and data come from it (configs/rl/tiny.yaml: a CPU run from a clean checkout).
    bandit_dir: str = ""
    mesh: MeshConfig = MeshConfig()
    optim: OptimConfig = OptimConfig(lr=1e-6, schedule="constant", warmup_ratio=0.0, weight_decay=0.01, grad_clip=1.0)
    data: RLDataConfig = RLDataConfig()
    rollout: RolloutConfig = RolloutConfig()
    env: EnvSection = EnvSection()
    algo: AlgoConfig = AlgoConfig()
    checkpoint: CheckpointConfig = CheckpointConfig(every=10)

    @property
    def prompts_per_step(self) -> int:
        return sum(n for _, n in parse_mix(self.data.mix)) if self.data.mix else self.rollout.prompts

    def model_setup(self) -> SFTConfig:
        """The fields `train/setup.py` reads, as the SFT config it takes."""
        return SFTConfig(model=self.model, init=self.init, dtype=self.dtype, seed=self.seed, optim=self.optim)


def parse_mix(mix: tuple[str, ...]) -> list[tuple[str, int]]:
    """("MCQ=20", "TR=8") → [("MCQ", 20), ("TR", 8)]; ConfigError naming a bad entry."""
    out = []
    for item in mix:
        kind, sep, count = str(item).partition("=")
        kind = kind.strip().upper()
        if not sep or kind not in RL_TYPES or not count.strip().isdigit() or int(count) < 1:
            raise ConfigError(f"data.mix entry {item!r} must be TYPE=COUNT with TYPE one of {list(RL_TYPES)} "
                              "and COUNT >= 1")
        out.append((kind, int(count)))
    if len({k for k, _ in out}) != len(out):
        raise ConfigError(f"data.mix names a type twice: {list(mix)}")
    return out


def load_rl_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RLConfig:
    """YAML file (optional) + `key=value` overrides → validated `RLConfig`."""
    raw = read_config_mapping(path, overrides)
    cfg = _build(RLConfig, raw, "")
    validate(cfg)
    return cfg


def validate(cfg: RLConfig) -> None:
    """Values alone (nothing is read)."""
    r, a, e, o = cfg.rollout, cfg.algo, cfg.env, cfg.optim
    rules = [
        ("steps", cfg.steps >= 1, ">= 1"), ("seed", cfg.seed >= 0, ">= 0"), ("log_every", cfg.log_every >= 1, ">= 1"),
        ("loss_chunk", cfg.loss_chunk >= 1, ">= 1"), ("rows_per_micro", cfg.rows_per_micro >= 1, ">= 1"),
        ("rollout.prompts", r.prompts >= 1, ">= 1"), ("rollout.n", r.n >= 1, ">= 1"),
        ("rollout.temperature", math.isfinite(r.temperature) and r.temperature >= 0, "a finite number >= 0"),
        ("rollout.top_p", 0 < r.top_p <= 1, "in (0, 1]"), ("rollout.top_k", r.top_k >= 0, ">= 0 (0: off)"),
        ("rollout.max_new_tokens", r.max_new_tokens >= 1, ">= 1"),
        ("rollout.max_live", r.max_live >= 1, ">= 1"), ("rollout.workers", r.workers >= 1, ">= 1"),
        ("env.max_steps", e.max_steps >= 1, ">= 1"), ("env.max_prompt_tokens", e.max_prompt_tokens >= 0, ">= 0 (0: off)"),
        ("env.mcq_mode", e.mcq_mode in rewards.MCQ_MODES, f"one of {list(rewards.MCQ_MODES)}"),
        ("algo.taura_entropy", a.taura_entropy in ("trainer", "sampler"), "trainer|sampler"),
        ("algo.ppo_epochs", a.ppo_epochs >= 1, ">= 1"), ("algo.mini_batches", a.mini_batches >= 1, ">= 1"),
        ("algo.clip_low", 0 <= a.clip_low < 1, "in [0, 1)"), ("algo.clip_high", a.clip_high >= 0, ">= 0"),
        ("algo.dual_clip", a.dual_clip > 1, "> 1"), ("algo.is_cap", a.is_cap >= 0, ">= 0 (0: off)"),
        ("algo.kl", a.kl in ("none", "k1", "k3"), "none|k1|k3"), ("algo.kl_coef", a.kl_coef >= 0, ">= 0"),
        ("algo.grpo_eps", a.grpo_eps > 0, "> 0"), ("algo.taura_eps", a.taura_eps > 0, "> 0"),
        ("optim.lr", o.lr > 0 and math.isfinite(o.lr), "a positive number"),
        ("dtype", cfg.dtype in ("float32", "bfloat16"), "float32|bfloat16"),
        ("remat", cfg.remat in ("none", "full", "dots"), "none|full|dots"),
        ("buckets", bool(cfg.buckets) and all(isinstance(b, int) and b >= 1 for b in cfg.buckets), "positive integers"),
    ]
    for name, ok, want in rules:
        if not ok:
            value = getattr(cfg, name) if "." not in name else getattr(getattr(cfg, name.split(".")[0]), name.split(".")[1])
            raise ConfigError(f"{name} must be {want}, got {value!r}")
    if a.kl != "none" and a.kl_coef == 0:
        raise ConfigError(f"algo.kl={a.kl} needs algo.kl_coef > 0")
    if cfg.data.mix:
        parse_mix(cfg.data.mix)
    # The SFT config's own checks over the shared fields (optimizer ranges, mesh sizes, schedule).
    from omniagent_jax.train.config import validate as validate_sft

    validate_sft(dataclasses.replace(cfg.model_setup(), mesh=cfg.mesh, checkpoint=cfg.checkpoint, output_dir=cfg.output_dir))


def resolved(cfg: RLConfig) -> dict[str, Any]:
    from omniagent_jax.train.config import resolved as plain

    return plain(cfg)
