"""The toy pipeline (docs/toy.md §4): data -> expert trajectories -> SFT -> TAURA RL -> eval, resumable per stage.

The toy room's only JAX code lives here (the rest of ``omniagent_jax.toy`` is numpy + PyAV)."""
