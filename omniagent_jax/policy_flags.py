"""The JAX policy on the command line: the engine flags every model-running command shares (`run`, `serve`,
`eval`, `sweep`, `collect`, `demo`), their checks, and the loader that builds the engine's policy after them.

A module of its own so the commands' modules (agent, eval, demo) import it without importing the top-level
`omniagent_jax.cli`, which registers them. Without `--model` the loader builds the tiny preset with RANDOM
weights (created once under `$OMNIAGENT_CACHE`), which only exercises the machinery.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

TINY_SEED = 0
# The toy agent `make toy-full` ships (docs/toy.md §5): `make run`'s and the demo's default model.
SHIPPED_AGENT = pathlib.Path(__file__).resolve().parents[1] / "assets" / "toy_agent"
RANDOM_MODEL = "random"  # `--model random`: the tiny preset with random weights, whatever the command's default model


def cache_root() -> pathlib.Path:
    """Where the tiny model and compiled programs are kept: `$OMNIAGENT_CACHE` or ~/.cache/omniagent_jax."""
    return pathlib.Path(os.environ.get("OMNIAGENT_CACHE", pathlib.Path.home() / ".cache" / "omniagent_jax"))


def enable_compilation_cache() -> None:
    """Persists XLA compilations under the cache root, so a second run skips recompiling its shapes."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(cache_root() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def tiny_checkpoint() -> pathlib.Path:
    """The tiny random model as a JAX checkpoint, created on first use under the cache directory."""
    path = cache_root() / f"tiny-random-seed{TINY_SEED}"
    if not (path / "config.json").exists():
        import jax.numpy as jnp
        from flax import nnx

        from omniagent_jax.model import Thinker, config
        from omniagent_jax.model.jax_checkpoint import save_jax_checkpoint

        print(f"creating the tiny random model at {path} (first use)", file=sys.stderr)
        save_jax_checkpoint(Thinker(config.tiny(), dtype=jnp.float32, rngs=nnx.Rngs(TINY_SEED)), path)
    return path


def is_random_model(model: str | None) -> bool:
    """Whether a `--model` value asks for the tiny random model (unset or `random`)."""
    return model is None or model == RANDOM_MODEL


def engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the engine flags (`--model`, `--dtype`, the page pool, batch, decode steps, tensor parallelism)."""
    g = parser.add_argument_group("engine (JAX policy)")
    g.add_argument("--model", default=None, help="HF or converted JAX checkpoint directory, or `random` for the tiny preset "
                   "with random weights (the default, except where a command says otherwise)")
    g.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="parameter dtype (default: the checkpoint's)")
    g.add_argument("--page-size", type=int, default=16, help="KV page size in tokens")
    g.add_argument("--num-pages", type=int, default=2048, help="KV pages in the pool")
    g.add_argument("--max-batch", type=int, default=16, help="sequences decoded together")
    g.add_argument("--decode-steps", type=int, default=8, help="decode steps per dispatch (host work once per this many tokens)")
    g.add_argument("--no-compilation-cache", action="store_true", help="do not keep compiled programs under $OMNIAGENT_CACHE/xla")
    g.add_argument("--tensor-parallel", type=int, default=1, help="shard the engine over this many local devices (heads, MLP)")


def check_engine_args(args: argparse.Namespace) -> None:
    """The engine settings within the ranges the engine takes (UsageError otherwise)."""
    from omniagent_jax.agent.cli import UsageError

    # The page pool reserves page 0 as the null page.
    for flag, value, low in (("--page-size", args.page_size, 1), ("--num-pages", args.num_pages, 2),
                             ("--max-batch", args.max_batch, 1), ("--decode-steps", args.decode_steps, 1)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    tp = getattr(args, "tensor_parallel", 1)
    if tp != 1:
        import jax

        if not 1 <= tp <= jax.local_device_count():
            raise UsageError(f"--tensor-parallel must be in [1, {jax.local_device_count()}] (this process's devices), got {tp}")


def check_model_dir(path: str) -> None:
    """Cheap checks of a checkpoint directory, no tensor read: it exists; its config.json parses; its weight
    files' headers (or the JAX checkpoint's marker and metadata) are sound; its tokenizer and processor
    settings load and agree with the config on the special ids. UsageError naming the file otherwise."""
    from omniagent_jax.agent.cli import UsageError
    from omniagent_jax.model.loading import open_params
    from omniagent_jax.model.safetensors_io import CheckpointError
    from omniagent_jax.processing.processor import OmniProcessor
    from omniagent_jax.processing.qwen_bpe import TokenizerError

    try:
        config = open_params(path).config
        processor = OmniProcessor.from_pretrained(path)  # cached: the load reuses it
        config.check_special_ids(processor.special_ids, source=f"the tokenizer in {path}")
    except (CheckpointError, FileNotFoundError, TokenizerError, ValueError) as e:
        raise UsageError(f"--model {path}: {e}") from None


def load_jax_policy(args: argparse.Namespace, *, temperature: float, top_p: float, top_k: int, max_new_tokens: int):
    """The engine's policy on `--model` (or the tiny random model), after the engine settings and the
    model directory pass their cheap checks. UsageError for bad settings or a checkpoint that fails to load."""
    import jax.numpy as jnp

    from omniagent_jax.agent.cli import UsageError
    from omniagent_jax.engine import SamplingParams
    from omniagent_jax.engine.placement import engine_mesh
    from omniagent_jax.engine.policy import JaxPolicy
    from omniagent_jax.model.safetensors_io import CheckpointError

    check_engine_args(args)
    named = not is_random_model(args.model)
    if named:
        check_model_dir(args.model)
    if not args.no_compilation_cache:
        enable_compilation_cache()
    path = args.model if named else tiny_checkpoint()
    sampling = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens, seed=args.seed)
    tp = getattr(args, "tensor_parallel", 1)
    try:
        policy = JaxPolicy.from_pretrained(
            path, dtype=getattr(jnp, args.dtype) if args.dtype else None, sampling=sampling,
            page_size=args.page_size, num_pages=args.num_pages, max_batch=args.max_batch,
            decode_steps=args.decode_steps, **({"mesh": engine_mesh(tp)} if tp > 1 else {}),
        )
    except CheckpointError as e:  # found while loading: a shape or key mismatch, a tensor cut short
        raise UsageError(f"--model {path}: {e}") from None
    label = str(path) if named else f"tiny preset with RANDOM WEIGHTS ({path}); pass --model for a real checkpoint"
    model = policy.engine.model
    print(f"model: {label} — {model.num_params():,} parameters, {model.dtype}", file=sys.stderr)
    return policy
