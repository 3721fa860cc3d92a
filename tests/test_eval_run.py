"""`omniagent eval` on synthetic videos with scripted policies: every output file, summaries equal to a
by-hand computation from results.jsonl, error rows (corrupt video, policy failure, timeout) counted and
never dropped, resume rules, kills at deterministic points (one mid-line) and a real SIGKILL resumed to
the uninterrupted run's rows, two shards merged equal to one run."""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time

import eval_helpers as h
import pytest

from omniagent_jax.agent.policy import ScriptedPolicy
from omniagent_jax.cli import main
from omniagent_jax.eval import results_file
from omniagent_jax.eval.command import eval_command
from omniagent_jax.eval.rows import comparable_row

HERE = pathlib.Path(__file__).resolve().parent
FILES = ("results.jsonl", "summary.json", "summary.csv", "samples.csv", "breakdowns.json", "summary_by_question_type.csv",
         "summary_by_ability.csv", "summary_by_data_source.csv", "run_metadata.json")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return h.make_dataset(root / "data"), h.scripts_file(root / "scripts.json")


def scripted(data, out, *extra):
    return h.eval_args(data[0], out, "--policy", "scripted", "--scripted-outputs", str(data[1]), *extra)


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory):
    """The uninterrupted run: its rows by sample index, comparable form."""
    out = tmp_path_factory.mktemp("baseline")
    assert eval_command(scripted(data, out)) == 0
    return out, {r["sample_index"]: comparable_row(r) for r in h.read_results(out / "results.jsonl")}


def assert_same_rows(out: pathlib.Path, baseline) -> None:
    rows = h.read_results(out / "results.jsonl")
    assert sorted(r["sample_index"] for r in rows) == list(range(h.N))  # every sample exactly once
    assert {r["sample_index"]: comparable_row(r) for r in rows} == baseline[1]


def test_eval_writes_every_file_and_its_summary_equals_a_by_hand_computation(baseline):
    out, _ = baseline
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    rows = h.read_results(out / "results.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    ok = [r for r in rows if r["status"] == "ok"]
    errors = {r["sample_index"]: r for r in rows if r["status"] == "error"}
    assert set(errors) == h.ERROR_INDICES and summary["num_error"] == 2 and summary["num_samples"] == h.N
    assert errors[5]["error_class"] == "MediaError" and "corrupt.mp4" in errors[5]["error_message"]
    assert errors[6]["error_class"] == "PolicyError" and errors[6]["steps_used"] == 1  # failed on its second turn
    assert summary["error_classes"] == {"MediaError": 1, "PolicyError": 1}
    by_index = {r["sample_index"]: r for r in rows}
    assert by_index[0]["correct"] and not by_index[1]["correct"] and by_index[7]["scored"] is False
    assert by_index[2]["total_reward"] == pytest.approx(0.75)  # IoU of [1.5, 3] with [1, 3]
    assert by_index[3]["total_reward"] == pytest.approx(0.6)  # MRA of 2.5 against 2.0
    # by hand, from results.jsonl
    assert summary["accuracy_reward_gt_0_5"] == pytest.approx(sum(r["total_reward"] > 0.5 for r in ok) / len(ok))
    assert summary["avg_reward"] == pytest.approx(statistics.mean(r["total_reward"] for r in ok))
    assert summary["avg_steps"] == pytest.approx(statistics.mean(r["steps_used"] for r in ok))
    assert summary["tr_mean_iou"] == pytest.approx(0.75) and summary["size_mra"] == pytest.approx(0.6)
    assert summary["num_mra"] == pytest.approx(1.0) and summary["mcq_accuracy"] == pytest.approx(0.5)
    assert summary["tool_usage_counts"] == {"get_frames": 3, "get_audio": 1, "get_clip": 1, "answer": 6, "invalid": 1}
    assert summary["samples_per_minute"] > 0 and "tokens_reused_ratio" in summary
    groups = json.loads((out / "breakdowns.json").read_text())
    for qtype, metrics in groups["question_type"].items():
        mine = [r for r in rows if r["question_type"] == qtype]
        mine_ok = [r for r in mine if r["status"] == "ok"]
        assert metrics["num_samples"] == len(mine) and metrics["num_error"] == len(mine) - len(mine_ok)
        assert metrics["avg_reward"] == pytest.approx(statistics.mean(r["total_reward"] for r in mine_ok))
    assert set(groups["ability"]) == {"perception", "reasoning", "temporal", "spatial", "UNKNOWN"}
    with (out / "summary_by_question_type.csv").open() as f:
        assert {r["question_type"] for r in csv.DictReader(f)} == {"MCQ", "TR", "SIZE", "NUM", "FF"}
    with (out / "samples.csv").open() as f:
        assert len(list(csv.DictReader(f))) == h.N
    meta = json.loads((out / "run_metadata.json").read_text())
    assert meta["versions"]["python"] and len(meta["dataset_sha256"]) == 64 and meta["result_config"]["max_steps"] == 4
    step = by_index[0]["steps"][0]
    assert step["action_type"] == "get_frames" and step["requested_num_frames"] == 2 and step["frame_count"] == 2
    assert by_index[0]["media_usage"]["total_returned_frames"] == 2 and by_index[0]["final_history"]["messages"]


def test_resume_skips_finished_samples_retries_errors_and_refuses_another_configuration(data, baseline, tmp_path, capsys):
    out = tmp_path / "out"
    args = scripted(data, out, "--max-samples", "3")
    args.progress = True
    assert eval_command(args) == 0
    bar = capsys.readouterr().err  # the progress bar's last state: accuracy so far, errors, samples/min
    assert "3/3" in bar and "acc=0.667, err=0, per_min=" in bar
    assert eval_command(scripted(data, out)) == 0  # the other 5 samples join
    assert_same_rows(out, baseline)
    assert "3 already done, 5 to play" in capsys.readouterr().out
    # --retry-errors plays the error rows again; the file keeps one row per sample
    assert eval_command(scripted(data, out, "--retry-errors")) == 0
    assert "6 already done, 2 to play" in capsys.readouterr().out
    assert_same_rows(out, baseline)
    assert len((out / "results.jsonl").read_text().splitlines()) == h.N
    assert eval_command(scripted(data, out, "--temperature", "0.5")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("omniagent eval: error:") and "temperature: 1.0 -> 0.5" in err and "\n" not in err
    assert eval_command(scripted(data, out, "--temperature", "0.5", "--force")) == 0


@pytest.mark.parametrize("argv, message", [
    (["--sample-indices", "1,99"], "not in the dataset"),
    (["--sample-indices", "3-1"], "is not an index or a range"),
    (["--num-shards", "2", "--shard-index", "2"], "--shard-index must be in [0, --num-shards)"),
    (["--sample-timeout", "0"], "--sample-timeout must be > 0"),
    (["--video", "x.mp4"], "reads its questions from --dataset"),
    (["--max-live", "0"], "--max-live must be >= 1"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--num-shards", "0"], "--num-shards must be >= 1"),
    (["--sample-indices", "2,2"], "an index is listed twice"),
    (["--dataset", "/nonexistent/data.jsonl"], "--dataset: cannot read /nonexistent/data.jsonl"),
    (["--output-dir", str(pathlib.Path(__file__))], "is a file"),
])
def test_bad_arguments_exit_2_with_one_line(data, tmp_path, capsys, argv, message):
    assert eval_command(scripted(data, tmp_path / "o", *argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("omniagent eval: error:") and message in err and "\n" not in err


def test_missing_flags_and_bad_scripts_exit_2(data, tmp_path, capsys):
    args = scripted(data, tmp_path / "o")
    for name, message in (("dataset", "--dataset is required"), ("output_dir", "--output-dir is required")):
        assert eval_command(argparse.Namespace(**{**vars(args), name: None})) == 2
        assert message in capsys.readouterr().err
    assert eval_command(h.eval_args(data[0], tmp_path / "o", "--scripted-outputs", str(data[1]))) == 2
    assert "--scripted-outputs needs --policy scripted" in capsys.readouterr().err
    for text, message in (("{oops", "is not a JSON object"), ('{"0": "not a list"}', "every value must be a list of strings")):
        bad = tmp_path / "scripts.json"
        bad.write_text(text)
        assert eval_command(h.eval_args(data[0], tmp_path / "o", "--policy", "scripted", "--scripted-outputs", str(bad))) == 2
        assert message in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert eval_command(scripted(data, tmp_path / "o3", "--dataset", str(empty))) == 2
    assert "holds no rows" in capsys.readouterr().err
    assert main(["eval", "merge", str(tmp_path)]) == 2 and "--output-dir is required" in capsys.readouterr().err
    (tmp_path / "norows").mkdir()
    assert main(["eval", "merge", str(tmp_path / "norows"), "--output-dir", str(tmp_path / "m")]) == 2
    assert "holds no results.jsonl" in capsys.readouterr().err
    assert main(["sweep", "--dataset", str(data[0]), "--max-steps", "2"]) == 2
    assert "--output-dir is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--dataset", str(data[0]), "--output-dir", str(tmp_path / "s"), "--max-steps", "2,x"])
    assert "not a comma-separated list of integers" in capsys.readouterr().err
    assert main(["export-sft", str(data[0]), "--out", str(tmp_path / "x.jsonl"), "--max-steps", "0"]) == 2
    assert "--max-steps must be >= 1" in capsys.readouterr().err


def test_a_broken_dataset_or_results_file_is_a_clear_error(data, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4", "question_type": "MCQ", "question": "q?", "options": ["A. x"], "answer": "A"}\n{oops\n')
    assert eval_command(h.eval_args(bad, tmp_path / "o", "--policy", "scripted", "--scripted-outputs", str(data[1]))) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    out = tmp_path / "o2"
    out.mkdir()
    (out / "results.jsonl").write_text('{"sample_index": 0}\nnot json\n')
    assert eval_command(scripted(data, out)) == 2
    assert "results.jsonl:2 is not a results row" in capsys.readouterr().err
    (out / "results.jsonl").write_text('{"sample_index": "0"}\n')
    assert eval_command(scripted(data, out)) == 2
    assert "sample_index must be an integer" in capsys.readouterr().err
    (out / "results.jsonl").write_text("")
    (out / "run_metadata.json").write_text("{not json")
    assert eval_command(scripted(data, out)) == 2
    assert "run_metadata.json is not valid JSON" in capsys.readouterr().err
    row = dict(h.SAMPLES[2][0], answer="soon")
    bad.write_text(json.dumps(row) + "\n")
    assert eval_command(h.eval_args(bad, tmp_path / "o4", "--policy", "scripted", "--scripted-outputs", str(data[1]))) == 2
    assert f"{bad}:1: bad TR answer 'soon'" in capsys.readouterr().err


class SimulatedKill(BaseException):
    """Stops the run where a kill would (BaseException: nothing on the way catches it)."""


@pytest.mark.parametrize("point, nth", [("before_write", 1), ("mid_write", 3), ("after_write", 5)])
def test_killed_at_a_deterministic_point_and_resumed_equals_the_uninterrupted_run(data, baseline, tmp_path, monkeypatch,
                                                                                 point, nth):
    calls = []

    def hook(where, index):
        calls.append(where)
        if where == point and calls.count(point) == nth:
            raise SimulatedKill(index)

    out = tmp_path / "out"
    monkeypatch.setattr(results_file, "kill_hook", hook)
    with pytest.raises(SimulatedKill):
        eval_command(scripted(data, out))
    text = (out / "results.jsonl").read_bytes()
    assert text.count(b"\n") == nth - 1 + (point == "after_write")
    assert (point == "mid_write") == (bool(text) and not text.endswith(b"\n"))  # a torn last line
    monkeypatch.setattr(results_file, "kill_hook", None)
    assert eval_command(scripted(data, out)) == 0
    assert_same_rows(out, baseline)


KILLED_CHILD = """
import pathlib, sys, time
from omniagent_jax.cli import main
from omniagent_jax.eval import results_file
marker = pathlib.Path(sys.argv[1])
def hook(where, index, seen=[]):
    seen.append(where)
    if where == "mid_write" and seen.count("mid_write") == 3:  # half of the third row is on disk
        marker.write_text("now")
        time.sleep(60)
results_file.kill_hook = hook
sys.exit(main(sys.argv[2:]))
"""


def test_a_real_sigkill_mid_line_then_a_rerun_equals_the_uninterrupted_run(data, baseline, tmp_path):
    out, marker = tmp_path / "out", tmp_path / "marker"
    argv = ["eval", "--dataset", str(data[0]), "--output-dir", str(out), "--fixed-steps", "--max-steps", "4", "--no-progress",
            "--policy", "scripted", "--scripted-outputs", str(data[1])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(marker), *argv], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL
    assert not (out / "results.jsonl").read_bytes().endswith(b"\n")  # killed in the middle of a line
    rerun = subprocess.run([sys.executable, "-m", "omniagent_jax.cli", *argv], env=env, capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 already done, 6 to play" in rerun.stdout
    assert_same_rows(out, baseline)


def test_two_shards_merged_equal_one_run(data, baseline, tmp_path, capsys):
    shared = tmp_path / "shared"
    for k in (0, 1):
        assert eval_command(scripted(data, shared, "--num-shards", "2", "--shard-index", str(k))) == 0
        assert (shared / f"results.shard-{k}.jsonl").exists() and (shared / f"summary.shard-{k}.json").exists()
    assert_same_rows(shared, baseline)  # the second shard to finish wrote the combined files
    want = json.loads((baseline[0] / "summary.json").read_text())
    got = json.loads((shared / "summary.json").read_text())
    for key in ("num_samples", "num_error", "accuracy_reward_gt_0_5", "avg_reward", "avg_steps", "tool_usage_counts",
                "tr_mean_iou", "error_classes"):
        assert got[key] == want[key], key
    assert json.loads((shared / "breakdowns.json").read_text())["question_type"].keys() == \
        json.loads((baseline[0] / "breakdowns.json").read_text())["question_type"].keys()
    # shards on two hosts: two directories, merged by `omniagent eval merge`
    for k in (0, 1):
        assert eval_command(scripted(data, tmp_path / f"host{k}", "--num-shards", "2", "--shard-index", str(k))) == 0
    merged = tmp_path / "merged"
    assert main(["eval", "merge", str(tmp_path / "host0"), str(tmp_path / "host1"), "--output-dir", str(merged)]) == 0
    assert_same_rows(merged, baseline)
    assert json.loads((merged / "summary.json").read_text())["avg_reward"] == want["avg_reward"]
    for name in FILES[:-1]:
        assert (merged / name).exists(), name
    # runs of different configurations are not merged without --force
    assert eval_command(scripted(data, tmp_path / "other", "--max-steps", "3")) == 0
    assert main(["eval", "merge", str(merged), str(tmp_path / "other"), "--output-dir", str(tmp_path / "m2")]) == 2
    assert "different configurations" in capsys.readouterr().err
    assert main(["eval", "merge", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "m3")]) == 2


class SlowScripted(ScriptedPolicy):
    def generate(self, messages, *, unchanged_prefix=0, seed=None):
        time.sleep(0.4)
        return super().generate(messages, unchanged_prefix=unchanged_prefix, seed=seed)


def test_an_episode_past_the_sample_timeout_is_an_error_row(data, tmp_path):
    out = tmp_path / "out"
    policy = SlowScripted({"0": [h.SAMPLES[0][1][0], h.SAMPLES[0][1][1]]})
    assert eval_command(h.eval_args(data[0], out, "--sample-indices", "0", "--sample-timeout", "0.2"), policy) == 0
    (row,) = h.read_results(out / "results.jsonl")
    assert row["status"] == "error" and row["error_class"] == "EpisodeTimeout" and row["steps_used"] <= 1
    assert json.loads((out / "summary.json").read_text())["error_classes"] == {"EpisodeTimeout": 1}


def test_the_multi_gpu_launcher_runs_one_shard_per_gpu_into_one_directory(data, baseline, tmp_path):
    script = str(HERE.parent / "launch" / "eval_multi_gpu.sh")
    out = tmp_path / "out"
    args = ["--", "--dataset", str(data[0]), "--output-dir", str(out), "--fixed-steps", "--max-steps", "4",
            "--policy", "scripted", "--scripted-outputs", str(data[1])]
    env = {**os.environ, "GPU_IDS": "3,5", "OMNIAGENT": str(pathlib.Path(sys.executable).parent / "omniagent")}
    dry = subprocess.run(["bash", script, "--dry-run", *args], env=env, capture_output=True, text=True, timeout=30)
    assert dry.returncode == 0, dry.stderr
    assert "2 process(es) on GPUs 3,5, shards 0..1 of 2" in dry.stdout
    assert "CUDA_VISIBLE_DEVICES=5" in dry.stdout and "--num-shards 2 --shard-index 1" in dry.stdout
    assert not out.exists()
    run = subprocess.run(["bash", script, "--log-dir", str(tmp_path / "logs"), *args], env=env, capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, run.stderr + (tmp_path / "logs" / "shard-0.log").read_text()
    assert_same_rows(out, baseline)
    assert {r["gpu_id"] for r in h.read_results(out / "results.jsonl")} == {"3", "5"}
    bad = subprocess.run(["bash", script, "--shard-offset", "1", *args], env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "exceeds --total-shards" in bad.stderr


def test_a_video_that_fails_to_decode_mid_episode_is_an_error_row(tmp_path):
    import media_factory

    good = media_factory.make_video(tmp_path / "good.mp4", duration=4.0, fps=10, gop=8, width=32, height=32)
    media_factory.make_corrupted(good, tmp_path / "bad.mp4", at=0.8)  # opens; its later frames do not decode
    dataset = tmp_path / "data.jsonl"
    row = {"video": "bad.mp4", "question_type": "MCQ", "question": "q?", "options": ["A. x", "B. y"], "answer": "A"}
    dataset.write_text(json.dumps(row) + "\n")
    policy = ScriptedPolicy({"0": [h.frames(3.0, 3.9, 2), h.answer("A")]})
    assert eval_command(h.eval_args(dataset, tmp_path / "out"), policy) == 0
    (result,) = h.read_results(tmp_path / "out" / "results.jsonl")
    assert result["status"] == "error" and result["end_reason"] == "MEDIA_DECODE_FAIL" and result["steps_used"] == 1
    assert result["error_class"] == "MediaError" and "bad.mp4" in result["error_message"] and not result["correct"]


def test_judge_scores_free_form_answers(data, tmp_path, monkeypatch):
    from omniagent_jax.agent import judge

    asked = []

    def fake_judge(question, prediction, answer):
        asked.append((question, prediction, answer))
        return 1.0

    monkeypatch.setattr(judge.LLMJudge, "from_env", classmethod(lambda cls, **kw: fake_judge))
    assert eval_command(scripted(data, tmp_path / "out", "--sample-indices", "7", "--judge")) == 0
    (row,) = h.read_results(tmp_path / "out" / "results.jsonl")
    assert row["scored"] and row["correct"] and asked == [("Describe it.", "squares", "squares")]


def test_relative_video_paths_resolve_under_the_video_root(data, tmp_path):
    moved = tmp_path / "elsewhere" / "data.jsonl"
    moved.parent.mkdir()
    moved.write_text(data[0].read_text())
    args = h.eval_args(moved, tmp_path / "out", "--policy", "scripted", "--scripted-outputs", str(data[1]),
                       "--sample-indices", "0", "--video-root", str(data[0].parent))
    assert eval_command(args) == 0
    (row,) = h.read_results(tmp_path / "out" / "results.jsonl")
    assert row["status"] == "ok" and row["video"] == str(data[0].parent / "a.mp4")
    assert eval_command(h.eval_args(moved, tmp_path / "o2", "--policy", "scripted", "--scripted-outputs", str(data[1]),
                                    "--sample-indices", "0")) == 0  # default root: the dataset's folder, no video there
    assert h.read_results(tmp_path / "o2" / "results.jsonl")[0]["error_class"] == "MediaError"
