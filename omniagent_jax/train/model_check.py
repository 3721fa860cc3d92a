"""The model a training run names, checked without reading a tensor (`omniagent train sft` and `train rl`)."""

from __future__ import annotations

from pathlib import Path

from omniagent_jax.train.config import ConfigError, SFTConfig


def check_model(cfg: SFTConfig) -> None:
    """The model a preset or a readable config, the `init` checkpoint's config and headers of that config;
    ConfigError naming the key."""
    import yaml

    from omniagent_jax.model.config import PRESETS
    from omniagent_jax.model.loading import open_params
    from omniagent_jax.train import setup

    if cfg.model not in PRESETS and not Path(cfg.model).exists():
        raise ConfigError(f"model {cfg.model!r} is neither a preset ({', '.join(sorted(PRESETS))}) "
                          "nor an existing model YAML file or checkpoint directory")
    try:
        setup.model_config(cfg)
    except (ValueError, TypeError, OSError, yaml.YAMLError) as e:  # in the file `model` names, or vocab_remap
        raise ConfigError(f"model {cfg.model}: {e}") from None
    if not cfg.init:
        return
    try:
        found = open_params(cfg.init).config  # config and weight headers: no tensor is read
        setup.check_init_config(cfg, found)
    except (FileNotFoundError, ValueError) as e:  # CheckpointError is a ValueError
        raise ConfigError(f"init: {e}") from None
