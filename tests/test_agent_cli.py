"""``omniagent run`` (the agent's half: ``add_run_arguments`` + ``run_command``) on real synthetic videos."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys

import agent_helpers as h
import media_factory
import pytest

from omniagent_jax.agent import prompts
from omniagent_jax.agent.cli import add_run_arguments, run_command
from omniagent_jax.agent.policy import ScriptedPolicy

LATEST_RUN_KEYS = {"video", "question", "gt_answer", "final_answer", "question_type", "options", "source_label",
                   "dataset_name", "video_name", "total_steps", "runtime_config", "env_snapshot", "messages", "steps",
                   "kvcache"}


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return media_factory.make_video(tmp_path_factory.mktemp("cli") / "clip.mp4", duration=8.0, fps=10.0, width=32,
                                    height=32, audio=True, gop=10)


def parse(argv):
    return add_run_arguments(argparse.ArgumentParser()).parse_args(argv)


def run(argv, policy=None, **kw):
    out, err = io.StringIO(), io.StringIO()
    old = sys.stderr
    sys.stderr = err
    try:
        code = run_command(parse(argv), policy, out=out, **kw)
    finally:
        sys.stderr = old
    return code, out.getvalue(), err.getvalue()


def write_script(path, turns):
    path.write_text("\n".join(turns) + "\n")
    return str(path)


def test_scripted_run_writes_complete_latest_run(video, tmp_path):
    turns = [h.frames(0, 8, 4, observation="four gray frames"), h.audio(0, 4, observation="a 440 Hz tone"),
             h.clip(2, 6, observation="brightness rises"), h.answer("B", confidence=0.95)]
    output = tmp_path / "inference_output" / "latest_run.json"
    code, out, err = run(["--video", str(video), "--question", "Which tone?", "--options", "A. none", "B. 440 Hz",
                          "--answer", "B", "--policy", "scripted", "--scripted-outputs", write_script(tmp_path / "s.txt", turns),
                          "--output", str(output)])
    assert code == 0, err
    for needle in ("[Step 1/5] get_frames 0.00s-8.00s num=4", "observation: four gray frames",
                   "[Step 2/5] get_audio 0.00s-4.00s", "[Step 3/5] get_clip 2.00s-6.00s", "[Step 4/5] answer 'B'",
                   "confidence=0.95", "reward=1.0000", "gen=", "env=", "final answer: 'B'", f"saved {output}"):
        assert needle in out, needle
    rec = json.loads(output.read_text())
    assert LATEST_RUN_KEYS <= set(rec)
    assert rec["gt_answer"] == "B" and rec["final_answer"] == "B" and rec["question_type"] == "MCQ"
    assert rec["options"] == ["A. none", "B. 440 Hz"] and rec["total_steps"] == 4 and rec["won"] is True
    assert [s["action_type"] for s in rec["steps"]] == ["get_frames", "get_audio", "get_clip", "answer"]
    assert rec["steps"][2]["media"]["kind"] == "clip" and rec["steps"][2]["media"]["has_audio"] is True
    assert rec["runtime_config"]["effective_max_steps"] == 5 and rec["runtime_config"]["max_audio_seconds"] == 300
    assert rec["video_info"]["duration"] == pytest.approx(8.0, abs=0.05)
    msgs = rec["messages"]
    assert msgs[0]["role"] == "system" and "(Max 60 frames)" in msgs[0]["content"][0]["text"]
    assert msgs[-1]["content"][0]["text"] == "CORRECT ANSWER"


def test_policy_object_and_default_output(video, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    policy = ScriptedPolicy([h.frames(0, 1, 2), "not json", h.answer("white")])
    code, out, _ = run(["--video", str(video), "--question", "What color?", "--fixed-steps", "--max-steps", "6"], policy)
    assert code == 0
    assert "error: INVALID_JSON: must start with '{' and end with '}'." in out
    rec = json.loads((tmp_path / "inference_output" / "latest_run.json").read_text())
    assert rec["question_type"] == "FF" and rec["final_answer"] == "white" and rec["scored"] is False
    assert rec["policy"] == "ScriptedPolicy" and rec["runtime_config"]["effective_max_steps"] == 6
    assert "(not scored)" in out


def test_token_counter_turns_on_the_token_limit(video, tmp_path):
    def count(messages):
        return 40 * len(messages)

    policy = ScriptedPolicy([h.frames(0, 1, 2), h.frames(1, 2, 2), h.answer("A")])
    code, out, err = run(["--video", str(video), "--question", "q", "--options", "A. a", "--max-prompt-tokens", "200",
                          "--output", str(tmp_path / "o.json")], policy, token_counter=count)
    assert code == 0, err
    rec = json.loads((tmp_path / "o.json").read_text())
    # 4 messages after step 1 = 160 tokens <= 200 - 32; 6 after step 2 = 240 > 168
    assert rec["end_reason"] == "TOKEN_LIMIT_EXCEEDED" and rec["total_steps"] == 2
    assert "error: TOKEN_LIMIT_EXCEEDED: Prompt length 240 > 200" in out
    assert rec["runtime_config"]["max_prompt_tokens"] == 200
    code, _, err = run(["--video", str(video), "--question", "q", "--max-prompt-tokens", "0"], ScriptedPolicy([]),
                       token_counter=count)
    assert code == 2 and "--max-prompt-tokens must be positive" in err


def test_system_prompt_file_and_limits(video, tmp_path):
    tpl = tmp_path / "prompt.txt"
    tpl.write_text("Frames up to {max_frames}, audio {max_audio}s, clips {max_clip}s. {max_frames}")
    policy = ScriptedPolicy([h.frames(0, 1, 2), h.answer("A")])
    code, _, err = run(["--video", str(video), "--question", "q", "--options", "A. a\nB. b", "--max-frames", "12",
                        "--max-audio", "150.0", "--max-clip", "30", "--system-prompt-file", str(tpl),
                        "--output", str(tmp_path / "o.json")], policy)
    assert code == 0, err
    assert policy.inputs[0][0]["content"][0]["text"] == "Frames up to 12, audio 150.0s, clips 30s. 12"
    assert "\nOptions:\nA. a\nB. b\n" in policy.inputs[0][1]["content"][0]["text"]


@pytest.mark.parametrize("argv_tail,msg", [
    (["--question-type", "ESSAY"], "unknown question_type"),
    (["--question-type", "MCQ"], "needs options (pass them with --options)"),
    (["--question-type", "TR", "--answer", "soon"], "bad TR answer"),
    ([], "no policy"),
    (["--policy", "scripted"], "needs --scripted-outputs"),
    (["--policy", "scripted", "--scripted-outputs", "/nonexistent/s.txt"], "cannot read --scripted-outputs"),
    (["--policy", "openai"], "needs an endpoint URL"),
    (["--system-prompt-file", "/nonexistent/p.txt"], "cannot read system prompt file"),
    (["--max-frames", "0"], "--max-frames must be a positive int"),
])
def test_bad_inputs_exit_2(video, argv_tail, msg, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("OMNIAGENT_OPENAI_URL", "OMNIAGENT_OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run(["--video", str(video), "--question", "q", *argv_tail])
    assert code == 2 and msg in err, err


def test_judge_without_configuration_exit_2(video, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("OMNIAGENT_JUDGE_URL", "OMNIAGENT_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run(["--video", str(video), "--question", "q", "--judge"], ScriptedPolicy([]))
    assert code == 2 and "--judge needs OMNIAGENT_JUDGE_URL" in err


def test_missing_and_broken_video_exit_2(tmp_path):
    code, _, err = run(["--video", str(tmp_path / "none.mp4"), "--question", "q"], ScriptedPolicy([]))
    assert code == 2 and "video not found" in err
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    code, _, err = run(["--video", str(bad), "--question", "q"], ScriptedPolicy([]))
    assert code == 2 and "cannot read video" in err
    audio_only = media_factory.make_audio_only(tmp_path / "sound.m4a", duration=2.0)
    code, _, err = run(["--video", str(audio_only), "--question", "q"], ScriptedPolicy([]))
    assert code == 2 and "has no video stream" in err


def test_template_without_slots_exit_2(video, tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("You are an agent.")
    code, _, err = run(["--video", str(video), "--question", "q", "--system-prompt-file", str(p)], ScriptedPolicy([]))
    assert code == 2 and "lacks the slot(s) {max_frames}, {max_audio}, {max_clip}" in err
    assert prompts.SLOT_MAX_FRAMES in prompts.DEFAULT_SYSTEM_PROMPT_TEMPLATE


def test_policy_failure_exit_1(video, tmp_path):
    code, _, err = run(["--video", str(video), "--question", "q", "--output", str(tmp_path / "o.json")],
                       ScriptedPolicy([h.frames(0, 1, 2)]))
    assert code == 1 and "the policy failed" in err and not (tmp_path / "o.json").exists()


def test_end_to_end_subprocess(video, tmp_path):
    script = write_script(tmp_path / "s.txt", [h.clip(0, 4), h.answer("[[0.0, 4.0]]")])
    code = (
        "import sys\nfrom omniagent_jax.agent.cli import main\n"
        f"sys.exit(main(['--video', {str(video)!r}, '--question', 'When?', '--question-type', 'TR', '--answer', '[0, 4]',"
        f" '--policy', 'scripted', '--scripted-outputs', {script!r}, '--output', 'run.json']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    assert "[Step 1/5] get_clip 0.00s-4.00s" in proc.stdout and "reward=1.0000" in proc.stdout
    rec = json.loads((tmp_path / "run.json").read_text())
    assert rec["total_reward"] == 1.0 and rec["final_answer"] == "[[0.0, 4.0]]"


@pytest.mark.parametrize("tail, message", [
    (["--temperature", "-0.5"], "--temperature must be a finite number >= 0, got -0.5"),
    (["--temperature", "inf"], "--temperature must be a finite number >= 0, got inf"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["--top-k", "-2"], "--top-k must be an integer >= 0 (0: off), got -2"),
    (["--max-new-tokens", "-3"], "--max-new-tokens must be an integer >= 1, got -3"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
    (["--max-steps", "-1"], "--max-steps must be a positive int, got -1"),
    (["--max-audio", "0"], "--max-audio must be >= "),
    (["--output", "/"], "--output / is a directory"),
])
def test_stand_alone_main_rejects_bad_values_in_one_line(tail, message, video, tmp_path, capsys):
    from omniagent_jax.agent.cli import main

    script = write_script(tmp_path / "s.txt", [h.answer("A")])
    assert main(["--video", str(video), "--question", "q", "--policy", "scripted", "--scripted-outputs", script, *tail]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err and captured.out == ""
    assert captured.err.startswith("omniagent run: error: ") and message in captured.err, captured.err


def test_load_policy_is_called_only_after_every_check_and_the_video_open(video, tmp_path):
    from omniagent_jax.agent.cli import UsageError

    calls = []

    def load():
        calls.append("load")
        return ScriptedPolicy([h.frames(0, 1, 2), h.answer("A")]), lambda messages: 10 * len(messages)

    base = ["--video", str(video), "--question", "q", "--options", "A. a", "--output", str(tmp_path / "o.json")]
    assert run([*base, "--temperature", "-1"], load_policy=load)[0] == 2
    assert run(["--video", str(tmp_path / "none.mp4"), "--question", "q"], load_policy=load)[0] == 2
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert run(["--video", str(tmp_path / "bad.mp4"), "--question", "q"], load_policy=load)[0] == 2
    assert calls == []
    code, out, err = run([*base, "--max-prompt-tokens", "1000"], load_policy=load)
    assert code == 0 and calls == ["load"] and "policy ScriptedPolicy" in out, err
    assert json.loads((tmp_path / "o.json").read_text())["runtime_config"]["max_prompt_tokens"] == 1000

    def broken_model():
        raise UsageError("--model /m: /m/config.json is not valid JSON:\nExpecting value")

    code, _, err = run(base, load_policy=broken_model)
    assert code == 2 and err == "omniagent run: error: --model /m: /m/config.json is not valid JSON:; Expecting value\n"
