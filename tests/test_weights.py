"""Weights: the key table, `Thinker.from_pretrained` on HF layouts and converted JAX checkpoints,
HF → JAX → HF round trips (with and without `--base`), and the error paths (docs/model.md §3)."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import torch_ref
from flax import nnx
from safetensors import safe_open
from safetensors.torch import save_file

from omniagent_jax.model import Thinker, convert, jax_checkpoint
from omniagent_jax.model.config import load_config, qwen2_5_omni_7b
from omniagent_jax.model.convert import param_shapes
from omniagent_jax.model.safetensors_io import CheckpointError
from omniagent_jax.model.weight_keys import hf_to_nnx, nnx_to_hf

REPO = Path(__file__).resolve().parents[1]
SIDE_FILES = {"tokenizer.json": b'{"fake": true}', "spk_dict.pt": b"\x80\x02speakers", "generation_config.json": b"{}"}


def fake_speech_tensors(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Stand-ins for the talker and token2wav tensors of the full release (token2wav is fp32 there)."""
    g = torch.Generator().manual_seed(5)
    return {
        "talker.model.embed_tokens.weight": torch.randn(24, 16, generator=g).to(dtype),
        "talker.codec_head.weight": torch.randn(24, 8, generator=g).to(dtype),
        "token2wav.code2wav_dit_model.time_embed.weight": torch.randn(7, 3, generator=g),
    }


def release_dir(ref, path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    tensors = torch_ref.save_release_layout(ref, path, num_shards=3, prefix="thinker.", extra=fake_speech_tensors(dtype))
    for name, data in SIDE_FILES.items():
        (path / name).write_bytes(data)
    return tensors


def read_dir(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, framework="pt") as g:
            out.update({k: g.get_tensor(k) for k in g.keys()})
    return out


def flat_params(model: Thinker) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def assert_same_params(a: Thinker, b: Thinker) -> None:
    pa, pb = flat_params(a), flat_params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert pa[name].dtype == pb[name].dtype, name
        np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def cfg():
    return load_config("tiny")


@pytest.fixture(scope="session")
def ref32(cfg):
    return torch_ref.build_reference(cfg, seed=11)


@pytest.fixture(scope="session")
def ref16(ref32):
    return copy.deepcopy(ref32).to(torch.bfloat16)


@pytest.fixture(scope="session")
def release32(ref32, tmp_path_factory):
    path = tmp_path_factory.mktemp("release32")
    return path, release_dir(ref32, path, torch.float32)


@pytest.fixture(scope="session")
def release16(ref16, tmp_path_factory):
    path = tmp_path_factory.mktemp("release16")
    return path, release_dir(ref16, path, torch.bfloat16)


@pytest.fixture(scope="session")
def model32(release32):
    return Thinker.from_pretrained(release32[0])


@pytest.fixture(scope="session")
def jax32(release32, tmp_path_factory):
    dst = tmp_path_factory.mktemp("jax32") / "ckpt"
    convert.hf_to_jax(release32[0], dst, progress=False)
    return dst


@pytest.fixture(scope="session")
def jax16(release16, tmp_path_factory):
    dst = tmp_path_factory.mktemp("jax16") / "ckpt"
    convert.hf_to_jax(release16[0], dst, progress=False)
    return dst


@pytest.fixture()
def broken(release32, tmp_path):
    """A writable copy of the fp32 release directory to break."""
    dst = tmp_path / "broken"
    shutil.copytree(release32[0], dst)
    return dst


# ---------------------------------------------------------------------------------------- the key table


def tensor_count(text_layers: int, vision_blocks: int, audio_layers: int) -> int:
    """Thinker tensors per docs/model.md §3.1: 12 per text layer, 16 per vision block, 15 per audio layer."""
    text = 2 + 12 * text_layers + 1  # embed, norm, layers; lm_head
    vision = 1 + 16 * vision_blocks + 5  # patch_embed, blocks, merger (ln_q + 2 × weight/bias)
    audio = 4 + 1 + 15 * audio_layers + 2 + 2  # conv1/2, audio_bos_eos_token, layers, ln_post, proj
    return text + vision + audio


# The 7B's on-disk shapes as listed in docs/model.md §3.1 (layer 0); the key table must reproduce them.
SHAPES_7B = {
    "model.embed_tokens.weight": (152064, 3584),
    "model.layers.0.self_attn.q_proj.weight": (3584, 3584),
    "model.layers.0.self_attn.k_proj.weight": (512, 3584),
    "model.layers.0.self_attn.v_proj.bias": (512,),
    "model.layers.0.self_attn.o_proj.weight": (3584, 3584),
    "model.layers.0.mlp.gate_proj.weight": (18944, 3584),
    "model.layers.0.mlp.down_proj.weight": (3584, 18944),
    "model.layers.0.post_attention_layernorm.weight": (3584,),
    "lm_head.weight": (152064, 3584),
    "audio_tower.conv1.weight": (1280, 128, 3),
    "audio_tower.conv2.weight": (1280, 1280, 3),
    "audio_tower.audio_bos_eos_token.weight": (2, 3584),
    "audio_tower.layers.0.self_attn.k_proj.weight": (1280, 1280),
    "audio_tower.layers.0.fc1.weight": (5120, 1280),
    "audio_tower.layers.0.final_layer_norm.bias": (1280,),
    "audio_tower.proj.weight": (3584, 1280),
    "visual.patch_embed.proj.weight": (1280, 3, 2, 14, 14),
    "visual.blocks.0.attn.q.weight": (1280, 1280),
    "visual.blocks.0.mlp.gate_proj.weight": (3420, 1280),
    "visual.blocks.0.mlp.down_proj.bias": (1280,),
    "visual.merger.mlp.0.weight": (5120, 5120),
    "visual.merger.mlp.2.weight": (3584, 5120),
}


def test_key_table_covers_the_7b_thinker_both_ways():
    """The 7B's real widths with 2 layers per stack (tracing all 92 layers takes ~20 s on 2 cores)."""
    full = qwen2_5_omni_7b()
    assert tensor_count(full.text.num_hidden_layers, full.vision.depth, full.audio.encoder_layers) == 1346  # docs/model.md §1.5
    cfg = full.replace(
        text=dataclasses.replace(full.text, num_hidden_layers=2),
        vision=dataclasses.replace(full.vision, depth=2, fullatt_block_indexes=(1,)),
        audio=dataclasses.replace(full.audio, encoder_layers=2),
    )
    shapes = param_shapes(cfg)
    assert len(shapes) == tensor_count(2, 2, 2)
    hf_shapes = {}
    for name, shape in shapes.items():
        key, rule = nnx_to_hf(name)
        assert hf_to_nnx(key) == (name, rule)
        hf_shapes[key] = rule.transform.hf_shape(shape, cfg)
    assert len(hf_shapes) == len(shapes)
    for key, shape in SHAPES_7B.items():
        assert hf_shapes[key] == shape, key
    assert hf_to_nnx("model.layers.0.self_attn.o_proj.bias") is None  # o_proj has no bias in Qwen2.5
    assert hf_to_nnx("audio_tower.layers.0.self_attn.k_proj.bias") is None  # nor the audio k_proj


def test_key_table_matches_the_reference_state_dict(cfg, release32):
    _, tensors = release32
    on_disk = {k.removeprefix("thinker.") for k in tensors if k.startswith("thinker.")}
    assert on_disk == {nnx_to_hf(n)[0] for n in param_shapes(cfg)}


# ---------------------------------------------------------------------------------------- loading


def test_release_layout_loads_exactly(model32, release32, cfg):
    """Prefix + 3 shards + index: every parameter equals the torch tensor in the NNX layout."""
    _, tensors = release32
    ours = flat_params(model32)
    assert len(ours) == len(param_shapes(cfg))
    for name, value in ours.items():
        key, rule = nnx_to_hf(name)
        expected = rule.transform.to_jax(tensors["thinker." + key].numpy())
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, expected, err_msg=name)
    # The transforms themselves, written out against the torch layouts:
    t = {k.removeprefix("thinker."): v.numpy() for k, v in tensors.items()}
    np.testing.assert_array_equal(ours["model.embed_tokens.embedding"], t["model.embed_tokens.weight"])
    np.testing.assert_array_equal(ours["model.layers.1.mlp.down_proj.kernel"], t["model.layers.1.mlp.down_proj.weight"].T)
    np.testing.assert_array_equal(ours["audio_tower.conv2.kernel"], t["audio_tower.conv2.weight"].transpose(2, 1, 0))
    patch = t["visual.patch_embed.proj.weight"]
    np.testing.assert_array_equal(ours["visual.patch_embed.kernel"], patch.reshape(patch.shape[0], -1).T)


def test_unprefixed_single_file_loads_the_same(ref32, model32, tmp_path):
    """What `Qwen2_5OmniThinkerForConditionalGeneration.save_pretrained` writes: no prefix, one file."""
    ref32.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / "model.safetensors.index.json").exists()
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        assert not any(k.startswith("thinker.") for k in f.keys())
    assert_same_params(Thinker.from_pretrained(tmp_path), model32)


def test_bf16_keeps_its_dtype_and_casts_on_request(release16, ref16):
    path, tensors = release16
    model = Thinker.from_pretrained(path)
    emb = np.asarray(model.model.embed_tokens.embedding.get_value())
    assert emb.dtype == ml_dtypes.bfloat16
    want = tensors["thinker.model.embed_tokens.weight"].view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(emb.view(np.uint16), want)
    model32 = Thinker.from_pretrained(path, dtype=jnp.float32)
    assert model32.lm_head.kernel.get_value().dtype == jnp.float32
    norm = np.asarray(model32.model.norm.weight.get_value())
    np.testing.assert_array_equal(norm, tensors["thinker.model.norm.weight"].float().numpy())


def test_talker_and_token2wav_are_ignored_silently(release32):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Thinker.from_pretrained(release32[0])


def test_parameters_keep_their_logical_axes(model32):
    spec = nnx.get_partition_spec(nnx.state(model32, nnx.Param))
    assert spec.model.embed_tokens.embedding.get_value() == jax.sharding.PartitionSpec("vocab", "embed")
    assert spec.model.layers[0].self_attn.k_proj.kernel.get_value() == jax.sharding.PartitionSpec("embed", "kv_heads")


# ---------------------------------------------------------------------------------------- JAX checkpoints


def test_jax_checkpoint_layout_and_load(jax32, model32):
    marker = json.loads((jax32 / jax_checkpoint.MARKER_FILE).read_text())
    assert marker["format"] == jax_checkpoint.MARKER_FORMAT and marker["version"] == jax_checkpoint.MARKER_VERSION
    assert marker["dtype"] == "float32" and marker["num_tensors"] == len(flat_params(model32))
    assert (jax32 / "tokenizer.json").read_bytes() == SIDE_FILES["tokenizer.json"]  # side files travel along
    assert_same_params(Thinker.from_pretrained(jax32), model32)


def test_save_jax_checkpoint_round_trips(model32, tmp_path, monkeypatch):
    out = jax_checkpoint.save_jax_checkpoint(model32, tmp_path / "saved")
    assert_same_params(Thinker.from_pretrained(out), model32)
    monkeypatch.chdir(tmp_path)  # a relative path loads too (orbax itself takes only absolute ones)
    assert_same_params(Thinker.from_pretrained("saved"), model32)
    with pytest.raises(FileExistsError, match="already exists"):
        jax_checkpoint.save_jax_checkpoint(model32, out)


def test_hf_to_jax_casts_with_dtype(release32, tmp_path):
    dst = convert.hf_to_jax(release32[0], tmp_path / "bf16", dtype="bfloat16", progress=False)
    assert json.loads((dst / jax_checkpoint.MARKER_FILE).read_text())["dtype"] == "bfloat16"
    model = Thinker.from_pretrained(dst)
    got = np.asarray(model.model.layers[0].mlp.up_proj.kernel.get_value())
    want = release32[1]["thinker.model.layers.0.mlp.up_proj.weight"].to(torch.bfloat16).float().numpy().T
    np.testing.assert_array_equal(got.astype(np.float32), want)


# ---------------------------------------------------------------------------------------- HF → JAX → HF


@pytest.mark.parametrize("which", ["release32", "release16"])
def test_round_trip_with_base_is_bit_identical(which, request, tmp_path):
    src, written = request.getfixturevalue(which)
    jax_dir = request.getfixturevalue("jax32" if which == "release32" else "jax16")
    max_shard = 8 << 20  # several shards for a 37 MB (fp32) / 19 MB (bf16) checkpoint
    out = convert.jax_to_hf(jax_dir, tmp_path / "export", base=src, max_shard_size=max_shard, progress=False)

    original, exported = read_dir(src), read_dir(out)
    assert original.keys() == written.keys() == exported.keys()  # incl. talker.* and token2wav.*
    for key in original:
        assert exported[key].dtype == original[key].dtype, key
        assert exported[key].shape == original[key].shape, key
        assert torch.equal(exported[key].view(torch.uint8), original[key].view(torch.uint8)), key

    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(exported)
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) >= 3 and {p.name for p in shards} == set(index["weight_map"].values())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in exported.values())
    for shard in shards:
        with safe_open(shard, framework="pt") as f:
            keys = list(f.keys())
            assert f.metadata() == {"format": "pt"}
        if len(keys) > 1:  # a shard only exceeds the bound when one tensor alone does
            assert sum(exported[k].numel() * exported[k].element_size() for k in keys) <= max_shard
    # The base's non-weight files, byte for byte (its full Omni config.json included).
    for name in [*SIDE_FILES, "config.json"]:
        assert (out / name).read_bytes() == (src / name).read_bytes(), name


def test_export_without_base_loads_in_transformers(ref32, jax32, tmp_path):
    """The CLI (run once as a subprocess) writes a thinker-only checkpoint; transformers' logits match."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    dst = tmp_path / "thinker_only"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_weights.py"), "jax-to-hf", str(jax32), str(dst), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert f"wrote {dst}" in run.stdout
    exported = read_dir(dst)
    assert not any(k.startswith(("thinker.", "talker.", "token2wav.")) for k in exported)
    assert (dst / "tokenizer.json").read_bytes() == SIDE_FILES["tokenizer.json"]

    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(dst).eval()
    assert hf.dtype == torch.float32
    ids = np.array([[0, 0, 0, 17, 4, 99, 1000, 151], [0, 5, 6, 7, 8, 9, 10, 11], [3, 1, 4, 1, 5, 9, 2, 6]])
    mask = (np.arange(8)[None, :] >= np.array([3, 1, 0])[:, None]).astype(np.int64)
    want = torch_ref.reference_logits(ref32, ids, mask)
    got = torch_ref.reference_logits(hf, ids, mask)
    np.testing.assert_array_equal(got[mask.astype(bool)], want[mask.astype(bool)])


def test_export_warns_when_dtype_differs_from_base(release16, tmp_path):
    src, written = release16
    jax_dir = convert.hf_to_jax(src, tmp_path / "f32", dtype="float32", progress=False)
    with pytest.warns(UserWarning, match="BF16→F32"):
        out = convert.jax_to_hf(jax_dir, tmp_path / "export", base=src, progress=False)
    exported = read_dir(out)
    assert exported["thinker.lm_head.weight"].dtype == torch.float32
    assert torch.equal(exported["thinker.lm_head.weight"], written["thinker.lm_head.weight"].float())
    assert exported["talker.codec_head.weight"].dtype == torch.bfloat16  # carried unchanged


# ---------------------------------------------------------------------------------------- errors


def _rewrite_shard(path: Path, key: str, replace: torch.Tensor | None) -> str:
    """Removes (`replace=None`) or replaces one tensor in its shard, keeping the index consistent."""
    index_path = path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    fname = index["weight_map"][key]
    tensors = read_dir_file(path / fname)
    if replace is None:
        del tensors[key], index["weight_map"][key]
    else:
        tensors[key] = replace
    save_file(tensors, path / fname, metadata={"format": "pt"})
    index_path.write_text(json.dumps(index))
    return fname


def read_dir_file(f: Path) -> dict[str, torch.Tensor]:
    with safe_open(f, framework="pt") as g:
        return {k: g.get_tensor(k) for k in g.keys()}


def test_missing_tensor_is_named(broken):
    _rewrite_shard(broken, "thinker.model.layers.1.mlp.gate_proj.weight", None)
    with pytest.raises(CheckpointError, match=r"missing key\(s\): thinker\.model\.layers\.1\.mlp\.gate_proj\.weight"):
        Thinker.from_pretrained(broken)


def test_wrong_shape_is_named(broken):
    fname = _rewrite_shard(broken, "thinker.visual.blocks.2.attn.q.weight", torch.zeros(32, 31))
    key = r"'thinker\.visual\.blocks\.2\.attn\.q\.weight'"
    message = rf"shape mismatch for {key} \(in {fname}\): checkpoint \[32, 31\], model expects \[32, 32\]"
    with pytest.raises(CheckpointError, match=message):
        Thinker.from_pretrained(broken)


@pytest.mark.parametrize(
    "extra", ["thinker.model.layers.0.mlp.extra_proj.weight", "thinker.model.layers.9.input_layernorm.weight", "lm_head.weight"]
)
def test_unknown_key_is_named(broken, extra):
    fname = _rewrite_shard(broken, "thinker.model.norm.weight", None)
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    tensors = read_dir_file(broken / fname)
    tensors["thinker.model.norm.weight"] = torch.ones(64)
    tensors[extra] = torch.ones(64)
    save_file(tensors, broken / fname, metadata={"format": "pt"})
    index["weight_map"].update({"thinker.model.norm.weight": fname, extra: fname})
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"unknown .*{extra.replace('.', chr(92) + '.')}.*\(in {fname}\)"):
        Thinker.from_pretrained(broken)


def test_truncated_shard_is_named(broken):
    shard = sorted(broken.glob("*.safetensors"))[1]
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) - 100)
    with pytest.raises(CheckpointError, match=rf"{shard.name}: corrupt safetensors file \(truncated: tensor '.*'"):
        Thinker.from_pretrained(broken)


@pytest.mark.parametrize("garbage", [b"\xff" * 8 + b"not json", (40).to_bytes(8, "little") + b"{" * 40, b"\x01"])
def test_garbage_header_is_named(broken, garbage):
    shard = sorted(broken.glob("*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(garbage + (data[len(garbage) :] if len(garbage) > 8 else b""))
    with pytest.raises(CheckpointError, match=rf"{shard.name}: corrupt safetensors file"):
        Thinker.from_pretrained(broken)


def test_missing_shard_is_named(broken):
    shard = sorted(broken.glob("*.safetensors"))[2]
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"lists shard '{shard.name}' .* but the file is missing"):
        Thinker.from_pretrained(broken)


def test_index_pointing_at_the_wrong_shard_is_named(broken):
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    key = next(k for k, f in index["weight_map"].items() if f == shards[0])
    index["weight_map"][key] = shards[1]
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"maps '{key}' to '{shards[1]}', which does not contain it"):
        Thinker.from_pretrained(broken)


@pytest.mark.parametrize("index", ["{not json", '{"metadata": {}}', '{"weight_map": {"a": 3}}'])
def test_invalid_index_is_named(broken, index):
    (broken / "model.safetensors.index.json").write_text(index)
    message = r"model\.safetensors\.index\.json: (not a valid safetensors index|weight_map must)"
    with pytest.raises(CheckpointError, match=message):
        Thinker.from_pretrained(broken)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is not a checkpoint directory"):
        Thinker.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        Thinker.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt safetensors file"):
        Thinker.from_pretrained(tmp_path)


def test_missing_config_is_named(broken):
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        Thinker.from_pretrained(broken)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("config.json", "{", r"/config\.json is not valid JSON"),
        ("config.json", "[1, 2]", r"/config\.json is not a JSON object"),
        ("config.json", "{}", r"/config\.json: not a usable thinker config \(config has neither `thinker_config`"),
        ("config.json", '{"text_config": {"hidden_size": "wide"}}', r"/config\.json: not a usable thinker config \(TypeError"),
        ("config.json", '{"text_config": {}, "vision_config": [3]}', r"/config\.json: not a usable .* \(AttributeError"),
        ("generation_config.json", "{", r"/generation_config\.json is not valid JSON"),
    ],
)
def test_broken_config_is_named(broken, name, text, message):
    """Every config problem is a CheckpointError naming the file, raised before any tensor is read."""
    (broken / name).write_text(text)
    with pytest.raises(CheckpointError, match=message) as err:
        Thinker.from_pretrained(broken)
    assert "\n" not in str(err.value)


def test_mixed_dtypes_need_an_explicit_dtype(ref32, tmp_path):
    state = torch_ref.on_disk_state_dict(ref32)
    state = {k: (v if k == "model.norm.weight" else v.to(torch.bfloat16)) for k, v in state.items()}
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(ref32.config.to_dict()))
    with pytest.raises(CheckpointError, match=r"mixed dtypes \['bfloat16', 'float32'\]"):
        Thinker.from_pretrained(tmp_path)
    model = Thinker.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert model.model.norm.weight.get_value().dtype == jnp.bfloat16


def test_jax_checkpoint_errors(jax32, model32, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(jax32, bad)
    marker = json.loads((bad / jax_checkpoint.MARKER_FILE).read_text())
    (bad / jax_checkpoint.MARKER_FILE).write_text("{")
    with pytest.raises(CheckpointError, match="omniagent_checkpoint.json: not valid JSON"):
        Thinker.from_pretrained(bad)
    (bad / jax_checkpoint.MARKER_FILE).write_text(json.dumps({**marker, "format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an omniagent-jax-thinker checkpoint marker"):
        Thinker.from_pretrained(bad)
    (bad / jax_checkpoint.MARKER_FILE).write_text(json.dumps({**marker, "version": 99}))
    with pytest.raises(CheckpointError, match="unsupported checkpoint version 99"):
        Thinker.from_pretrained(bad)
    (bad / jax_checkpoint.MARKER_FILE).write_text(json.dumps(marker))
    shutil.rmtree(bad / jax_checkpoint.PARAMS_DIR)
    with pytest.raises(CheckpointError, match="cannot read the orbax checkpoint"):
        Thinker.from_pretrained(bad)
    # A checkpoint of another config: every difference is named.
    other = Thinker(load_config(REPO / "configs" / "model" / "tiny_gqa3.yaml"), rngs=nnx.Rngs(0))
    other_dir = jax_checkpoint.save_jax_checkpoint(other, tmp_path / "other")
    shutil.copy(jax32 / "config.json", other_dir / "config.json")
    with pytest.raises(CheckpointError, match=r"unknown parameter 'model\.layers\.2\..*shape mismatch for 'lm_head\.kernel'"):
        Thinker.from_pretrained(other_dir)


def test_jax_checkpoint_read_failure_is_named(jax32, monkeypatch):
    """A data file cut short is found only while reading (its metadata checks out): tensorstore then raises
    an `Exception` caused by `ValueError: OUT_OF_RANGE ...`, each message followed by pages of spec. That
    is replayed here (a real truncation leaves orbax threads running into later tests); the error is one
    line naming the directory, the parameters and the innermost reason."""
    import orbax.checkpoint.experimental.v1 as ocp

    def truncated(path, abstract):
        try:
            raise ValueError('OUT_OF_RANGE: Error reading shard entry in "lm_head.kernel/c/0/0"\n{\n  "driver": "cast"')
        except ValueError as inner:
            raise Exception("Encountered error while reading array index: (slice(0, 64, 1),)\n{\n  'dtype': 'float32'") from inner

    monkeypatch.setattr(ocp, "load", truncated)
    message = rf"^{jax32 / jax_checkpoint.PARAMS_DIR}: cannot read .*, … and \d+ more \(ValueError: OUT_OF_RANGE: .*lm_head.*\)$"
    with pytest.raises(CheckpointError, match=message) as err:
        Thinker.from_pretrained(jax32)
    assert "\n" not in str(err.value) and "driver" not in str(err.value)


def test_base_of_another_model_is_refused(jax32, tmp_path):
    other_cfg = load_config(REPO / "configs" / "model" / "tiny_gqa3.yaml")
    other = tmp_path / "other"
    torch_ref.save_release_layout(torch_ref.build_reference(other_cfg, seed=1), other, num_shards=1)
    with pytest.raises(CheckpointError, match=r"different thinker configs: text\.hidden_size: 64 vs 96"):
        convert.jax_to_hf(jax32, tmp_path / "out", base=other, progress=False)
    assert not (tmp_path / "out").exists()


def test_base_missing_or_reshaped_tensors_are_named(jax32, broken, tmp_path):
    _rewrite_shard(broken, "thinker.audio_tower.proj.bias", None)
    _rewrite_shard(broken, "thinker.model.layers.0.self_attn.o_proj.weight", torch.zeros(64, 63))
    message = (
        r"'thinker\.model\.layers\.0\.self_attn\.o_proj\.weight': base \[64, 63\] .* JAX checkpoint \[64, 64\]"
        r"|'thinker\.audio_tower\.proj\.bias' is not in the base"
    )
    with pytest.raises(CheckpointError, match=message) as err:
        convert.jax_to_hf(jax32, tmp_path / "out", base=broken, progress=False)
    assert "o_proj" in str(err.value) and "audio_tower.proj.bias" in str(err.value)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- atomic output, CLI


def test_existing_destination_needs_overwrite(release32, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists"):
        convert.hf_to_jax(release32[0], dst, progress=False)
    assert convert.main(["hf-to-jax", str(release32[0]), str(dst), "--no-progress"]) == 1
    assert convert.main(["hf-to-jax", str(release32[0]), str(dst), "--no-progress", "--overwrite"]) == 0
    assert not (dst / "old.txt").exists() and (dst / jax_checkpoint.MARKER_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]  # no temporary or old directories left


def test_failed_conversion_leaves_nothing(release32, tmp_path, monkeypatch):
    calls = []

    def failing_add(self, name, value):
        calls.append(name)
        if len(calls) == 5:
            raise OSError("disk full (simulated)")

    monkeypatch.setattr(jax_checkpoint.JaxCheckpointWriter, "add", failing_add)
    with pytest.raises(OSError, match="disk full"):
        convert.hf_to_jax(release32[0], tmp_path / "dst", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert convert.main(["jax-to-hf", str(tmp_path), str(tmp_path / "out"), "--no-progress"]) == 1
    assert "is not a JAX checkpoint directory" in capsys.readouterr().err
    assert convert.main(["hf-to-jax", str(tmp_path / "missing"), str(tmp_path / "out"), "--no-progress"]) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_hf_to_jax_refuses_a_jax_checkpoint(jax32, tmp_path):
    with pytest.raises(CheckpointError, match="is already a converted JAX checkpoint"):
        convert.hf_to_jax(jax32, tmp_path / "again", progress=False)


@pytest.mark.parametrize(
    ("text", "value"),
    [("5GB", 5_000_000_000), ("2GiB", 2 << 30), ("500MB", 500_000_000), ("1.5kb", 1500), ("123", 123), (77, 77)],
)
def test_parse_size(text, value):
    assert convert.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "5XB", "-1GB", "0"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        convert.parse_size(text)
