"""Text-decoder forward: JAX (jit) vs PyTorch eager (transformers' thinker), same weights, same CPU.

Config: 4 layers, hidden 512, 8 heads / 2 KV heads, batch 4 × 512 tokens (one left-padded row),
fp32, full logits. Prints the median time of each and the speed-up; the logits must agree.

    .venv/bin/python benchmarks/decoder_forward.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
import torch_ref  # noqa: E402

from omniagent_jax.model import Thinker  # noqa: E402
from omniagent_jax.model.config import tiny, with_overrides  # noqa: E402

CONFIG = with_overrides(
    tiny(),
    {
        "text": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 8,
                 "num_key_value_heads": 2, "mrope_section": [8, 12, 12]},
        "vision": {"out_hidden_size": 512},
        "audio": {"output_dim": 512},
    },
)
BATCH, SEQ = 4, 512


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 151_000, (BATCH, SEQ))
    mask = np.ones((BATCH, SEQ), np.int64)
    mask[1, :100] = 0

    ref = torch_ref.build_reference(CONFIG, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        torch_ref.save_release_layout(ref, tmp, num_shards=1)
        ours = Thinker.from_pretrained(tmp, dtype=jnp.float32)

    forward = jax.jit(lambda m, i, a: m(i, a))
    t0 = time.perf_counter()
    jax_logits = forward(ours, ids, mask).block_until_ready()
    compile_s = time.perf_counter() - t0
    t_ids, t_mask = torch.as_tensor(ids), torch.as_tensor(mask)

    def torch_forward():
        with torch.no_grad():
            return ref(input_ids=t_ids, attention_mask=t_mask).logits

    torch_logits = torch_forward().numpy()
    diff = float(np.abs(np.asarray(jax_logits) - torch_logits)[mask == 1].max())

    jax_times = timed(lambda: forward(ours, ids, mask).block_until_ready(), args.repeats)
    torch_times = timed(torch_forward, args.repeats)
    j, t = statistics.median(jax_times), statistics.median(torch_times)
    print(f"config: 4 layers, hidden 512, heads 8/2, batch {BATCH} x seq {SEQ}, fp32, vocab {CONFIG.text.vocab_size}")
    print(f"CPU threads: {os.cpu_count()}; max |Δlogit| = {diff:.2e}")
    print(f"JAX jit forward     : {j * 1000:8.1f} ms (median of {args.repeats}; first call incl. compile {compile_s:.1f} s)")
    print(f"PyTorch eager       : {t * 1000:8.1f} ms (median of {args.repeats})")
    print(f"speed-up (torch/jax): {t / j:.2f}x")


if __name__ == "__main__":
    main()
