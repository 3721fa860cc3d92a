"""Multi-host start-up: `jax.distributed.initialize` from the standard environment.

Explicit variables (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`) win; else
SLURM (`SLURM_NTASKS`, `SLURM_PROCID`, first host of `SLURM_JOB_NODELIST` as coordinator) or a TPU
pod (`TPU_WORKER_HOSTNAMES`/`MEGASCALE_*`), where JAX discovers everything itself. One process:
nothing to do.
"""

from __future__ import annotations

import os

import jax

DEFAULT_PORT = 12355


def plan_from_env(env: dict[str, str] | None = None) -> dict[str, object] | None:
    """The `jax.distributed.initialize` arguments the environment asks for, or None (single process)."""
    env = dict(os.environ if env is None else env)
    if "JAX_COORDINATOR_ADDRESS" in env:
        return {
            "coordinator_address": env["JAX_COORDINATOR_ADDRESS"],
            "num_processes": int(env["JAX_NUM_PROCESSES"]),
            "process_id": int(env["JAX_PROCESS_ID"]),
        }
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        host = env.get("MASTER_ADDR") or env.get("SLURM_LAUNCH_NODE_IPADDR", "localhost")
        return {
            "coordinator_address": f"{host}:{env.get('MASTER_PORT', DEFAULT_PORT)}",
            "num_processes": int(env["SLURM_NTASKS"]),
            "process_id": int(env["SLURM_PROCID"]),
        }
    if env.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1:
        return {}  # a multi-host TPU slice: JAX reads the TPU metadata itself
    return None


def initialize(env: dict[str, str] | None = None) -> bool:
    """Starts `jax.distributed` when the environment describes several processes; True if it did."""
    plan = plan_from_env(env)
    if plan is None or jax.distributed.is_initialized():
        return False
    # CPU processes need a collectives backend; asking jax for its backend here would start it too early.
    if (jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")) == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**plan)
    return True
