#!/usr/bin/env python
"""Convert Qwen2.5-Omni thinker weights between HF safetensors and the JAX (orbax) checkpoint layout.

    python tools/convert_weights.py hf-to-jax SRC DST [--dtype bfloat16] [--overwrite]
    python tools/convert_weights.py jax-to-hf SRC DST [--base HF_DIR] [--max-shard-size 5GB] [--overwrite]

Both directions stream one tensor (or one ~512 MB group) at a time and write into a temporary
directory next to DST that is renamed at the end. The logic lives in `omniagent_jax.model.convert`.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # conversion is host-side work: never grab an accelerator
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # a checkout without install
    from omniagent_jax.model.convert import main

    sys.exit(main())
