"""Run by tests/test_train_sft.py in a process of its own: every row of the released SFT example, re-cut from
stand-in videos, trained on (its long rows compile 13 bucket shapes of up to 8,192 tokens, kept out of the
suite's long-lived process). Prints one JSON line: steps, bad rows, per-step losses and target-token counts.

    python tests/train_reference_check.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import media_factory  # noqa: E402

from omniagent_jax.processing import OmniProcessor  # noqa: E402
from omniagent_jax.train import sft  # noqa: E402
from omniagent_jax.train.config import load_config  # noqa: E402


def main(out: pathlib.Path) -> None:
    src = HERE / "data" / "reference" / "example_train_sft.jsonl"
    lines = src.read_text().splitlines()
    made = set()
    for line in lines:
        info = json.loads(line)["extra_info"]
        if info["video"] not in made:
            (out / info["video"]).parent.mkdir(parents=True, exist_ok=True)
            media_factory.make_video(out / info["video"], duration=info["duration_seconds"], fps=info["fps"],
                                     audio=info["has_audio"], width=32, height=32)
            made.add(info["video"])
    model = out / "tiny_1layer.yaml"
    model.write_text("preset: tiny\ntext: {num_hidden_layers: 1}\n")
    buckets = list(range(2048, 8193, 512))
    cfg = load_config(HERE.parent / "configs/sft/tiny.yaml", [
        f"data.train_file={src}", f"data.data_root={out}", f"output_dir={out / 'run'}", "progress=false",
        f"max_steps={len(lines)}", "data.shuffle=false", "checkpoint.every=0", "loss_chunk=512", "data.vocab_remap=4096",
        f"data.buckets={buckets}", "data.max_length=8192", f"model={model}"])
    res = sft.train(cfg, processor=OmniProcessor.from_pretrained())
    recs = [json.loads(r) for r in (pathlib.Path(res.output_dir) / "metrics.jsonl").read_text().splitlines()]
    print(json.dumps({"rows": len(lines), "steps": res.steps, "bad_rows": res.bad_rows,
                      "losses": [res.losses[s] for s in sorted(res.losses)], "targets": [r["target_tokens"] for r in recs]}))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
