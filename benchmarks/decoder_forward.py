"""Text-decoder forward: JAX (jit) vs PyTorch eager (transformers' thinker), same weights, same CPU.

Config: 4 layers, hidden 512, 8 heads / 2 KV heads, batch 4 × 512 tokens (one left-padded row),
fp32, full logits. Prints the median time of each and the speed-up; the logits must agree.

    .venv/bin/python benchmarks/decoder_forward.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
import torch
from common import median_seconds, reference_and_ours, text_config

CONFIG = text_config(layers=4)
BATCH, SEQ = 4, 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 151_000, (BATCH, SEQ))
    mask = np.ones((BATCH, SEQ), np.int64)
    mask[1, :100] = 0
    ref, ours = reference_and_ours(CONFIG)

    forward = jax.jit(lambda m, i, a: m(i, a))
    t0 = time.perf_counter()
    jax_logits = forward(ours, ids, mask).block_until_ready()
    compile_s = time.perf_counter() - t0
    t_ids, t_mask = torch.as_tensor(ids), torch.as_tensor(mask)

    def torch_forward():
        with torch.no_grad():
            return ref(input_ids=t_ids, attention_mask=t_mask).logits

    diff = float(np.abs(np.asarray(jax_logits) - torch_forward().numpy())[mask == 1].max())
    j = median_seconds(lambda: forward(ours, ids, mask).block_until_ready(), args.repeats)
    t = median_seconds(torch_forward, args.repeats)
    print(f"config: 4 layers, hidden 512, heads 8/2, batch {BATCH} x seq {SEQ}, fp32, vocab {CONFIG.text.vocab_size}")
    print(f"CPU threads: {os.cpu_count()}; max |Δlogit| = {diff:.2e}")
    print(f"JAX jit forward     : {j * 1000:8.1f} ms (median of {args.repeats}; first call incl. compile {compile_s:.1f} s)")
    print(f"PyTorch eager       : {t * 1000:8.1f} ms (median of {args.repeats})")
    print(f"speed-up (torch/jax): {t / j:.2f}x")


if __name__ == "__main__":
    main()
