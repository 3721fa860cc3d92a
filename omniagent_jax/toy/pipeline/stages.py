"""The toy pipeline's stages (docs/toy.md §4). Each writes under the run directory and is skipped when its
output is complete; the ones that take long (collect, SFT, RL, eval) also resume part-way through.

    data     runs/toy/data/{train,test}.jsonl + videos/      toy.splits.write_split (test videos checked)
    collect  runs/toy/collect/{results,steps}.jsonl          `omniagent collect` with the scripted expert
    sft_data runs/toy/sft.jsonl                              `omniagent export-sft` (won trajectories only)
    init     runs/toy/init/                                   the toy thinker at random init + the toy tokenizer
    sft      runs/toy/sft/export_jax/ (+ tokenizer)           `omniagent train sft` on configs/toy/sft.yaml
    rl       runs/toy/taura/export_jax/ (+ tokenizer)         `omniagent train rl` on configs/toy/taura.yaml
    eval     runs/toy/eval_<name>/summary.json                 `omniagent eval`, greedy, on the test split
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time
from collections.abc import Callable

from omniagent_jax.toy import settings, splits
from omniagent_jax.toy.pipeline.config import PipelineConfig, PipelineError

TOKENIZER_DIR = settings.REPO_CONFIGS / "toy" / "tokenizer"
THINKER_CONFIG = settings.REPO_CONFIGS / "toy" / "thinker.yaml"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
COPY_BATCH = 32  # rows per step of the copy phase (short rows: 32 cost what 8 frame-log rows do)


def log(msg: str) -> None:
    print(f"[toy] {msg}", file=sys.stderr, flush=True)


def _count_lines(path: pathlib.Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.is_file() else -1


def _eval_args(argv: list[str]) -> argparse.Namespace:
    """`omniagent eval | collect | export-sft` arguments, parsed by those commands' own parser."""
    from omniagent_jax.eval.cli import add_eval_commands

    parser = argparse.ArgumentParser(prog="omniagent")
    add_eval_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run_omniagent(argv: list[str]) -> int:
    """Runs an `omniagent` eval-family command in this process (the same checks as the command line)."""
    args = _eval_args(argv)
    return args.func(args)


def check_exit(rc: int, what: str) -> None:
    if rc != 0:
        raise PipelineError(f"{what} failed (exit {rc})")


def with_tokenizer(model_dir: pathlib.Path) -> pathlib.Path:
    """A checkpoint directory with the toy tokenizer beside its weights (what `--model` and RL `init` load) and the
    toy episode card (so `omniagent run --model DIR` plays the toy episode)."""
    for name in _TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, model_dir / name)
    settings.write_card(model_dir)
    return model_dir


def _has_tokenizer(model_dir: pathlib.Path) -> bool:
    return all((model_dir / n).is_file() for n in _TOKENIZER_FILES)


def stage_data(cfg: PipelineConfig) -> dict[str, pathlib.Path]:
    """The train and test splits (a split whose JSONL already holds its rows is kept as it is). Test videos are
    checked by decoding (every test answer is really in its video); train videos are checked by the expert that
    plays them, since collect exports only the episodes it wins."""
    folder = cfg.root / "data"
    out = {}
    for split, count in (("train", cfg.train_tasks), ("test", cfg.test_tasks)):
        path = splits.rows_path(folder, split)
        if _count_lines(path) == count:
            log(f"data: {path} complete ({count} tasks), skipped")
        else:
            splits.write_split(folder, split, count, workers=cfg.data_workers, verify=split == "test")
        out[split] = path
    return out


def stage_collect(cfg: PipelineConfig, train_rows: pathlib.Path) -> pathlib.Path:
    """Expert trajectories on the train split: `omniagent collect` with the scripted expert as its policy."""
    from omniagent_jax.eval.collect import collect_command
    from omniagent_jax.toy.expert import ExpertPolicy

    out = cfg.root / "collect"
    results = out / "results.jsonl"
    if _count_lines(results) == cfg.train_tasks:
        log(f"collect: {results} complete, skipped")
        return out / "steps.jsonl"
    args = _eval_args(["collect", "--dataset", str(train_rows), "--output-dir", str(out),
                                      "--seed", str(cfg.seed), "--attempts", "1", *settings.cli_flags()])
    check_exit(collect_command(args, policy=ExpertPolicy()), "collect")
    return out / "steps.jsonl"


def stage_sft_data(cfg: PipelineConfig, steps: pathlib.Path) -> pathlib.Path:
    """The SFT rows: `omniagent export-sft` over the expert's step logs (rewritten whenever collect is newer)."""
    out = cfg.root / "sft.jsonl"
    if out.is_file() and out.stat().st_mtime >= steps.stat().st_mtime:
        log(f"sft_data: {out} up to date, skipped")
        return out
    check_exit(run_omniagent(["export-sft", str(steps), "--out", str(out)]), "export-sft")
    if _count_lines(out) < 1:
        raise PipelineError(f"export-sft kept no rows from {steps} (did the expert win no episode?)")
    return out


def stage_init(cfg: PipelineConfig) -> pathlib.Path:
    """The toy thinker at its random init (seeded by the pipeline seed) with the toy tokenizer beside it."""
    out = cfg.root / "init"
    if out.is_dir() and _has_tokenizer(out):
        log(f"init: {out} exists, skipped")
        return out
    from flax import nnx

    from omniagent_jax.model.config import load_config
    from omniagent_jax.model.jax_checkpoint import save_jax_checkpoint
    from omniagent_jax.model.thinker import Thinker

    model = Thinker(load_config(str(THINKER_CONFIG)), rngs=nnx.Rngs(cfg.seed))
    if cfg.head_from_embeddings:
        embedding = model.model.embed_tokens.embedding
        model.lm_head.kernel.set_value(embedding[...].T.astype(model.lm_head.kernel[...].dtype))
    save_jax_checkpoint(model, out, overwrite=True)
    return with_tokenizer(out)


def stage_read(cfg: PipelineConfig, init: pathlib.Path, train_rows: pathlib.Path, sft_rows: pathlib.Path) -> pathlib.Path:
    """The reading curriculum (`toy.reading`): SFT runs on one-frame rows, then on word rows (a look's words alone,
    no labels), then on label rows (a look's labels alone),
    then on copy rows (text only), then on frame-log rows, then on agent-layout rows (the expert's second turns with
    their look replaced), each from the checkpoint before; returns the checkpoint the agentic SFT starts from
    (``init`` when every phase has 0 steps). Frame, word, label and agent rows come from the train split's videos; each
    phase is skipped once exported."""
    from omniagent_jax.toy.reading import (
        COPY_MAX_TOKENS,
        write_agent_rows,
        write_copy_rows,
        write_label_rows,
        write_reading_rows,
    )
    from omniagent_jax.train.config import load_config
    from omniagent_jax.train.sft import train

    def frame_rows(frames: int | None, seed: int, words: bool = False, looks: str = "expert"):
        return lambda rows: write_reading_rows(train_rows, rows, frames=frames, per_task=cfg.read_rows_per_task, seed=seed,
                                               looks=looks, words=words)

    model = init
    # copy rows are short, so they get their own buckets
    copy_lengths = [f"data.max_length={COPY_MAX_TOKENS}", f"data.buckets=[{COPY_MAX_TOKENS // 2},{COPY_MAX_TOKENS}]"]
    # (name, writes the rows, batch size, steps, overrides)
    phases = (
        ("frame", frame_rows(1, cfg.seed * 10, cfg.read_frame_words), 16, cfg.read_frame_steps, []),
        ("word", frame_rows(None, cfg.seed * 10 + 5, True, cfg.read_word_looks), 16, cfg.read_word_steps, []),
        ("label", lambda rows: write_label_rows(train_rows, rows, per_task=cfg.read_rows_per_task, seed=cfg.seed * 10 + 3),
         8, cfg.read_label_steps, []),
        ("copy", lambda rows: write_copy_rows(rows, count=cfg.read_copy_steps * COPY_BATCH, seed=cfg.seed * 10 + 2),
         COPY_BATCH, cfg.read_copy_steps, copy_lengths),
        ("log", frame_rows(None, cfg.seed * 10 + 1, looks=cfg.read_log_looks), 8, cfg.read_log_steps, []),
        ("agent", lambda rows: write_agent_rows(sft_rows, train_rows, rows, per_task=cfg.read_rows_per_task,
                                                seed=cfg.seed * 10 + 4), 8, cfg.read_agent_steps, []),
    )
    for name, write_rows, batch, steps, extra in phases:
        if steps < 1:
            continue
        out = cfg.root / "read" / name
        export = out / "export_jax"
        if export.is_dir() and _has_tokenizer(export):
            log(f"read: {export} exists, skipped")
            model = export
            continue
        rows = cfg.root / "read" / f"{name}.jsonl"
        if not rows.is_file():
            rows.parent.mkdir(parents=True, exist_ok=True)
            log(f"read: writing {name} rows")
            write_rows(rows)
        scfg = load_config(cfg.sft_config, [f"init={model}", f"data.train_file={rows}", f"output_dir={out}", "export_hf=true",
                                            f"max_steps={steps}", f"data.batch_size={batch}", "epochs=1000", *extra])
        result = train(scfg)
        last = result.losses[max(result.losses)] if result.losses else float("nan")
        log(f"read ({name}): {result.steps} steps, last loss {last:.4f}")
        model = with_tokenizer(export)
    return model


def stage_sft(cfg: PipelineConfig, init: pathlib.Path, sft_rows: pathlib.Path) -> pathlib.Path:
    """SFT from ``init`` on the expert rows; its exported JAX checkpoint (with the tokenizer)."""
    from omniagent_jax.train.config import load_config
    from omniagent_jax.train.sft import train

    out = cfg.root / "sft"
    export = out / "export_jax"
    if export.is_dir() and _has_tokenizer(export):
        log(f"sft: {export} exists, skipped")
        return export
    scfg = load_config(cfg.sft_config, [*cfg.sft, f"init={init}", f"data.train_file={sft_rows}", f"output_dir={out}",
                                        "export_hf=true"])
    result = train(scfg)  # export_hf=true: the finished run writes export_jax
    last = result.losses[max(result.losses)] if result.losses else float("nan")
    log(f"sft: {result.steps} steps, last loss {last:.4f}, {result.bad_rows} rows skipped")
    return with_tokenizer(export)


def rl_config(cfg: PipelineConfig, init: pathlib.Path, train_rows: pathlib.Path, name: str, path: str | None = None):
    """The RL config the pipeline runs: ``path`` (default ``cfg.rl_config``) with the run's init, data and output."""
    from omniagent_jax.train.rl.config import load_rl_config

    return load_rl_config(path or cfg.rl_config, [*cfg.rl, f"init={init}", f"data.train_file={train_rows}",
                                                  f"data.data_root={train_rows.parent}", f"output_dir={cfg.root / name}"])


def stage_rl(cfg: PipelineConfig, init: pathlib.Path, train_rows: pathlib.Path, name: str = "taura",
             path: str | None = None) -> pathlib.Path:
    """One RL run from the SFT checkpoint on the train split; its last step exported as a JAX checkpoint."""
    from omniagent_jax.train.rl.trainer import train

    rcfg = rl_config(cfg, init, train_rows, name, path)
    export = pathlib.Path(rcfg.output_dir) / "export_jax"
    if export.is_dir() and _has_tokenizer(export):
        log(f"rl: {export} exists, skipped")
        return export
    result = train(rcfg)
    last = result.history[max(result.history)] if result.history else {}
    log(f"rl ({name}): {result.steps} steps, last reward {last.get('reward/mean', float('nan')):.3f}")
    return with_tokenizer(export_rl(rcfg, export))


def export_rl(rcfg, out: pathlib.Path) -> pathlib.Path:
    """The RL run's last step (``rcfg.steps``) as a JAX checkpoint."""
    from omniagent_jax.toy.pipeline.export import export_checkpoint

    return export_checkpoint(rcfg.model_setup(), rcfg.output_dir, out, step=rcfg.steps, with_ref=rcfg.algo.kl != "none")


def stage_eval(cfg: PipelineConfig, model: pathlib.Path, test_rows: pathlib.Path, name: str) -> dict:
    """Greedy `omniagent eval` of ``model`` on the test split (resumable); its summary."""
    out = cfg.root / f"eval_{name}"
    summary_path = out / "summary.json"
    argv = ["eval", "--model", str(model), "--dataset", str(test_rows), "--output-dir", str(out), "--temperature", "0",
            "--max-new-tokens", str(cfg.eval_max_new_tokens), "--max-live", str(cfg.eval_max_live), "--seed", str(cfg.seed),
            "--max-batch", str(cfg.eval_max_live), "--no-compilation-cache", *settings.cli_flags()]
    if not (summary_path.is_file() and json.loads(summary_path.read_text())["num_samples"] == cfg.test_tasks):
        check_exit(run_omniagent(argv), f"eval of {model}")
    return json.loads(summary_path.read_text(encoding="utf-8"))


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Every stage in order (each skipped when done); per-stage seconds and the eval summaries, also written
    to ``run_dir/pipeline.json``."""
    times: dict[str, float] = {}

    def timed(name: str, fn: Callable, *a):
        t0 = time.perf_counter()
        log(f"stage {name}")
        value = fn(*a)
        times[name] = round(time.perf_counter() - t0, 1)
        return value

    cfg.root.mkdir(parents=True, exist_ok=True)
    rows = timed("data", stage_data, cfg)
    steps = timed("collect", stage_collect, cfg, rows["train"])
    sft_rows = timed("sft_data", stage_sft_data, cfg, steps)
    init = timed("init", stage_init, cfg)
    reader = timed("read", stage_read, cfg, init, rows["train"], sft_rows)
    sft = timed("sft", stage_sft, cfg, reader, sft_rows)
    summaries = {"sft": timed("eval_sft", stage_eval, cfg, sft, rows["test"], "sft")}
    rl = timed("rl", stage_rl, cfg, sft, rows["train"])
    summaries["taura"] = timed("eval_taura", stage_eval, cfg, rl, rows["test"], "taura")
    report = {"stage_seconds": times, "eval": summaries}
    (cfg.root / "pipeline.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
