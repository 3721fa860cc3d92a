"""The sharded engine (engine/placement.py) on 8 simulated CPU devices, in a subprocess
(tests/engine_sharded_check.py): tensor 2 and 8 give the single-device engine's greedy tokens, log-probs
(≤ 1e-5) and prefix reuse with sharded weights and pages; trainer weights (FSDP 8) synced into a tensor-4
engine generate as a fresh engine on them, with the sync's per-device peak ≤ model / 4 + the largest tensor.
Plus the mesh checks and the head-aware sharding rule, in process."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from omniagent_jax.engine.placement import check_mesh, engine_mesh
from omniagent_jax.model.sharding import logical_to_spec

HERE = pathlib.Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def report() -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run([sys.executable, str(HERE / "engine_sharded_check.py")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _same(got: list[dict], want: list[dict]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g["tokens"] == w["tokens"] and g["reason"] == w["reason"] and g["cached"] == w["cached"]
        np.testing.assert_allclose(g["logprobs"], w["logprobs"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("tp", [2, 8])
def test_tensor_parallel_engine_equals_single_device(report, tp):
    _same(report[f"tp{tp}"], report["single"])
    assert [c["cached"] for c in report["single"]] == [0, 0, 24, 24]  # the second wave reuses the shared prefix
    layout = report[f"tp{tp}_layout"]
    assert layout["q_sharded"] and layout["mlp_sharded"] and layout["lm_head_sharded"]
    assert layout["q_proj"] == ["None", "tensor"]
    if tp == 2:  # 2 KV heads over 2 devices: KV projections and pages split by head
        assert layout["k_proj"] == ["None", "tensor"] and layout["pages_sharded"] and layout["pages"][:2] == ["None", "tensor"]
    else:  # fewer KV heads than devices: replicated
        assert layout["k_proj"] == ["None", "None"] and not layout["pages_sharded"] and layout["devices"] == 8


def test_trainer_weights_resharded_into_the_engine(report):
    assert report["trainer_fsdp_sharded"]
    _same(report["synced"], report["fresh"])
    assert report["synced"][0]["tokens"] != report["single"][0]["tokens"]  # the new weights are in use
    assert report["cache_before_sync"] > 0 and report["cache_after_sync"] == 0
    assert report["peak_sync_bytes"] <= report["model_bytes"] / 4 + report["largest_bytes"], report
    assert report["buffers_shared_with_trainer"] == 0  # replicated tensors are copies, not the trainer's buffers


def test_engine_mesh_and_its_checks():
    mesh = engine_mesh(1)
    assert mesh.shape == {"data": 1, "fsdp": 1, "tensor": 1}
    assert check_mesh(mesh) is mesh
    with pytest.raises(ValueError, match="tensor parallelism 0"):
        engine_mesh(0)
    with pytest.raises(ValueError, match="tensor parallelism 2"):
        engine_mesh(2, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="needs a 'tensor' axis"):
        check_mesh(Mesh(np.asarray(jax.devices()[:1]), ("model",)))
    two = Mesh(np.asarray(jax.devices()[:1] * 2).reshape(2, 1, 1), ("data", "fsdp", "tensor"))
    with pytest.raises(ValueError, match="one engine per data-parallel process"):
        check_mesh(two)


def test_heads_are_never_cut_across_devices():
    mesh = Mesh(np.asarray(jax.devices()[:1] * 8).reshape(1, 1, 8), ("data", "fsdp", "tensor"))
    # 2 KV heads of 16 dims: 32 columns divide by 8, the heads do not -> replicated
    assert logical_to_spec(("embed", "kv_heads"), (64, 32), mesh, units={"kv_heads": 2}) == PartitionSpec(None, None)
    assert logical_to_spec(("embed", "heads"), (64, 64), mesh, units={"heads": 8}) == PartitionSpec(None, "tensor")
    assert logical_to_spec(("embed", "kv_heads"), (64, 32), mesh) == PartitionSpec(None, "tensor")  # no units: columns


@pytest.mark.parametrize("value", ["0", "9"])
def test_tensor_parallel_flag_is_checked_before_loading(value, capsys, monkeypatch):
    from omniagent_jax import cli
    from omniagent_jax.engine.policy import JaxPolicy

    def refuse(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(JaxPolicy, "from_pretrained", refuse)
    assert cli.main(["serve", "--tensor-parallel", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("omniagent serve: error: --tensor-parallel must be in [1, 1]"), err


def test_reshard_copies_and_frees_one_tensor_at_a_time():
    import jax.numpy as jnp

    from omniagent_jax.engine.placement import reshard

    src, old = jnp.arange(8.0), jnp.ones(8)
    seen = []
    (moved,) = reshard([src], [src.sharding], free=[old], on_tensor=lambda i: seen.append((i, old.is_deleted())))
    assert seen == [(0, False)] and old.is_deleted()  # the old copy goes only once the new one has landed
    assert moved.unsafe_buffer_pointer() != src.unsafe_buffer_pointer()  # never the caller's buffer
    src.delete()
    np.testing.assert_array_equal(np.asarray(moved), np.arange(8.0))
