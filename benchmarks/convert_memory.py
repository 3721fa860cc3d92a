"""Peak memory of weight conversion on a checkpoint with the 7B's real tensor shapes (issue 2, benchmark a).

A synthetic release-layout checkpoint (bf16, `thinker.` prefix, shards + index) with the 7B text
decoder's real widths but 2 layers — embed 152064×3584, lm_head, 2 decoder layers ≈ 3.1 GB — plus
the smallest valid towers at real widths (1 vision block, 1 audio layer) and a talker tensor for
`--base` to carry. It is written streaming, in chunks, so the generator itself stays small. Then
`tools/convert_weights.py hf-to-jax` and `jax-to-hf --base` run as subprocesses while their RSS is
polled; each must peak below `2 × largest tensor + 1 GiB`. The export is checked bit for bit
against the source (per-tensor SHA-256).

    .venv/bin/python benchmarks/convert_memory.py [--workdir /tmp] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ml_dtypes
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omniagent_jax.model.config import qwen2_5_omni_7b  # noqa: E402
from omniagent_jax.model.convert import param_shapes  # noqa: E402
from omniagent_jax.model.hf_checkpoint import INDEX_FILE  # noqa: E402
from omniagent_jax.model.safetensors_io import SafetensorsFile, TensorSource, write_safetensors  # noqa: E402
from omniagent_jax.model.weight_keys import nnx_to_hf  # noqa: E402

GIB = 1 << 30
CHUNK = 32 << 20  # elements per generated chunk: 64 MB of bf16


def synthetic_config():
    full = qwen2_5_omni_7b()
    return full.replace(
        text=dataclasses.replace(full.text, num_hidden_layers=2),
        vision=dataclasses.replace(full.vision, depth=1, fullatt_block_indexes=(0,)),
        audio=dataclasses.replace(full.audio, encoder_layers=1),
    )


def _chunks(n: int, seed: int, hasher) -> object:
    """Random bf16 values in 64 MB chunks (never the whole tensor in memory), hashed as written."""
    rng = np.random.default_rng(seed)
    left = n
    while left:
        m = min(CHUNK, left)
        piece = (rng.standard_normal(m, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16).tobytes()
        hasher.update(piece)
        left -= m
        yield piece


def write_synthetic(path: Path, max_shard: int = 2 * 10**9) -> tuple[dict[str, str], int]:
    """The release layout: `thinker.`-prefixed shards + index + full Omni config.json. Returns the
    SHA-256 of every tensor and the size of the largest."""
    path.mkdir(parents=True)
    cfg = synthetic_config()
    specs = []
    for name, shape in param_shapes(cfg).items():
        key, rule = nnx_to_hf(name)
        specs.append(("thinker." + key, rule.transform.hf_shape(shape, cfg)))
    specs.append(("talker.model.embed_tokens.weight", (8448, 3584)))  # carried through by --base
    hashes: dict[str, str] = {}
    hashers: dict[str, object] = {}

    def source(i: int, key: str, shape: tuple[int, ...]) -> TensorSource:
        hashers[key] = hashlib.sha256()
        return TensorSource(key, "BF16", shape, lambda: _chunks(int(np.prod(shape)), i, hashers[key]))

    tensors = [source(i, k, s) for i, (k, s) in enumerate(specs)]
    shards, size = [[]], 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(path / fname, shard)
        weight_map.update({t.key: fname for t in shard})
    total = sum(t.nbytes for t in tensors)
    (path / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    omni = {"architectures": ["Qwen2_5OmniForConditionalGeneration"], "model_type": "qwen2_5_omni",
            "thinker_config": cfg.to_hf_dict(), "enable_audio_output": True}
    (path / "config.json").write_text(json.dumps(omni, indent=1))
    hashes = {k: h.hexdigest() for k, h in hashers.items()}
    return hashes, max(t.nbytes for t in tensors)


def run_measured(cmd: list[str]) -> tuple[float, int, int]:
    """Runs `cmd`, polling the RSS of it and its children every 10 ms. Returns (seconds, peak polled
    RSS, the kernel's max RSS of the child from `wait4`, which no poll can miss)."""
    with tempfile.TemporaryFile(mode="w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        peak = 0
        stop = threading.Event()

        def poll() -> None:
            nonlocal peak
            ps = psutil.Process(proc.pid)
            while not stop.is_set():
                try:
                    rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                    peak = max(peak, rss)
                except psutil.Error:
                    pass
                time.sleep(0.01)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        stop.set()
        thread.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.read()}")
    return seconds, peak, usage.ru_maxrss * 1024  # Linux reports KiB


def verify(src_hashes: dict[str, str], export: Path) -> None:
    index = json.loads((export / INDEX_FILE).read_text())["weight_map"]
    if set(index) != set(src_hashes):
        raise SystemExit(f"exported key set differs: {sorted(set(index) ^ set(src_hashes))[:5]}")
    files = {f: SafetensorsFile(export / f) for f in set(index.values())}
    for key, fname in index.items():
        info = files[fname].info(key)
        h = hashlib.sha256()
        for piece in files[fname].iter_bytes(key):
            h.update(piece)
        if info.dtype != "BF16" or h.hexdigest() != src_hashes[key]:
            raise SystemExit(f"exported tensor {key} differs from the source")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=tempfile.gettempdir(), help="where the ≈10 GB of temporary files go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary checkpoints")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="convert_memory-", dir=args.workdir))
    tool = [sys.executable, str(REPO / "tools" / "convert_weights.py")]
    try:
        t0 = time.perf_counter()
        hashes, largest = write_synthetic(work / "hf")
        gen_s = time.perf_counter() - t0
        total = sum(f.stat().st_size for f in (work / "hf").glob("*.safetensors"))
        bound = 2 * largest + GIB
        gen_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB
        print(f"synthetic checkpoint: {len(hashes)} tensors, {total / 1e9:.2f} GB bf16, largest tensor "
              f"{largest / 1e9:.3f} GB; written in {gen_s:.1f} s (generator peak RSS {gen_rss:.2f} GiB)")
        print(f"bound: 2 × largest + 1 GiB = {bound / GIB:.2f} GiB")
        rows = []
        for label, cmd in [
            ("hf-to-jax", [*tool, "hf-to-jax", str(work / "hf"), str(work / "jax"), "--no-progress"]),
            ("jax-to-hf --base",
             [*tool, "jax-to-hf", str(work / "jax"), str(work / "out"), "--base", str(work / "hf"), "--no-progress"]),
        ]:
            seconds, peak, kernel_peak = run_measured(cmd)
            verdict = "PASS" if max(peak, kernel_peak) < bound else "FAIL"
            rows.append((label, seconds, peak, kernel_peak, verdict))
            print(f"{label:18s} {seconds:6.1f} s  peak RSS {max(peak, kernel_peak) / GIB:.2f} GiB "
                  f"(polled {peak / GIB:.2f}, kernel max {kernel_peak / GIB:.2f})  bound {bound / GIB:.2f} GiB  {verdict}")
        verify(hashes, work / "out")
        print("export is bit-identical to the source (SHA-256 per tensor, same key set, bf16)")
        if any(r[-1] == "FAIL" for r in rows):
            raise SystemExit(1)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
