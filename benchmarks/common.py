"""Shared scaffolding of the model benchmarks: the reference and our port on the same weights, and timing."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
import torch_ref  # noqa: E402

from omniagent_jax.model import Thinker  # noqa: E402
from omniagent_jax.model.config import ThinkerConfig, tiny, with_overrides  # noqa: E402


def text_config(layers: int, **text: int) -> ThinkerConfig:
    """A tiny thinker with a hidden-512 decoder of `layers` layers (8 heads / 2 KV heads), real vocabulary."""
    return with_overrides(
        tiny(),
        {
            "text": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": layers, "num_attention_heads": 8,
                     "num_key_value_heads": 2, "mrope_section": [8, 12, 12], **text},
            "vision": {"out_hidden_size": 512},
            "audio": {"output_dim": 512},
        },
    )


def reference_and_ours(config: ThinkerConfig, seed: int = 0):
    """(transformers thinker, our Thinker loaded from the checkpoint the reference saved): same weights."""
    torch.set_num_threads(os.cpu_count() or 1)
    ref = torch_ref.build_reference(config, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        torch_ref.save_release_layout(ref, tmp, num_shards=1)
        ours = Thinker.from_pretrained(tmp, dtype=jnp.float32)
    return ref, ours


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
