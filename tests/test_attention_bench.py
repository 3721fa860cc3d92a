"""benchmarks/accelerator.py --tiny runs end to end on the CPU (so the accelerator suite never rots) and
appends its table to the results file it is given."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_accelerator_benchmark_tiny(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# earlier results\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "accelerator.py"), "--tiny", "--results", str(results)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# earlier results\n")
    for row in ("| decode, batch 2 ", "| prefill, 256 tokens |", "| SFT step, 256 tokens, remat full |", "| RL step: 2 rollouts"):
        assert row in text and row in done.stdout, row
    assert "tokens/s" in text and "### accelerator.py: tiny (2 layers) on cpu" in text
