"""Run set-up shared by the trainer, the tests and the benchmark: model config (with the optional
small test vocabulary), sharded model creation (random, or loaded onto the shards), the abstract
model a resume restores into, and the split into trainable / frozen parameters."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from omniagent_jax.model.config import ThinkerConfig, load_config
from omniagent_jax.model.thinker import Thinker, abstract_thinker, load_thinker
from omniagent_jax.model.weight_keys import read_config
from omniagent_jax.train import mesh as mesh_lib
from omniagent_jax.train import optim
from omniagent_jax.train.config import SFTConfig
from omniagent_jax.train.sft_data import remap_ids

_SPECIAL_FIELDS = (
    "audio_token_id",
    "image_token_id",
    "video_token_id",
    "audio_start_token_id",
    "audio_end_token_id",
    "vision_start_token_id",
    "vision_end_token_id",
    "pad_token_id",
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
    stops = tuple(int(t) for t in remap_ids(np.asarray(base.stop_token_ids), v))
    return dataclasses.replace(base, text=text, stop_token_ids=stops, **specials)


def build_model(cfg: SFTConfig, mesh: Mesh) -> Thinker:
    """Random init (each parameter created in its sharding) or `cfg.init` weights, each tensor read
    to host and placed straight onto its shards (`load_thinker` with the mesh). An `init` checkpoint
    must have the run's model config: a mismatch is a ValueError naming the differing fields, raised
    before any tensor is read."""
    dtype = mesh_lib.dtype_of(cfg.dtype)
    mcfg = model_config(cfg)
    if not cfg.init:
        return mesh_lib.create_sharded(lambda: Thinker(mcfg, dtype=dtype, rngs=nnx.Rngs(cfg.seed)), mesh)
    check_init_config(cfg, read_config(Path(cfg.init)))
    return load_thinker(cfg.init, dtype, mesh=mesh)


def check_init_config(cfg: SFTConfig, found: ThinkerConfig) -> None:
    """ValueError naming the differing fields unless `found`, the `init` checkpoint's config, is the run's."""
    mcfg = model_config(cfg)
    if found != mcfg:
        differ = [f.name for f in dataclasses.fields(mcfg) if getattr(found, f.name) != getattr(mcfg, f.name)]
        raise ValueError(f"init checkpoint {cfg.init} does not match the run's model config (differs in {differ})")


def abstract_model(cfg: SFTConfig, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
    """(graphdef, trainable, frozen, other) like `split`, every value a `ShapeDtypeStruct` with its
    sharding and no memory behind it: the restore target of a resumed run (nothing is initialised)."""
    abstract = abstract_thinker(model_config(cfg), mesh_lib.dtype_of(cfg.dtype))
    graphdef, *states = optim.split_model(abstract, cfg.optim.frozen)
    return (graphdef, *(mesh_lib.abstract_with_shardings(s, mesh) for s in states))


def split(model: Thinker, cfg: SFTConfig):
    """(graphdef, trainable, frozen, other) by the run's frozen patterns."""
    return optim.split_model(model, cfg.optim.frozen)
