"""Vision and audio towers: JAX (jit) vs PyTorch eager (transformers), same weights, same inputs, CPU.

Config: vision depth 8 (full attention at blocks 3 and 7), hidden 256, 4 heads; audio 4 layers,
d_model 256, 4 heads; both project to 512. Inputs: one 448×448 image (1024 patches) plus a 4-frame
224×224 video, and 10 s + 3.7 s of audio. Prints medians and the speed-up; outputs must agree.

    .venv/bin/python benchmarks/towers.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from common import median_seconds, reference_and_ours

from omniagent_jax.model.config import tiny, with_overrides

CONFIG = with_overrides(
    tiny(),
    {
        "text": {"hidden_size": 512, "intermediate_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 2,
                 "mrope_section": [8, 12, 12]},
        "vision": {"depth": 8, "hidden_size": 256, "num_heads": 4, "intermediate_size": 512,
                   "fullatt_block_indexes": [3, 7], "out_hidden_size": 512},
        "audio": {"d_model": 256, "encoder_layers": 4, "encoder_attention_heads": 4, "encoder_ffn_dim": 1024, "output_dim": 512},
    },
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ref, ours = reference_and_ours(CONFIG)

    grid = np.array([[1, 32, 32], [2, 16, 16]])
    pixels = rng.standard_normal((int(grid.prod(axis=1).sum()), 1176)).astype(np.float32)
    lengths = [1000, 370]
    feats = rng.standard_normal((2, 128, 1000)).astype(np.float32)
    fmask = (np.arange(1000)[None] < np.array(lengths)[:, None]).astype(np.int64)

    def jax_vision():
        return np.asarray(ours.encode_images(pixels, grid))

    def torch_vision():
        with torch.no_grad():
            return ref.model.visual(torch.as_tensor(pixels), grid_thw=torch.as_tensor(grid)).pooler_output.numpy()

    def jax_audio():
        return np.asarray(ours.encode_audios(feats, fmask))

    def torch_audio():
        with torch.no_grad():
            out = ref.get_audio_features(torch.as_tensor(feats), feature_attention_mask=torch.as_tensor(fmask))
            return out.pooler_output.numpy()

    print(f"CPU threads: {os.cpu_count()}; fp32; median of {args.repeats}")
    for name, ours_fn, ref_fn in (("vision tower", jax_vision, torch_vision), ("audio tower", jax_audio, torch_audio)):
        t0 = time.perf_counter()
        got = ours_fn()
        first = time.perf_counter() - t0
        diff = float(np.abs(got - ref_fn()).max())
        j, t = median_seconds(ours_fn, args.repeats), median_seconds(ref_fn, args.repeats)
        print(f"{name:12s}: JAX jit {j * 1000:8.1f} ms (first call incl. compile {first:.1f} s) | "
              f"PyTorch eager {t * 1000:8.1f} ms | speed-up {t / j:.2f}x | max |Δ| {diff:.1e}")


if __name__ == "__main__":
    main()
