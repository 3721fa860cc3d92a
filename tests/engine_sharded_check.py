"""Run by tests/test_engine_sharded.py in a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the
caller): single-device vs tensor-2 / tensor-8 engines on a tiny 8-head / 2-KV-head thinker, then trainer
weights (FSDP 8) resharded into a tensor-4 engine with a per-device memory probe. Prints one JSON line."""

from __future__ import annotations

import json
import os
from collections import defaultdict

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from omniagent_jax.engine import Engine, Request, SamplingParams  # noqa: E402
from omniagent_jax.engine.placement import engine_mesh  # noqa: E402
from omniagent_jax.model import Thinker  # noqa: E402
from omniagent_jax.model.config import load_config, with_overrides  # noqa: E402
from omniagent_jax.model.sharding import state_shardings  # noqa: E402
from omniagent_jax.train.config import MeshConfig  # noqa: E402
from omniagent_jax.train.mesh import is_sharded, make_mesh  # noqa: E402

SPECIAL = ("audio_token_id", "image_token_id", "video_token_id", "audio_start_token_id", "audio_end_token_id",
           "vision_start_token_id", "vision_end_token_id", "pad_token_id")
# 8 heads / 2 KV heads; a 4k vocabulary (its special ids at the top) keeps the compiles short.
CONFIG = with_overrides(load_config("tiny"), {"text": {"num_attention_heads": 8, "mrope_section": [1, 1, 2], "vocab_size": 4096},
                                              "stop_token_ids": [0], **{f: 4080 + i for i, f in enumerate(SPECIAL)}})
ENGINE = dict(page_size=8, num_pages=64, max_batch=4, decode_steps=4)
SAMPLING = SamplingParams(temperature=0.0, max_new_tokens=9, logprobs=True)  # 1 + 4 + 4: one decode shape


def prompts() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A first wave, and a second whose prompts share the first's 24-token prefix (three full pages to reuse).
    Both waves prefill two rows of at most 32 new tokens: one prefill shape, one compile."""
    rng = np.random.default_rng(0)
    shared = rng.integers(1, 4000, 24)
    first = [np.concatenate([shared, rng.integers(1, 4000, 5)]), rng.integers(1, 4000, 30)]
    second = [np.concatenate([shared, rng.integers(1, 4000, n)]) for n in (20, 26)]
    return first, second


def run(engine: Engine) -> list[dict]:
    out = []
    for wave in prompts():
        for c in engine.generate([Request(p, SAMPLING) for p in wave]):
            out.append({"tokens": c.tokens, "logprobs": c.logprobs, "cached": c.cached_tokens, "reason": c.finish_reason})
    return out


def spec(x: jax.Array) -> list:
    return [str(a) for a in x.sharding.spec] if hasattr(x.sharding, "spec") else []


def per_device_bytes(arrays) -> dict[int, int]:
    """Bytes per device of `arrays`, from each one's sharding (every device of it holds one shard)."""
    usage: dict[int, int] = defaultdict(int)
    for a in arrays:
        if not a.is_deleted():
            shard = int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
            for device in a.sharding.device_set:
                usage[device.id] += shard
    return usage


def main() -> None:
    assert jax.device_count() == 8
    model = Thinker(CONFIG, rngs=nnx.Rngs(0))
    report: dict = {"single": run(Engine(model, **ENGINE))}
    for tp in (2, 8):
        engine = Engine(model, mesh=engine_mesh(tp), **ENGINE)
        attn = engine.model.model.layers[0].self_attn
        report[f"tp{tp}"] = run(engine)
        report[f"tp{tp}_layout"] = {
            "q_proj": spec(attn.q_proj.kernel[...]), "q_sharded": is_sharded(attn.q_proj.kernel[...]),
            "k_proj": spec(attn.k_proj.kernel[...]),
            "mlp_sharded": is_sharded(engine.model.model.layers[0].mlp.up_proj.kernel[...]),
            "lm_head_sharded": is_sharded(engine.model.lm_head.kernel[...]),
            "pages": spec(engine.k_pages), "pages_sharded": is_sharded(engine.k_pages), "devices": len(engine.k_pages.devices()),
        }
        del engine

    # Trainer weights on an FSDP-8 mesh (other values than the engine's), synced into a tensor-4 engine.
    graphdef, state = nnx.split(Thinker(CONFIG, rngs=nnx.Rngs(7)))
    fsdp = jax.tree.leaves(state_shardings(state, make_mesh(MeshConfig(data=1, fsdp=8, tensor=1))))
    trainer = nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), [
        jax.device_put(x, s) for x, s in zip(jax.tree.leaves(state), fsdp)]))  # the trainer's layout
    params = nnx.state(trainer, nnx.Param)
    engine = Engine(model, mesh=engine_mesh(4), **ENGINE)
    run(engine)  # fills the prefix cache, which the sync must drop
    report["cache_before_sync"] = len(engine.pool.prefix.by_hash)
    old = [x for x in jax.tree.leaves(nnx.state(engine.model, nnx.Param))]
    # Every array alive before the sync but the engine's weights (the trainer's, the pages, the first model) is
    # held on to and left out; so are one-device arrays (shard views `.data` makes: the engine's are on 4 devices).
    engine_ids = {id(x) for x in old}
    kept = [a for a in jax.live_arrays() if id(a) not in engine_ids]
    base_ids = {id(a) for a in kept}
    peak: dict[int, int] = defaultdict(int)

    def probe(_: int) -> None:
        arrays = [a for a in jax.live_arrays() if id(a) not in base_ids and len(a.sharding.device_set) > 1]
        for d, n in per_device_bytes(arrays).items():
            peak[d] = max(peak[d], n)

    engine.update_weights(params, on_tensor=probe)
    theirs = {(s.device.id, s.data.unsafe_buffer_pointer()) for x in jax.tree.leaves(params) for s in x.addressable_shards}
    report["buffers_shared_with_trainer"] = sum((s.device.id, s.data.unsafe_buffer_pointer()) in theirs
                                                for x in jax.tree.leaves(nnx.state(engine.model, nnx.Param))
                                                for s in x.addressable_shards)
    report["cache_after_sync"] = len(engine.pool.prefix.by_hash)
    report["synced"] = run(engine)
    report["fresh"] = run(Engine(trainer, mesh=engine_mesh(4), **ENGINE))
    leaves = jax.tree.leaves(params)
    report["model_bytes"] = sum(x.nbytes for x in leaves)
    report["largest_bytes"] = max(x.nbytes for x in leaves)
    report["peak_sync_bytes"] = max(peak.values())
    report["trainer_fsdp_sharded"] = is_sharded(trainer.lm_head.kernel[...])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
