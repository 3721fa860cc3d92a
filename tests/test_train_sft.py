"""SFT end to end: step-log rows → samples (media re-cut), the trainer's loss drop, kill-and-resume,
bad rows, metrics files, the reference file on synthetic videos."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
import yaml

import media_factory
from train_helpers import mixed_rows, text_row, write_jsonl
from omniagent_jax.processing import OmniProcessor, tokens
from omniagent_jax.train import sft, sft_data
from omniagent_jax.train.config import load_config
from omniagent_jax.train.metrics import read_records

SMALL_VOCAB = 512


@pytest.fixture(scope="module")
def processor():
    return OmniProcessor.from_pretrained()


def _cfg(tmp_path, train_file, *extra):
    return load_config(pathlib.Path(__file__).parents[1] / "configs/sft/tiny.yaml", [
        f"data.train_file={train_file}", f"output_dir={tmp_path / 'run'}", f"data.vocab_remap={SMALL_VOCAB}",
        "data.buckets=[128]", "data.max_length=128", "progress=false", "loss_chunk=256", *extra])


def test_encoder_targets_are_output_plus_im_end(processor):
    enc = sft_data.SampleEncoder(processor, data_root=".", max_length=1000)
    row = text_row(3)
    s = enc.encode(row)
    ids, labels = s["input_ids"], s["labels"]
    context = processor(row["raw_input"], add_generation_prompt=True)["input_ids"][0]
    target = processor.tokenizer.encode(row["output"], add_special_tokens=False) + [tokens.IM_END_ID]
    assert list(ids) == list(context) + target
    sel = labels != sft_data.IGNORE
    assert sel.sum() == len(target)
    assert list(labels[sel]) == target and list(ids[len(context):]) == target
    assert np.all(labels[: len(context) - 1] == sft_data.IGNORE)


def test_trajectory_mode_labels_every_assistant_turn(processor):
    row = text_row(1)
    row["raw_input"] += [{"role": "assistant", "content": [{"type": "text", "text": "first turn"}]},
                         {"role": "user", "content": [{"type": "text", "text": "more"}]}]
    step_s = sft_data.SampleEncoder(processor, data_root=".", max_length=1000).encode(row)
    traj_s = sft_data.SampleEncoder(processor, data_root=".", max_length=1000, mode="trajectory").encode(row)
    first = processor.tokenizer.encode("first turn", add_special_tokens=False) + [tokens.IM_END_ID]
    extra = (traj_s["labels"] != -1).sum() - (step_s["labels"] != -1).sum()
    assert extra == len(first)
    rows = [dict(text_row(0), step=s, traj_id="a") for s in (1, 2, 3)] + [dict(text_row(1), traj_id="b")]
    picked = sft_data.trajectory_rows(rows)
    assert sorted((r["traj_id"], r["step"]) for r in picked) == [("a", 3), ("b", 1)]


def test_recut_errors_are_sample_errors(tmp_path, processor):
    enc = sft_data.SampleEncoder(processor, data_root=str(tmp_path), max_length=100000)
    row = text_row(0)
    row["raw_input"][1]["content"] += [{"type": "text", "text": "Audio 0.00s-1.00s"}, {"type": "audio", "audio": "x.jpg"}]
    row["extra_info"]["video"] = "missing.mp4"
    with pytest.raises(sft_data.SampleError, match="unreadable video"):
        enc.encode(row)
    media_factory.make_video(tmp_path / "v.mp4", duration=2.0, fps=4, audio=False, width=32, height=32)
    row["extra_info"]["video"] = "v.mp4"
    with pytest.raises(sft_data.SampleError, match="audio re-cut failed"):
        enc.encode(row)  # the video has no audio stream
    row["raw_input"][1]["content"] = [{"type": "image", "image": "x.jpg"}]
    with pytest.raises(sft_data.SampleError, match="Frame t s"):
        enc.encode(row)
    with pytest.raises(sft_data.SampleError, match="malformed JSON"):
        sft_data.parse_line("{not json", "line 1")
    with pytest.raises(sft_data.SampleError, match="exceed max_length"):
        sft_data.SampleEncoder(processor, data_root=".", max_length=10).encode(text_row(0))


def test_loss_halves_within_200_steps_and_metrics_are_written(tmp_path, processor):
    rows = [text_row(i) for i in range(8)]
    rows.insert(3, "{broken json")  # a malformed row: counted, skipped, the run goes on
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = _cfg(tmp_path, f, "max_steps=200", "data.batch_size=8", "optim.lr=3e-3", "optim.warmup_ratio=0.05",
               "checkpoint.every=0", "log_every=1")
    res = sft.train(cfg, processor=processor)
    losses = [res.losses[s] for s in sorted(res.losses)]
    assert len(losses) == 200
    first = losses[0]
    hit = next(i for i, l in enumerate(losses) if l <= 0.5 * first)
    assert hit < 200 and losses[-1] < 0.5 * first, (first, losses[-1])
    assert res.bad_rows >= 1
    out = pathlib.Path(res.output_dir)
    cfg_saved = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg_saved["optim"]["lr"] == 3e-3 and cfg_saved["data"]["batch_size"] == 8
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(recs) == 200 and recs[0]["step"] == 1 and recs[-1]["bad_rows"] >= 1 and recs[5]["tokens_per_second"] > 0
    ev = list((out / "tensorboard").glob("events.out.tfevents.*"))
    payloads = read_records(ev[0])  # CRC-checked TFRecord framing
    assert len(payloads) == 201 and b"brain.Event:2" in payloads[0] and b"loss" in payloads[1]


def test_kill_and_resume_matches_uninterrupted(tmp_path, processor):
    rows = [text_row(i) for i in range(8)]
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    common = ["max_steps=6", "data.batch_size=2", "data.grad_accum=2", "optim.lr=3e-3", "checkpoint.every=1",
              "checkpoint.keep=2", "epochs=1"]
    full = sft.train(_cfg(tmp_path / "a", f, *common), processor=processor)
    sft.train(_cfg(tmp_path / "b", f, *common), processor=processor, stop_after=3)  # "killed" after step 3
    resumed = sft.train(_cfg(tmp_path / "b", f, *common), processor=processor)
    assert sorted(resumed.losses) == [4, 5, 6]
    for s in (4, 5, 6):
        assert abs(resumed.losses[s] - full.losses[s]) <= 1e-6, (s, resumed.losses[s], full.losses[s])
    # The match is not trivial: the losses do change from step to step.
    assert len({round(full.losses[s], 6) for s in (4, 5, 6)}) == 3


def test_reference_sft_file_trains_on_synthetic_videos(tmp_path, processor, shared_reference):
    src = shared_reference / "example_train_sft.jsonl"
    lines = src.read_text().splitlines()
    made = set()
    for line in lines:
        info = json.loads(line)["extra_info"]
        if info["video"] not in made:
            (tmp_path / info["video"]).parent.mkdir(parents=True, exist_ok=True)
            media_factory.make_video(tmp_path / info["video"], duration=info["duration_seconds"], fps=info["fps"],
                                     audio=info["has_audio"], width=32, height=32)
            made.add(info["video"])
    cfg = load_config(pathlib.Path(__file__).parents[1] / "configs/sft/tiny.yaml", [
        f"data.train_file={src}", f"data.data_root={tmp_path}", f"output_dir={tmp_path / 'run'}", "progress=false",
        f"max_steps={len(lines)}", "data.shuffle=false", "checkpoint.every=0", "loss_chunk=512", "data.vocab_remap=4096",
        "data.buckets=[4096,8192]"])
    res = sft.train(cfg, processor=processor)
    assert res.bad_rows == 0 and res.steps == len(lines) == 12
    losses = np.array([res.losses[s] for s in sorted(res.losses)])
    assert np.all(np.isfinite(losses)) and np.all(losses > 0)
