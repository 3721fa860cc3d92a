"""The training forward: token (+ precomputed media) embeddings → decoder → final hidden states.

It runs the model's own layers but drives the layer loop itself so that each decoder layer can be
rematerialised (`remat`: none | full | dots) without touching the inference code path; a test pins
it to `Thinker.decode`. Media embeddings come in precomputed (the towers are frozen by default and
run outside the differentiated step, see `media.py`) and replace the placeholder positions.
"""

from __future__ import annotations

import jax
from flax import nnx

from omniagent_jax.model.kv_cache import NoCache
from omniagent_jax.model.rope import mrope_cos_sin

REMAT_POLICIES = {
    "full": None,  # save nothing inside a layer: recompute it all in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs, recompute the cheap rest
}


def input_embeddings(model, input_ids: jax.Array, media_embeds: jax.Array | None, media_mask: jax.Array | None) -> jax.Array:
    """Token embeddings with the precomputed media rows over the placeholders (`Thinker.embed_inputs`, as the engine)."""
    return model.embed_inputs(input_ids, media_embeds, media_mask)


def hidden_states(model, embeds: jax.Array, positions: jax.Array, attention_mask: jax.Array, remat: str = "none") -> jax.Array:
    """Final-normed hidden states `[B, T, D]`, equal to `model.decode(embeds, positions, NoCache(mask))`."""
    dec = model.model
    cfg = dec.cfg
    cos, sin = mrope_cos_sin(
        positions, head_dim=cfg.head_dim, theta=cfg.rope_theta, mrope_section=cfg.mrope_section, dtype=embeds.dtype
    )
    cache = NoCache(attention_mask)
    x = embeds
    for i, layer in enumerate(dec.layers):

        def run(layer, x, cos, sin, cache, i=i):
            return layer(x, cos, sin, i, cache)[0]

        if remat != "none":
            run = nnx.remat(run, policy=REMAT_POLICIES[remat])
        with jax.named_scope(f"layer_{i}"):
            x = run(layer, x, cos, sin, cache)
    return dec.norm(x)
