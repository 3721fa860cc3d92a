"""`omniagent` command line: run, eval, train, serve, demo (sub-commands arrive with their issues)."""

from __future__ import annotations

import argparse
import sys


def _cmd_run(args: argparse.Namespace) -> int:
    """Until the inference engine lands: build (or load) a thinker and run one forward on a chat prompt."""
    import time

    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from omniagent_jax.model import Thinker, config as model_config
    from omniagent_jax.processing.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    if args.model:
        model = Thinker.from_pretrained(args.model)
        tokenizer = load_tokenizer(args.model)
        label = args.model
    else:
        model = Thinker(model_config.tiny(), rngs=nnx.Rngs(args.seed))
        tokenizer = load_tokenizer()
        label = "tiny preset, RANDOM WEIGHTS (no checkpoint given)"
    messages = [{"role": "user", "content": [{"type": "text", "text": args.question}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = np.asarray([tokenizer(text)["input_ids"]])
    logits = model(jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)))
    top = np.argsort(-np.asarray(logits[0, -1]))[:5]
    print(f"model: {label} ({model.num_params():,} parameters, {model.dtype})")
    print(f"prompt: {len(ids[0])} tokens; logits {tuple(logits.shape)}")
    print("next-token top-5:", ", ".join(f"{tokenizer.decode([int(t)])!r}" for t in top))
    print(f"done in {time.perf_counter() - t0:.1f}s (the OTA agent loop arrives with the inference engine)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omniagent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the model on one prompt")
    run.add_argument("--model", default=None, help="HF or converted JAX checkpoint directory (default: tiny random model)")
    run.add_argument("--question", default="What happens in this video?")
    run.add_argument("--seed", type=int, default=0)
    run.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
