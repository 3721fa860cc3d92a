"""What a lent accelerator should measure, in one command (bf16, 7B-shaped):

* decode tokens/s at batch 1/16/64 on the engine, and its share of the HBM-bandwidth bound (each decode
  step reads every weight once plus the batch's KV cache);
* prefill tokens/s at 4k and 32k tokens (the decoder forward over one sequence);
* the SFT step (remat, chunked loss, AdamW) at 4k and 16k tokens: tokens/s and MFU (6·N·tokens + causal
  attention FLOPs over the device's peak);
* an RL step: a group of sampled rollouts on the engine, then an update on them (policy-gradient shaped:
  a train step over the rollouts' tokens), and the weight sync back into the engine.

`--tiny` (the default on a CPU) runs the same code at tiny sizes (the test suite runs it so it never rots); `--cpu-long` records
the CPU figures of the attention seam: a T = 32,768 tiny SFT step, and dense vs blockwise attention step time
and compiled temporaries at 8k. One table is printed and appended to `--results` (default RESULTS.md here).

    .venv/bin/python benchmarks/accelerator.py [--tiny | --cpu-long] [--layers N] [--peak-tflops F] [--hbm-gbps G]
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omniagent_jax.engine import Engine, Request, SamplingParams
from omniagent_jax.model.attention import use_attention
from omniagent_jax.model.kv_cache import NoCache
from omniagent_jax.train import mesh as mesh_lib
from omniagent_jax.train import optim, setup
from omniagent_jax.train import step as step_lib
from omniagent_jax.train.config import MeshConfig, load_config
from omniagent_jax.train.loss import IGNORE

HERE = pathlib.Path(__file__).resolve().parent
# Dense bf16 peak TFLOP/s and HBM GB/s by device kind (substring of `device_kind`), for MFU and the decode bound.
PEAKS = {"H200": (989.0, 4800.0), "H100": (989.0, 3350.0), "A100": (312.0, 2039.0), "v5 lite": (197.0, 819.0),
         "v5e": (197.0, 819.0), "v5p": (459.0, 2765.0), "v4": (275.0, 1228.0), "v6": (918.0, 1640.0)}

FULL = dict(decode_batches=(1, 16, 64), prompt=512, new_tokens=64, prefill=(4096, 32768), sft=(4096, 16384), group=8, rl_new=128)
TINY = dict(decode_batches=(2,), prompt=16, new_tokens=17, prefill=(256,), sft=(256,), group=2, rl_new=8)


def train_config(model: str, dtype: str, remat: str, loss_chunk: int, vocab: int = 0):
    """`vocab` > 0 shrinks the vocabulary (tiny runs: the 152k-row head would dominate every figure)."""
    return load_config(None, [f"model={model}", f"dtype={dtype}", f"remat={remat}", f"loss_chunk={loss_chunk}",
                              f"data.vocab_remap={vocab}", "optim.frozen=[^audio_tower\\.,^visual\\.]"])


def sft_batch(t: int, vocab: int, ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One row of `t` tokens with targets on its second half (an agent turn's shape), micro-batch axis first."""
    ids = np.random.RandomState(0).randint(0, vocab, (1, 1, t)).astype(np.int32) if ids is None else ids.reshape(1, 1, t)
    labels = np.full_like(ids, IGNORE)
    labels[..., t // 2 : -1] = ids[..., t // 2 + 1 :]
    pos = np.broadcast_to(np.arange(t, dtype=np.int32), (1, 3, 1, t)).copy()
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels, "positions": pos}


class Trainer:
    """A single-device SFT step on `cfg`'s model with attention implementation `impl`."""

    def __init__(self, cfg, impl: str = "auto"):
        self.cfg = cfg
        self.mesh = mesh_lib.make_mesh(MeshConfig(1, 1, 1), jax.devices()[:1])
        self.model = setup.build_model(cfg, self.mesh)
        use_attention(self.model, impl)
        graphdef, self.trainable, self.frozen, self.other = setup.split(self.model, cfg)
        self.n_trainable = sum(x.size for x in jax.tree.leaves(self.trainable))
        tx = optim.make_optimizer(cfg.optim, 1000)
        self.fns = step_lib.StepFns(graphdef, tx, remat=cfg.remat, loss_chunk=cfg.loss_chunk)
        self.state = step_lib.init_state(self.trainable, tx, 0)
        self.compiled: dict = {}

    def step(self, batch: dict[str, np.ndarray], repeats: int = 1) -> tuple[float, int]:
        """(median seconds per step after a compile, compiled temporaries in bytes)."""
        data = step_lib.put_batch(batch, self.mesh)
        shape = batch["input_ids"].shape
        if shape not in self.compiled:
            self.compiled[shape] = jax.jit(self.fns.train_step).lower(self.state, self.frozen, self.other, data).compile()
        compiled = self.compiled[shape]
        temp = compiled.memory_analysis().temp_size_in_bytes
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            self.state, m = compiled(self.state, self.frozen, self.other, data)
            jax.block_until_ready(m["loss"])
            times.append(time.perf_counter() - t0)
        return float(np.median(times[1:] if repeats else times)), temp

    def flops(self, t: int) -> float:
        tc = setup.model_config(self.cfg).text
        return 6 * self.n_trainable * t + 12 * tc.num_hidden_layers * tc.hidden_size * t * t / 2  # causal attention


def weight_bytes(model) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(nnx.state(model.model, nnx.Param))) + model.lm_head.kernel[...].nbytes


def decode_rows(model, sizes, hbm_gbps: float | None) -> list[tuple[str, str]]:
    """Decode tokens/s: the time of `new` tokens minus that of 1 (prefill + first token), on fresh prompts."""
    tc = model.config.text
    rows = []
    prompt, new = sizes["prompt"], sizes["new_tokens"]
    for b in sizes["decode_batches"]:
        engine = Engine(model, page_size=16, num_pages=2 * b * -(-(prompt + new) // 16) + 8, max_batch=b, prefill_chunk=prompt,
                        decode_steps=8)
        rng = np.random.default_rng(b)

        def timed(n: int) -> float:
            sampling = SamplingParams(temperature=0.0, max_new_tokens=n, stop_token_ids=())
            requests = [Request(rng.integers(0, 1000, prompt), sampling) for _ in range(b)]  # fresh: no prefix reuse
            t0 = time.perf_counter()
            engine.generate(requests)
            return time.perf_counter() - t0

        timed(new), timed(1)  # compiles
        dt = timed(new) - timed(1)
        tokens = b * (new - 1)
        kv_bytes = 2 * tc.num_hidden_layers * tc.num_key_value_heads * tc.head_dim * model.dtype.itemsize * (prompt + new / 2) * b
        step_bytes = weight_bytes(model) + kv_bytes
        share = f", {tokens / dt / (b * hbm_gbps * 1e9 / step_bytes):.0%} of the HBM bound" if hbm_gbps else ""
        rows.append((f"decode, batch {b} ({prompt}-token prompts)", f"{tokens / dt:,.0f} tokens/s{share}"))
    return rows


def prefill_rows(model, sizes) -> list[tuple[str, str]]:
    rows = []

    @jax.jit
    def forward(model, ids):
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1])[None, None], (3, 1, ids.shape[1]))
        hidden, _ = model.decode(model.embed_tokens(ids), positions, NoCache(jnp.ones_like(ids)))
        return model.logits(hidden[:, -1])

    for t in sizes["prefill"]:
        ids = jnp.asarray(np.random.default_rng(t).integers(0, 1000, (1, t)), jnp.int32)
        jax.block_until_ready(forward(model, ids))
        t0 = time.perf_counter()
        jax.block_until_ready(forward(model, ids))
        rows.append((f"prefill, {t:,} tokens", f"{t / (time.perf_counter() - t0):,.0f} tokens/s"))
    return rows


def sft_rows(trainer: Trainer, sizes, peak_tflops: float | None) -> list[tuple[str, str]]:
    cfg = trainer.cfg
    vocab = setup.model_config(cfg).text.vocab_size
    rows = []
    for t in sizes["sft"]:
        dt, temp = trainer.step(sft_batch(t, vocab))
        mfu = f", MFU {trainer.flops(t) / dt / (peak_tflops * 1e12):.1%}" if peak_tflops else ""
        rows.append((f"SFT step, {t:,} tokens, remat {cfg.remat}", f"{dt * 1e3:,.0f} ms, {t / dt:,.0f} tokens/s{mfu}, "
                                                                   f"temporaries {temp / 2**20:,.0f} MiB"))
    return rows


def rl_rows(trainer: Trainer, sizes) -> list[tuple[str, str]]:
    """Rollouts of a group on the engine, an update on their tokens, the weights synced back."""
    engine = Engine(trainer.model, page_size=16, num_pages=sizes["group"] * 32 + 8, max_batch=sizes["group"], decode_steps=8)
    prompt = np.random.default_rng(0).integers(0, 1000, sizes["prompt"])
    sampling = [SamplingParams(temperature=1.0, seed=i, max_new_tokens=sizes["rl_new"], stop_token_ids=(), logprobs=True)
                for i in range(sizes["group"])]
    length = sizes["prompt"] + sizes["rl_new"]

    def one() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        done = engine.generate([Request(prompt, s) for s in sampling])
        t1 = time.perf_counter()
        ids = np.stack([np.concatenate([prompt, c.tokens]) for c in done]).astype(np.int32)
        batch = sft_batch(length, 0, ids[:1])  # the update's shape: one rollout row (the group accumulates the same way)
        trainer.step(batch, repeats=0)
        t2 = time.perf_counter()
        updated = nnx.merge(trainer.fns.graphdef, trainer.state.params, trainer.frozen, trainer.other)
        engine.update_weights(nnx.state(updated, nnx.Param))
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    one()  # compiles
    roll, update, sync = one()
    return [(f"RL step: {sizes['group']} rollouts x {sizes['rl_new']} tokens, update, sync",
             f"{(roll + update + sync) * 1e3:,.0f} ms (rollout {roll * 1e3:,.0f}, update {update * 1e3:,.0f}, "
             f"sync {sync * 1e3:,.0f})")]


def cpu_long_rows() -> list[tuple[str, str]]:
    """The attention seam on the CPU: a 32k tiny SFT step (blockwise), and dense vs blockwise at 8k."""
    cfg = train_config("tiny", "float32", "none", 1024)
    vocab = setup.model_config(cfg).text.vocab_size
    dt, temp = Trainer(cfg).step(sft_batch(32768, vocab), repeats=0)
    rows = [("tiny SFT step, 32,768 tokens (blockwise)", f"{dt:,.1f} s, temporaries {temp / 2**20:,.0f} MiB")]
    measured = {impl: Trainer(cfg, impl).step(sft_batch(8192, vocab), repeats=1) for impl in ("dense", "blockwise")}
    (dd, dm), (bd, bm) = measured["dense"], measured["blockwise"]
    rows.append(("tiny SFT step, 8,192 tokens: dense", f"{dd:,.2f} s, temporaries {dm / 2**20:,.0f} MiB"))
    rows.append(("tiny SFT step, 8,192 tokens: blockwise", f"{bd:,.2f} s, temporaries {bm / 2**20:,.0f} MiB"))
    rows.append(("blockwise / dense at 8k", f"time x{bd / dd:.2f}, temporaries x{bm / dm:.3f}"))
    return rows


def model_preset(layers: int | None) -> str:
    """The 7B preset, or a YAML slice of it with `layers` decoder layers (towers cut down: they are frozen)."""
    if layers is None:
        return "qwen2_5_omni_7b"
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    f.write(f"preset: qwen2_5_omni_7b\ntext: {{num_hidden_layers: {layers}}}\nvision: {{depth: 4, fullatt_block_indexes: [3]}}\n"
            "audio: {encoder_layers: 2}\n")
    f.close()
    return f.name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes (CPU, the test suite)")
    p.add_argument("--cpu-long", action="store_true", help="CPU attention figures: 32k tiny SFT step, dense vs blockwise at 8k")
    p.add_argument("--layers", type=int, default=None, help="decoder layers of the 7B-shaped model (default: all 28)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak bf16 TFLOP/s (default: by device kind)")
    p.add_argument("--hbm-gbps", type=float, default=None, help="device HBM GB/s (default: by device kind)")
    p.add_argument("--results", default=str(HERE / "RESULTS.md"), help="markdown file the table is appended to ('' = none)")
    a = p.parse_args(argv)
    device = jax.devices()[0]
    kind = next((v for k, v in PEAKS.items() if k.lower() in device.device_kind.lower()), (None, None))
    peak, hbm = a.peak_tflops or kind[0], a.hbm_gbps or kind[1]
    if a.cpu_long:
        title, rows = "attention seam on the CPU (tiny thinker, fp32)", cpu_long_rows()
    else:
        a.tiny = a.tiny or device.platform == "cpu"  # `make bench` on a CPU: the 7B-shaped run is for accelerators
        sizes = TINY if a.tiny else FULL
        cfg = train_config("tiny" if a.tiny else model_preset(a.layers), "float32" if a.tiny else "bfloat16",
                           "full", 128 if a.tiny else 1024, vocab=4096 if a.tiny else 0)
        trainer = Trainer(cfg)
        rows = decode_rows(trainer.model, sizes, hbm) + prefill_rows(trainer.model, sizes)
        rows += sft_rows(trainer, sizes, peak) + rl_rows(trainer, sizes)
        title = f"{'tiny' if a.tiny else '7B-shaped'} ({setup.model_config(cfg).text.num_hidden_layers} layers)"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = [f"### accelerator.py: {title} on {device.platform} ({device.device_kind}), {stamp}", "",
             "| measurement | result |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]
    print("\n".join(table))
    if a.results:
        with open(a.results, "a", encoding="utf-8") as f:
            f.write("\n" + "\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
