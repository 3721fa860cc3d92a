"""Two `jax.distributed` processes on localhost (CPU collectives) run the sharded step; its loss
equals the single-process one, and they agree on every length-grouped step's bucket. Also the
environment → initialize plan and the launch dry runs."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

from omniagent_jax.train.distributed import plan_from_env

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost_match_single_process():
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(pid), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
        procs.append(subprocess.Popen([sys.executable, str(HERE / "train_dist_check.py")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err[-3000:]
            outs.append(json.loads([line for line in out.splitlines() if line.startswith("{")][-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert outs[0]["dist_loss"] == outs[1]["dist_loss"]
    assert abs(outs[0]["dist_loss"] - outs[0]["single_loss"]) <= 1e-5
    # Length-grouped data: both processes pad every step to the same bucket, each with half the group.
    assert outs[0]["groups"] == outs[1]["groups"] and {n for _, n in outs[0]["groups"]} == {2}
    assert {length for length, _ in outs[0]["groups"]} == {128, 256}


def test_plan_from_env():
    assert plan_from_env({}) is None
    assert plan_from_env({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2"}) == {
        "coordinator_address": "h:1", "num_processes": 4, "process_id": 2}
    slurm = plan_from_env({"SLURM_NTASKS": "8", "SLURM_PROCID": "3", "MASTER_ADDR": "node1", "MASTER_PORT": "999"})
    assert slurm == {"coordinator_address": "node1:999", "num_processes": 8, "process_id": 3}
    assert plan_from_env({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == {}


def test_launch_dry_runs_print_the_plan():
    tpu = subprocess.run(["bash", str(REPO / "launch/tpu_pod.sh"), "--dry-run", "--tpu", "my-pod", "--zone", "us-central2-b",
                          "--", "--config", "configs/sft/omniagent_7b.yaml"], capture_output=True, text=True, timeout=30)
    assert tpu.returncode == 0, tpu.stderr
    assert "gcloud compute tpus tpu-vm ssh my-pod" in tpu.stdout and "--worker=all" in tpu.stdout
    assert "omniagent train sft --config configs/sft/omniagent_7b.yaml" in tpu.stdout
    gpu = subprocess.run(["bash", str(REPO / "launch/slurm_gpu.sh"), "--dry-run", "--nodes", "2", "--gpus-per-node", "8",
                          "--", "--config", "configs/sft/omniagent_7b.yaml"], capture_output=True, text=True, timeout=30)
    assert gpu.returncode == 0, gpu.stderr
    assert "srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8" in gpu.stdout and "16 GPUs" in gpu.stdout
    bad = subprocess.run(["bash", str(REPO / "launch/slurm_gpu.sh"), "--nodes"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0
