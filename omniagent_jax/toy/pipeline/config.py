"""The toy pipeline's configuration (``configs/toy/pipeline.yaml`` plus ``key=value`` overrides)."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from omniagent_jax.toy import settings
from omniagent_jax.toy.reading import LOG_LOOKS
from omniagent_jax.train.config import read_config_mapping

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[3] / "configs" / "toy" / "pipeline.yaml"


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    """The pipeline's flags: ``--config`` and ``key=value`` overrides."""
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="pipeline YAML (default configs/toy/pipeline.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. train_tasks=40 'sft=[max_steps=5]'")


class PipelineError(ValueError):
    """A bad pipeline config, override, or stage input; the message names the key or file."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    run_dir: str = "runs/toy"
    seed: int = 0
    train_tasks: int = 600
    test_tasks: int = 100
    data_workers: int = 2  # processes rendering and checking videos
    sft_config: str = "configs/toy/sft.yaml"
    rl_config: str = "configs/toy/taura.yaml"
    sft: tuple[str, ...] = ()  # key=value overrides of the SFT config
    rl: tuple[str, ...] = ()  # key=value overrides of the RL config
    # The reading curriculum before SFT (toy.reading; docs/toy.md §5): steps of one-frame rows (batch 16), of word
    # rows (batch 16; off by default), of label rows (batch 8; off by default: 23 min for 3,000 steps, no gain in score
    # yet), of copy rows (batch 32; off by default: text-only rows erase the frame reading), of frame-log rows (batch
    # 8), then of agent-layout rows (batch 8; off by default), each from the checkpoint before; 0 skips a phase.
    read_frame_steps: int = 1000
    read_frame_words: bool = False  # one-frame rows' output the word alone (`magenta`), no label to copy first
    read_word_steps: int = 0  # then looks of 12 frames whose output is their words alone (batch 16)
    read_label_steps: int = 0
    read_copy_steps: int = 0
    read_log_steps: int = 800
    read_log_looks: str = "expert"  # the log phase's looks: the expert's, or around the event (toy.reading.LOG_LOOKS)
    read_word_looks: str = "expert"  # the word phase's looks (toy.reading.LOG_LOOKS)
    read_agent_steps: int = 0
    read_rows_per_task: int = 12
    eval_max_new_tokens: int = settings.MAX_NEW_TOKENS
    eval_max_live: int = 16
    # The untied output head starts as the input embedding's transpose: a token copied from the context (a frame's
    # time, the duration) then maps back to itself from the first step, which an untied random head must learn per
    # number token (each one is rare).
    head_from_embeddings: bool = True

    @property
    def root(self) -> pathlib.Path:
        """The run directory, absolute (orbax refuses relative checkpoint paths)."""
        return pathlib.Path(self.run_dir).resolve()


def load_pipeline_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """YAML file (optional) + ``key=value`` overrides (values parsed as YAML) -> a checked :class:`PipelineConfig`."""
    raw = read_config_mapping(path, overrides, error=PipelineError)
    fields = {f.name: f for f in dataclasses.fields(PipelineConfig)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise PipelineError(f"unknown pipeline key(s) {unknown}; known: {sorted(fields)}")
    for key in ("head_from_embeddings", "read_frame_words"):
        if key in raw and not isinstance(raw[key], bool):
            raise PipelineError(f"{key} must be true or false, got {raw[key]!r}")
    for key in ("sft", "rl"):
        if key in raw:
            value = raw[key] or []
            if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
                raise PipelineError(f"{key} must be a list of key=value strings, got {value!r}")
            raw[key] = tuple(value)
    for key in ("seed", "train_tasks", "test_tasks", "data_workers", "eval_max_new_tokens", "eval_max_live",
                "read_agent_steps", "read_copy_steps", "read_frame_steps", "read_label_steps", "read_log_steps",
                "read_rows_per_task", "read_word_steps"):
        if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool)):
            raise PipelineError(f"{key} must be an integer, got {raw[key]!r}")
    for key in ("read_log_looks", "read_word_looks"):
        if key in raw and raw[key] not in LOG_LOOKS:
            raise PipelineError(f"{key} must be one of {sorted(LOG_LOOKS)}, got {raw[key]!r}")
    cfg = PipelineConfig(**raw)
    for key in ("train_tasks", "test_tasks", "data_workers", "eval_max_new_tokens", "eval_max_live", "read_rows_per_task"):
        if getattr(cfg, key) < 1:
            raise PipelineError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    for key in ("sft_config", "rl_config"):
        if not pathlib.Path(getattr(cfg, key)).is_file():
            raise PipelineError(f"{key} {getattr(cfg, key)} not found")
    for key in ("read_agent_steps", "read_copy_steps", "read_frame_steps", "read_label_steps", "read_log_steps",
                "read_word_steps"):
        if getattr(cfg, key) < 0:
            raise PipelineError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.root.is_file():
        raise PipelineError(f"run_dir {cfg.run_dir} is a file")
    return cfg
