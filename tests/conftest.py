"""Shared test set-up: JAX on the CPU, tiny configs, session-scoped fixtures (JAX compiles once per shape)."""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO / "tests" / "data" / "reference"


@pytest.fixture(autouse=True)
def _no_persistent_compilation_cache_across_tests():
    """`omniagent run|eval|sweep` in-process turn on JAX's persistent compilation cache unless given
    `--no-compilation-cache`. JAX builds that cache once per process and keeps writing to it after the config is
    cleared, so a test that turned it on would make every later compile write there (one SFT step's executable
    aborted the process while being serialized): whatever a test turned on is torn down after it."""
    yield
    if "jax" not in sys.modules:
        return
    import jax
    from jax._src import compilation_cache

    if jax.config.jax_compilation_cache_dir is not None or compilation_cache._cache is not None:
        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code_after_each_file():
    """Each XLA CPU executable holds about 8 memory mappings (its code) until it is dropped, and the suite compiles
    thousands in one process: it reached 64,029 mappings by its end, against Linux's default cap of 65,530 per
    process (`vm.max_map_count`), where XLA's compiler crashes (an abort or a segfault, late in fresh-clone runs).
    Dropping JAX's compilation caches after each test file releases the executables no live object holds."""
    yield
    if "jax" not in sys.modules:
        return
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def reference_dir() -> pathlib.Path:
    """The published OmniAgent's example data files, kept unmodified in the repository
    (origin and licence: tests/data/reference/README.md)."""
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def reference_pairs(tmp_path_factory):
    """`get(name)` → (torch reference thinker, our Thinker loaded from its release-layout directory, dir),
    built once per config name (`configs/model/<name>`) for the whole session."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            import jax.numpy as jnp
            import torch_ref

            from omniagent_jax.model import Thinker
            from omniagent_jax.model.config import REPO_CONFIGS, load_config

            cfg = load_config(REPO_CONFIGS / "model" / name)
            ref = torch_ref.build_reference(cfg, seed=len(name))
            path = tmp_path_factory.mktemp(name.replace(".", "_"))
            torch_ref.save_release_layout(ref, path, num_shards=3, prefix="thinker.")
            cache[name] = (ref, Thinker.from_pretrained(path, dtype=jnp.float32), path)
        return cache[name]

    return get
