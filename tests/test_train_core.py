"""Training core: sharded step vs one device, gradient accumulation, the loss against numpy,
frozen towers, config errors."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import synthetic_batch

from omniagent_jax.model.config import save_hf_config, tiny
from omniagent_jax.model.kv_cache import NoCache
from omniagent_jax.model.safetensors_io import TensorSource, write_safetensors
from omniagent_jax.train import mesh as mesh_lib
from omniagent_jax.train import optim, setup
from omniagent_jax.train import step as step_lib
from omniagent_jax.train.checkpoint import Checkpointer
from omniagent_jax.train.config import CheckpointConfig, ConfigError, MeshConfig, load_config
from omniagent_jax.train.forward import hidden_states
from omniagent_jax.train.labels import IGNORE
from omniagent_jax.train.loss import chunked_cross_entropy

HERE = pathlib.Path(__file__).resolve().parent
VOCAB = 512


@pytest.fixture(scope="module")
def tiny_run():
    cfg = load_config(
        None, ["model=tiny", f"data.vocab_remap={VOCAB}", "loss_chunk=24", "optim.lr=1e-2", "optim.warmup_ratio=0.0"]
    )
    mesh = mesh_lib.make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    model = setup.build_model(cfg, mesh)
    return cfg, model


def test_multi_device_meshes_match_single_device():
    """(8,1,1), (1,8,1), (2,2,2) on 8 simulated CPU devices: loss, gradients and updated params equal
    the single-device step, and parameters / Adam moments / the batch really are sharded."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "train_mesh_check.py")], env=env, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {tuple(r["mesh"]): r for r in map(json.loads, (line for line in proc.stdout.splitlines() if line.startswith("{")))}
    assert set(rows) == {(1, 1, 1), (8, 1, 1), (1, 8, 1), (2, 2, 2)}
    for shape in [(8, 1, 1), (1, 8, 1), (2, 2, 2)]:
        r = rows[shape]
        assert r["d_loss"] <= 1e-5 and r["d_step_loss"] <= 1e-5, r
        assert r["d_grads"] <= 1e-5, r
        assert r["d_params"] <= 1e-5, r
    # Pure data parallelism: parameters replicated, the batch split 8 ways.
    assert rows[(8, 1, 1)]["sharded_params"] == 0 and "data" in rows[(8, 1, 1)]["batch"]
    # FSDP: the model width is split; Adam moments follow their parameters.
    r = rows[(1, 8, 1)]
    assert r["lm_head"] == "P('fsdp', None)" and r["embed"] == "P(None, 'fsdp')"  # the rules' specs, kept by the step
    # All 16 matrices (embed, lm_head, 7 per layer) are split; 1-D norms and biases stay replicated.
    assert r["adam_mu_lm_head"] == r["lm_head"] and r["sharded_params"] == 16
    # Moments are created in their shardings, not on one device until the first step moves them.
    assert r["adam_mu_lm_head_init"] == r["lm_head"] and rows[(2, 2, 2)]["adam_mu_lm_head_init"] == rows[(2, 2, 2)]["lm_head"]
    # 2×2×2: width over fsdp, vocab/mlp over tensor, batch over data+fsdp; every trainable param but
    # the five 1-D norm weights (replicated by the rules, and kept so by the step) is sharded.
    r = rows[(2, 2, 2)]
    assert r["lm_head"] == "P('fsdp', 'tensor')" and r["gate"] == "P('fsdp', 'tensor')"
    assert r["embed"] == "P('tensor', 'fsdp')" and r["frozen_qkv"] == "P('fsdp', 'tensor')"
    assert r["sharded_params"] == r["num_params"] - 5 and r["batch"] == "P(None, ('data', 'fsdp'), None)"


def test_logical_spec_falls_back_to_replicated():
    mesh = mesh_lib.make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
    assert mesh_lib.logical_to_spec(("embed", "vocab"), (64, 100), mesh) == jax.sharding.PartitionSpec(None, None)
    with pytest.raises(KeyError, match="no sharding rule"):
        mesh_lib.logical_to_spec(("nonsense",), (4,), mesh)
    with pytest.raises(ValueError, match="devices"):
        mesh_lib.resolve_mesh_shape(MeshConfig(3, -1, 1), 8)
    assert mesh_lib.resolve_mesh_shape(MeshConfig(2, -1, 2), 8) == (2, 2, 2)


def test_loss_equals_numpy_cross_entropy_on_targets_only(tiny_run):
    cfg, model = tiny_run
    batch = synthetic_batch(1, 3, 20, VOCAB, seed=3)
    mb = {k: v[0] for k, v in batch.items()}
    hidden, _ = model.decode(
        model.embed_tokens(jnp.asarray(mb["input_ids"])), jnp.asarray(mb["positions"]), NoCache(jnp.asarray(mb["attention_mask"]))
    )
    logits = np.asarray(model.logits(hidden), np.float64)
    # numpy: log-softmax over the vocabulary, pick the next token at target positions only.
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    labels = mb["labels"]
    sel = labels != IGNORE
    ref_sum = -logp[sel, labels[sel]].sum()
    total, count = chunked_cross_entropy(hidden, model.lm_head.kernel[...], jnp.asarray(labels), chunk=7)
    skipped, _ = chunked_cross_entropy(hidden, model.lm_head.kernel[...], jnp.asarray(labels), chunk=7, skip_empty=True)
    assert float(skipped) == float(total)
    assert int(count) == sel.sum() and sel.sum() < labels.size  # prompt tokens exist and carry no label
    np.testing.assert_allclose(float(total), ref_sum, rtol=1e-5)
    # Changing a prompt token's *label* cannot matter; the step's loss is this sum / count.
    fns = step_lib.StepFns(*setup.split(model, cfg)[:1], tx=optim.make_optimizer(cfg.optim, 10), loss_chunk=5)
    _, tr, fr, other = setup.split(model, cfg)
    loss, _, n = fns.jit_grads(tr, fr, other, {k: v[None] if k != "positions" else v[None] for k, v in mb.items()})
    np.testing.assert_allclose(float(loss), ref_sum / sel.sum(), rtol=1e-5)


def test_grad_accumulation_of_four_equals_one_batch(tiny_run):
    """4 micro-batches with different target counts == one batch of all 4 rows (loss and grads)."""
    cfg, model = tiny_run
    graphdef, tr, fr, other = setup.split(model, cfg)
    fns = step_lib.StepFns(graphdef, optim.make_optimizer(cfg.optim, 10), loss_chunk=16)
    batch = synthetic_batch(4, 2, 16, VOCAB, seed=5, prompt_lens=[2, 6, 9, 13])
    counts = [(batch["labels"][i] != IGNORE).sum() for i in range(4)]
    assert len(set(counts)) == 4
    loss4, g4, n4 = fns.jit_grads(tr, fr, other, batch)
    one = {k: np.concatenate(list(v), axis=1 if k == "positions" else 0)[None] for k, v in batch.items()}
    loss1, g1, n1 = fns.jit_grads(tr, fr, other, one)
    assert float(n4) == float(n1) == sum(counts)
    assert abs(float(loss4) - float(loss1)) <= 1e-6
    for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # The mean of per-micro-batch means (what a naive accumulation computes) is different here.
    per_mb = [float(fns.jit_grads(tr, fr, other, {k: v[i : i + 1] for k, v in batch.items()})[0]) for i in range(4)]
    assert abs(np.mean(per_mb) - float(loss4)) > 1e-4
    # Only the last micro-batch (the reference's bug) is not the same either.
    assert abs(per_mb[-1] - float(loss4)) > 1e-4


def test_frozen_towers_bit_identical_and_without_optimizer_state(tiny_run):
    cfg, model = tiny_run
    graphdef, tr, fr, other = setup.split(model, cfg)
    paths = [optim.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(fr)]
    assert paths and all(p.startswith(("audio_tower.", "visual.")) for p in paths)
    assert any(".merger." in p or p.startswith("visual.merger") for p in paths)
    assert not any(optim.path_str(p).startswith(("audio_tower", "visual")) for p, _ in jax.tree_util.tree_leaves_with_path(tr))
    before = [np.asarray(x).copy() for x in jax.tree.leaves(fr)]
    tx = optim.make_optimizer(cfg.optim, 10)
    fns = step_lib.StepFns(graphdef, tx, loss_chunk=16)
    state = step_lib.init_state(jax.tree.map(jnp.copy, tr), tx, 0)  # the step donates its state
    opt_paths = [optim.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)]
    assert not any("audio_tower" in p or "visual" in p for p in opt_paths)
    n_moments = sum(x.size for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0)
    assert n_moments == 2 * sum(x.size for x in jax.tree.leaves(tr))  # mu + nu of trainable params only
    batch = synthetic_batch(1, 2, 12, VOCAB, seed=7)
    first = [np.asarray(x).copy() for x in jax.tree.leaves(tr)]
    for _ in range(3):
        state, metrics = fns.jit_train_step(state, fr, other, batch)
    after = [np.asarray(x) for x in jax.tree.leaves(fr)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(first, jax.tree.leaves(state.params)))


def test_remat_forward_equals_decode(tiny_run):
    _, model = tiny_run
    batch = synthetic_batch(1, 2, 10, VOCAB, seed=9)
    ids, pos, mask = (jnp.asarray(batch[k][0]) for k in ("input_ids", "positions", "attention_mask"))
    ref, _ = model.decode(model.embed_tokens(ids), pos, NoCache(mask))
    for remat in ("none", "full", "dots"):
        np.testing.assert_array_equal(
            np.asarray(hidden_states(model, model.embed_tokens(ids), pos, mask, remat)), np.asarray(ref)
        )


def test_schedule_warmup_then_linear_decay():
    cfg = load_config(None, ["optim.lr=1.0", "optim.warmup_ratio=0.1"]).optim
    s = optim.schedule(cfg, 100)
    assert float(s(0)) == 0.0 and abs(float(s(10)) - 1.0) < 1e-6 and abs(float(s(5)) - 0.5) < 1e-6
    assert abs(float(s(55)) - 0.5) < 1e-6 and float(s(100)) < 1e-6
    cos = optim.schedule(load_config(None, ["optim.lr=1.0", "optim.warmup_ratio=0", "optim.schedule=cosine"]).optim, 100)
    assert abs(float(cos(50)) - 0.5) < 1e-6


@pytest.mark.parametrize("overrides, message", [
    (["optim.learning_rate=1"], "unknown config key"),
    (["optim.lr=fast"], "must be a number"),
    (["lr"], "key=value"),
    (["remat=sometimes"], "remat"),
    (["mesh.data=-1", "mesh.fsdp=-1"], "mesh"),
    (["data.buckets=[]"], "data.buckets must be distinct positive integers"),
    (["data.buckets=[256, 256]"], "data.buckets must be distinct positive integers"),
    (["data.workers=-2"], "data.workers must be >= 0"),
    (["data.group_by_length=sometimes"], "group_by_length must be true/false"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_config_file_errors_and_list_overrides(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)
    cfg = load_config(None, ["optim.frozen=[^visual\\.]", "data.batch_size=4"])
    assert cfg.optim.frozen == ("^visual\\.",) and cfg.data.batch_size == 4


def test_checkpoint_restore_errors_name_the_mismatch(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", CheckpointConfig(async_save=False))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.restore({"a": jnp.zeros(2)})
    ckpt.save(1, {"a": jnp.arange(3.0), "b": {"c": jnp.ones((2, 2))}}, {"pos": 7})
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    tree, data = ckpt.restore({"a": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=one_device), "b": {"c": jnp.zeros((2, 2))}})
    assert data == {"pos": 7} and np.array_equal(np.asarray(tree["a"]), [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"missing \['b.d'\], unexpected \['b.c'\]"):
        ckpt.restore({"a": jnp.zeros(3), "b": {"d": jnp.zeros((2, 2))}})
    with pytest.raises(ValueError, match=r"other shapes.*a: stored \(3,\), expected \(4,\)"):
        ckpt.restore({"a": jnp.zeros(4), "b": {"c": jnp.zeros((2, 2))}})
    ckpt.close()


def test_cli_dry_run_and_bad_keys(capsys):
    from omniagent_jax.train.cli import main

    # The recipe's data and init checkpoint are not in the repository: the dry run checks they exist.
    config = str(HERE.parent / "configs/sft/omniagent_7b.yaml")
    sft_data = HERE / "data" / "reference" / "example_train_sft.jsonl"
    assert main(["train", "sft", "--config", config, "--dry-run", "optim.lr=2e-5"]) == 2
    assert "init: checkpoint directory not found: checkpoints/Qwen2.5-Omni-7B" in capsys.readouterr().err
    local = ["init=", f"data.train_file={sft_data}", f"data.data_root={sft_data.parent}"]
    assert main(["train", "sft", "--config", config, "--dry-run", "optim.lr=2e-5", *local]) == 0
    out = capsys.readouterr().out
    assert "lr: 2.0e-05" in out and "remat: full" in out and "bfloat16" in out
    assert main(["train", "sft", "--config", str(HERE.parent / "configs/sft/tiny.yaml"), "--dry-run", "optim.bogus=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err


def _write(path: pathlib.Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _checkpoint_dir(path: pathlib.Path, config) -> pathlib.Path:
    """A checkpoint directory of `config` holding one tensor: all that the checks before a load read."""
    path.mkdir(exist_ok=True)
    save_hf_config(config, path)
    norm = np.ones(64, np.float32)
    write_safetensors(path / "model.safetensors", [TensorSource("thinker.model.norm.weight", "F32", (64,), lambda: norm)])
    return path


# Each: (overrides or a config file's text, the one line that names the problem). Every case is one the
# real run would stop on (or silently misuse, as a negative learning rate); the dry run must say so.
DRY_RUN_ERRORS = [
    (["optim.lr=-1"], "optim.lr must be a positive number, got -1.0"),
    (["optim.lr=0"], "optim.lr must be a positive number, got 0.0"),
    (["optim.lr=.nan"], "optim.lr must be a positive number, got nan"),
    (["optim.b2=1"], "optim.b2 must be in [0, 1), got 1.0"),
    (["epochs=0"], "epochs must be a positive number, got 0.0"),
    (["checkpoint.keep=0"], "checkpoint.keep must be >= 1, got 0"),
    (["data.max_length=0"], "data.max_length must be >= 1, got 0"),
    (["model=tiny_7b"], "model 'tiny_7b' is neither a preset (qwen2_5_omni_7b, tiny)"),
    (["model=@/broken.yaml"], "model @/broken.yaml: unknown field(s) ['layers'] in model config section 'text'"),
    (["model=@"], "model @: no config.json at @/config.json"),
    (["init=@/nowhere"], "init: checkpoint directory not found: @/nowhere"),
    (["init=@"], "is not a checkpoint directory: no model.safetensors"),
    (["init=@/other"], "init: init checkpoint @/other does not match the run's model config (differs in ['text'])"),
    (["data.train_file="], "data.train_file is not set"),
    (["data.train_file=@/none.jsonl"], "data.train_file @/none.jsonl not found"),
    (["data.train_file=@"], "data.train_file @ is not a file"),
    (["data.train_file=@/empty.jsonl"], "data.train_file @/empty.jsonl holds no rows"),
    (["data.train_file=@/bad.jsonl"], "data.train_file @/bad.jsonl:3: malformed JSON"),
    (["data.train_file=@/fields.jsonl"], "data.train_file @/fields.jsonl:1: missing field 'output'"),
    (["data.data_root=@/none"], "data.data_root @/none is not a directory"),
    (["output_dir=@/empty.jsonl"], "output_dir @/empty.jsonl is a file"),
    (["optim.lr=[1"], "override 'optim.lr=[1': not valid YAML"),
    (["optim.lr=1", "optim.lr.x=1"], "override 'optim.lr.x': 'lr' is not a section"),
    ("", "the config file is empty (expected a mapping of config keys)"),
    ("optim: {lr: -1e-5}\n", "optim.lr must be a positive number, got -1e-05"),
    ("optim: [1, 2\n", "not valid YAML"),
    (None, "config file not found: @/missing.yaml"),
]


@pytest.mark.parametrize("case, message", DRY_RUN_ERRORS, ids=[m[:40] for _, m in DRY_RUN_ERRORS])
def test_dry_run_validates_as_the_run_would(case, message, tmp_path, capsys):
    """Exit 2 and one line naming the problem (no traceback) for each bad value, preset, file or row."""
    from omniagent_jax.train.cli import main

    sft_data = HERE / "data" / "reference" / "example_train_sft.jsonl"
    good = sft_data.read_text().splitlines()
    _write(tmp_path / "empty.jsonl", "\n")
    _write(tmp_path / "bad.jsonl", "\n".join([good[0], good[1], "{not json"]) + "\n")
    _write(tmp_path / "fields.jsonl", json.dumps({"raw_input": [], "extra_info": {}}) + "\n")
    _write(tmp_path / "broken.yaml", "preset: tiny\ntext: {layers: 3}\n")
    _checkpoint_dir(tmp_path / "other", tiny().replace(text=dataclasses.replace(tiny().text, num_hidden_layers=3)))
    base = ["model=tiny", f"data.train_file={sft_data}", f"data.data_root={sft_data.parent}", f"output_dir={tmp_path}/out"]
    if isinstance(case, list):
        argv = ["train", "sft", "--dry-run", *base, *(c.replace("@", str(tmp_path)) for c in case)]
    else:
        config = tmp_path / "missing.yaml" if case is None else pathlib.Path(_write(tmp_path / "run.yaml", case))
        argv = ["train", "sft", "--config", str(config), "--dry-run", *(base if case else [])]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("omniagent train sft: error: ") and message.replace("@", str(tmp_path)) in lines[0], lines[0]
    assert captured.out == "" and not (tmp_path / "out").exists()


def test_dry_run_accepts_the_tiny_recipe_with_an_init_checkpoint_of_its_config(tmp_path, capsys):
    from omniagent_jax.train.cli import main

    init = _checkpoint_dir(tmp_path / "init", tiny())
    config = str(HERE.parent / "configs/sft/tiny.yaml")
    sft_data = HERE / "data" / "reference" / "example_train_sft.jsonl"
    assert main(["train", "sft", "--config", config, "--dry-run", f"init={init}", f"data.train_file={sft_data}"]) == 0
    assert f"init: {init}" in capsys.readouterr().out
