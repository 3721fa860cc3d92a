"""Run set-up shared by the trainer, the tests and the benchmark: model config (with the optional
small test vocabulary), sharded model creation, and the split into trainable / frozen parameters."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from omniagent_jax.model import Thinker
from omniagent_jax.model.config import ThinkerConfig, load_config
from omniagent_jax.processing import tokens
from omniagent_jax.train import mesh as mesh_lib
from omniagent_jax.train import optim
from omniagent_jax.train.config import SFTConfig
from omniagent_jax.train.sft_data import remap_ids  # noqa: F401  (numpy; re-exported)

_SPECIAL_FIELDS = (
    "audio_token_id",
    "image_token_id",
    "video_token_id",
    "audio_start_token_id",
    "audio_end_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
)


def model_config(cfg: SFTConfig) -> ThinkerConfig:
    """The thinker config of a run; with `data.vocab_remap` the vocabulary shrinks and the special
    ids the model reads move with `remap_ids`."""
    base = load_config(cfg.model)
    v = cfg.data.vocab_remap
    if not v:
        return base
    text = dataclasses.replace(base.text, vocab_size=v)
    specials = {f: int(remap_ids(np.asarray(getattr(base, f)), v)) for f in _SPECIAL_FIELDS}
    return dataclasses.replace(base, text=text, **specials)


def build_model(cfg: SFTConfig, mesh: Mesh) -> Thinker:
    """Random init (each parameter created in its sharding) or `cfg.init` weights placed per tensor."""
    dtype = mesh_lib.dtype_of(cfg.dtype)
    mcfg = model_config(cfg)
    if not cfg.init:
        return mesh_lib.create_sharded(lambda: Thinker(mcfg, dtype=dtype, rngs=nnx.Rngs(cfg.seed)), mesh)
    from omniagent_jax.model.params import load_thinker

    # The loader reads tensor by tensor into host memory; each goes to its shards with one
    # device_put (no replicated device copy). A sharded orbax restore is the next step (report).
    loaded = load_thinker(cfg.init, dtype=dtype)
    if loaded.config != mcfg:
        raise ValueError(f"init checkpoint {cfg.init} does not match model {cfg.model!r}")
    graphdef, state = nnx.split(loaded)
    shardings = mesh_lib.state_shardings(state, mesh)
    return nnx.merge(graphdef, jax.device_put(state, shardings))


def split(model: Thinker, cfg: SFTConfig):
    """(graphdef, trainable, frozen, other) by the run's frozen patterns."""
    return optim.split_model(model, cfg.optim.frozen)
