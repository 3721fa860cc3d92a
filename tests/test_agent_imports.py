"""``omniagent_jax.agent`` must never import JAX or Flax (it runs in data workers and clients)."""

from __future__ import annotations

import json
import subprocess
import sys

AGENT_MODULES = [
    "omniagent_jax.agent",
    "omniagent_jax.agent.actions",
    "omniagent_jax.agent.budget",
    "omniagent_jax.agent.cli",
    "omniagent_jax.agent.data",
    "omniagent_jax.agent.environment",
    "omniagent_jax.agent.envfile",
    "omniagent_jax.agent.errors",
    "omniagent_jax.agent.judge",
    "omniagent_jax.agent.limits",
    "omniagent_jax.agent.memory",
    "omniagent_jax.agent.messages",
    "omniagent_jax.agent.openai_http",
    "omniagent_jax.agent.policy",
    "omniagent_jax.agent.prompts",
    "omniagent_jax.agent.records",
    "omniagent_jax.agent.rewards",
    "omniagent_jax.agent.runner",
]


def test_agent_imports_no_jax_or_flax():
    code = (
        "import importlib, json, sys\n"
        f"for m in {AGENT_MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
