"""`omniagent sweep` (sweep.csv, a non-blank sweep.png, finished budgets reused) and `omniagent collect` +
`export-sft` on scripted policies: best-of-N stops at the first win, every attempt's step log is kept,
export keeps exactly the trajectories the reference's filter keeps, and the SFT trainer reads them."""

from __future__ import annotations

import csv
import json
import pathlib
from collections import OrderedDict

import eval_helpers as h
import numpy as np
import pytest
from agent_helpers import answer, frames
from PIL import Image

from omniagent_jax.agent.policy import ScriptedPolicy
from omniagent_jax.cli import main
from omniagent_jax.eval.collect import collect_command, max_attempts
from omniagent_jax.eval.dataset import load_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("collect")
    return h.make_dataset(root / "data"), h.scripts_file(root / "scripts.json")


def test_sweep_writes_its_csv_and_a_plot_and_reuses_finished_budgets(data, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--dataset", str(data[0]), "--output-dir", str(out), "--fixed-steps", "--no-progress",
            "--policy", "scripted", "--scripted-outputs", str(data[1]), "--sample-indices", "0-4"]
    assert main([*argv, "--max-steps", "1,2,4"]) == 0
    with (out / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["max_steps"]) for r in rows] == [1, 2, 4]
    acc = [float(r["accuracy_reward_gt_0_5"]) for r in rows]
    assert acc[0] == 0.0 and acc[1] == acc[2] == pytest.approx(0.8)  # every script answers on its second turn
    assert [float(r["avg_steps"]) for r in rows] == [1.0, 2.0, 2.0]
    image = Image.open(out / "sweep.png")
    assert image.size == (768, 504)
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    assert (pixels.min(axis=1) < 200).mean() > 0.02  # lines, axes and text, not a blank canvas
    blue, orange = np.array([31, 119, 180]), np.array([255, 127, 14])  # the two curves' colours
    assert (np.abs(pixels - blue).sum(axis=1) < 30).sum() > 200 and (np.abs(pixels - orange).sum(axis=1) < 30).sum() > 200
    capsys.readouterr()
    assert main([*argv, "--max-steps", "2,6"]) == 0
    text = capsys.readouterr().out
    assert "5 samples (shard 0/1), 5 already done, 0 to play" in text and "0 already done, 5 to play" in text
    assert main([*argv, "--max-steps", "2,2"]) == 2


def reference_filter(lines, max_steps):
    """The reference's filter_and_export_sft.py selection, restated: per (question, answer, video) the last
    won trajectory (else the last), its steps without error codes, written when won and <= max_steps."""
    trajectories, by_sample = OrderedDict(), OrderedDict()
    for s in lines:
        trajectories.setdefault(s["traj_id"], []).append(s)
        info = s["extra_info"]
        key = (info.get("question", ""), str(info.get("answer", "")), info.get("video", ""))
        if s["traj_id"] not in by_sample.setdefault(key, []):
            by_sample[key].append(s["traj_id"])
    kept = {next((t for t in reversed(ts) if trajectories[t][-1]["extra_info"].get("won")), ts[-1])
            for ts in by_sample.values()}
    out = []
    for tid, steps in trajectories.items():
        clean = [s for s in steps if not s["extra_info"].get("error_code")]
        if tid in kept and clean and steps[-1]["extra_info"].get("won") and len(steps) <= max_steps:
            out.extend(clean)
    return out


def test_collect_best_of_n_and_export_keep_what_the_reference_filter_keeps(data, tmp_path, capsys):
    wrong, right = [frames(0.0, 2.0, 2), answer("B")], [frames(0.0, 2.0, 2), answer("A")]
    scripts = {"0.1": wrong, "0.2": ["oops", *right], "0.3": right,  # wins at its 2nd attempt (with an invalid turn)
               "1.1": wrong[:1] + [answer("A")], "1.2": [frames(1.0, 2.0, 1), answer("A")], "1.3": right,  # never wins (B)
               "2.1": h.SAMPLES[2][1], "5.1": right, "6.1": [frames(0.0, 1.0, 1), RuntimeError("teacher down")],
               "6.2": right}
    out = tmp_path / "collect"
    args = h.eval_args(data[0], out, "--sample-indices", "0,1,2,5,6", "--attempts", "3", command="collect")
    assert collect_command(args, ScriptedPolicy(scripts)) == 0
    rows = {r["sample_index"]: r for r in h.read_results(out / "results.jsonl")}
    assert {i: (r["attempts"], r["win"], r["status"]) for i, r in rows.items()} == {
        0: (2, True, "ok"), 1: (3, False, "ok"), 2: (1, True, "ok"), 5: (3, False, "error"), 6: (2, True, "ok")}
    steps = h.read_results(out / "steps.jsonl")
    attempts = OrderedDict()
    for s in steps:
        attempts.setdefault(s["question_id"], []).append(s["step"])
    # every played attempt's steps (the errored ones excepted), in the reference's question_id form
    assert sorted(attempts) == ["v_0_0_1", "v_0_0_2", "v_1_0_1", "v_1_0_2", "v_1_0_3", "v_2_0_1", "v_6_0_2"]
    assert attempts["v_0_0_2"] == [1, 2, 3] and {s["done"] for s in steps} == {"True", "False"}
    assert len({s["traj_id"] for s in steps}) == 7

    sft = tmp_path / "sft.jsonl"
    assert main(["export-sft", str(out / "steps.jsonl"), "--out", str(sft), "--max-steps", "3"]) == 0
    report = capsys.readouterr().out
    exported = h.read_results(sft)
    assert exported == reference_filter(steps, 3)
    assert {s["question_id"] for s in exported} == {"v_0_0_2", "v_2_0_1", "v_6_0_2"}
    assert "kept SFT trajectories (won): 3" in report and "unique samples: 4" in report
    assert main(["export-sft", str(out / "steps.jsonl"), "--out", str(tmp_path / "s2.jsonl"), "--max-steps", "2"]) == 0
    assert {s["question_id"] for s in h.read_results(tmp_path / "s2.jsonl")} == {"v_2_0_1", "v_6_0_2"}

    # the SFT data reader takes every exported row (media re-cut from the videos named in them)
    from omniagent_jax.processing import OmniProcessor
    from omniagent_jax.train.sft_data import SampleEncoder

    encoder = SampleEncoder(OmniProcessor.from_pretrained(), data_root="", max_length=16384)
    encoded = [encoder.encode(row) for row in exported]
    assert all(e["input_ids"].size > 100 for e in encoded)
    # and `omniagent train sft` checks the file as its run would read it (a real run: docs/protocol.md §11)
    config = pathlib.Path(__file__).resolve().parents[1] / "configs" / "sft" / "tiny.yaml"
    assert main(["train", "sft", "--config", str(config), "--dry-run", f"data.train_file={sft}", "data.data_root=",
                 f"output_dir={tmp_path / 'run'}"]) == 0

    # a rerun finds every sample done; a kill between a sample's step lines and its row replays that sample
    assert collect_command(args, ScriptedPolicy({})) == 0
    assert h.read_results(out / "steps.jsonl") == steps
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(line for line in lines if json.loads(line)["sample_index"] != 2) + "\n")
    assert collect_command(args, ScriptedPolicy({"2.1": h.SAMPLES[2][1]})) == 0
    assert sorted(map(json.dumps, h.read_results(out / "steps.jsonl"))) == sorted(map(json.dumps, steps))


def test_collect_arguments_and_export_errors(data, tmp_path, capsys):
    items = load_dataset(data[0])
    assert max_attempts(-1, items[0]) == 3 and max_attempts(-1, items[2]) == 5 and max_attempts(4, items[0]) == 4
    args = h.eval_args(data[0], tmp_path / "c", "--attempts", "0", command="collect")
    assert collect_command(args, ScriptedPolicy({})) == 2
    assert "--attempts must be >= 1 or -1" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"traj_id": "t", "step": 1, "extra_info": {}}\n[1, 2]\n')
    assert main(["export-sft", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"{bad}:2: not a step-log line" in capsys.readouterr().err
    assert main(["export-sft", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert main(["export-sft", str(bad), "--out", str(tmp_path), "--max-steps", "3"]) == 2
    assert "is a directory" in capsys.readouterr().err
