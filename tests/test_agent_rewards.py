"""Reward test vectors for every question type, the FF judge, and .env key handling."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from contextlib import redirect_stderr, redirect_stdout
from http.server import HTTPServer

import agent_helpers
import pytest

from omniagent_jax.agent import envfile
from omniagent_jax.agent.errors import ActionError, ErrorCode
from omniagent_jax.agent.judge import LLMJudge, judge_prompt, parse_verdict
from omniagent_jax.agent.rewards import (
    SIZE_TOLERANCES,
    check_ground_truth,
    mean_relative_accuracy,
    merge_spans,
    score,
    temporal_iou,
)


def r(*args, **kw) -> float:
    return score(*args, **kw).reward


# ----------------------------------------------------------------------------------------- MCQ
@pytest.mark.parametrize("pred,gt,strict,lenient", [
    ("A", "A", 1.0, 1.0),
    (" a ", "A", 1.0, 1.0),
    ("B", "A", 0.0, 0.0),
    ("A.", "A", 0.0, 1.0),          # the reference does no letter extraction
    ("(A)", "A", 0.0, 1.0),
    ("A) The cat", "A", 0.0, 1.0),
    ("C. To encourage purchases", "C. To encourage purchases", 0.0, 1.0),
    ("C", "C. To encourage purchases", 1.0, 1.0),  # gt is reduced to its first letter
    ("AB", "A", 0.0, 0.0),
    ("Answer: A", "A", 0.0, 0.0),
    ("", "A", 0.0, 0.0),
])
def test_mcq(pred, gt, strict, lenient):
    assert r("MCQ", pred, gt) == strict
    assert r("MCQ_LongVR-Short", pred, gt, mcq_mode="lenient") == lenient


def test_mcq_bad_mode():
    with pytest.raises(ValueError):
        score("MCQ", "A", "A", mcq_mode="fuzzy")


# ------------------------------------------------------------------------------------------ TR
def test_tr_vectors():
    assert r("TR", "[[0.0, 27.8]]", [[0.0, 27.88]]) == pytest.approx(27.8 / 27.88)
    # the reference's recorded reward for this very answer (it adds 1e-12 to the denominator)
    assert r("TR", "[[0.0, 27.8]]", [[0.0, 27.88]]) == pytest.approx(0.9971305595408538, abs=1e-12)
    assert r("TR", "[10, 20]", "[10, 20]") == 1.0                       # flat spans on both sides
    assert r("TR", "[[10, 20]]", "[51.72, 62.92]") == 0.0                # flat gt string, disjoint
    assert r("TR", "[[0, 10], [20, 30]]", [[0, 10], [20, 30]]) == 1.0    # multi-span
    assert r("TR", "[[0, 10]]", [[0, 10], [20, 30]]) == pytest.approx(0.5)
    assert score("TR", "[[0, 10]]", [[0, 10], [20, 30]]).won             # IoU >= 0.5 wins
    assert not score("TR", "[[0, 9]]", [[0, 10], [20, 30]]).won
    # overlapping predicted spans are merged before the IoU: [0,10]+[5,15] = [0,15]
    assert r("TR", "[[0, 10], [5, 15]]", [[0, 15]]) == 1.0
    assert r("TR", "[[5, 15], [0, 10]]", "[[0, 20]]") == pytest.approx(15 / 20)
    assert r("TR", "[]", "[]") == 1.0
    assert r("TR", "[]", "[[0, 1]]") == 0.0
    assert r("TR", "[[3, 3]]", "[[3, 3]]") == 0.0                       # zero-length union
    assert r("TR", "[[20, 10]]", "[[10, 20]]") == 0.0                   # reversed span rejects the answer


def test_tr_errors():
    for pred in ("ten to twenty", "[[1, 2]", ""):
        with pytest.raises(ActionError) as e:
            score("TR", pred, "[[0, 1]]")
        assert e.value.code is ErrorCode.ANSWER_JSON_PARSE
    for pred in ("[[1, 2, 3]]", '[["a", 2]]', "[1]", '{"s": 1}', "[[true, 2]]", "5"):
        with pytest.raises(ActionError) as e:
            score("TR", pred, "[[0, 1]]")
        assert e.value.code is ErrorCode.SPAN_FORMAT, pred
    with pytest.raises(ActionError) as e:
        score("TR", "[[0, 1]]", "about five seconds")
    assert e.value.code is ErrorCode.GT_JSON_PARSE


def test_span_helpers():
    assert merge_spans([(5, 6), (0, 2), (1, 3)]) == [(0, 3), (5, 6)]
    assert merge_spans([(0, 1), (1, 2)]) == [(0, 2)]
    assert temporal_iou([(0, 2)], [(1, 3)]) == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------------------- NUM
@pytest.mark.parametrize("pred,gt,expected", [
    ("42", "42", 1.0), ("There are 42 people", "42", 1.0), ("3.14159", "3.14", 1.0), ("3.149", "3.14", 0.0),
    ("-2", "-2.0", 1.0), ("+7", "7", 1.0), ("41", "42", 0.0), ("42", ["42"], 1.0),
])
def test_num(pred, gt, expected):
    assert r("NUM_count", pred, gt) == expected


def test_num_errors():
    with pytest.raises(ActionError) as e:
        score("NUM", "many", "3")
    assert e.value.code is ErrorCode.ANSWER_NOT_STRING
    with pytest.raises(ActionError) as e:
        score("NUM", "3", "three")
    assert e.value.code is ErrorCode.GT_JSON_PARSE


# ---------------------------------------------------------------------------------------- SIZE
def test_size_vectors():
    assert SIZE_TOLERANCES == (0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)
    assert r("SIZE", "11.3", "14.1") == pytest.approx(0.7)  # the reference's recorded 0.69999999 (float32)
    assert r("SIZE_VSI", "26.4", "26.4") == 1.0
    assert r("SIZE", "0", "10") == 0.0
    assert r("SIZE", "100", "10") == 0.0
    assert score("SIZE", "7", "10").won and not score("SIZE", "6.5", "10").won


def test_size_threshold_boundaries():
    # relative error just below / above each tolerance 1 - θ
    gt = 1000.0
    for k, tol in enumerate(SIZE_TOLERANCES):
        below = gt * (1 + tol) - 1e-6
        above = gt * (1 + tol) + 1e-6
        assert mean_relative_accuracy(below, gt) == pytest.approx((k + 1) / 10)
        assert mean_relative_accuracy(above, gt) == pytest.approx(k / 10)
    # exactly on a boundary the protocol's |g| + 1e-8 makes the comparison pass
    assert mean_relative_accuracy(15.0, 10.0) == pytest.approx(0.1)
    assert mean_relative_accuracy(5.0, 10.0) == pytest.approx(0.1)
    # won at >= 0.5: 25% error passes θ ∈ {0.50, …, 0.70} (5 of 10)
    assert score("SIZE", "12.5", "10").reward == pytest.approx(0.6)
    assert score("SIZE", "13.0", "10").reward == pytest.approx(0.5) and score("SIZE", "13.0", "10").won


# ------------------------------------------------------------------------------------------ FF
def test_ff_without_judge_is_unscored():
    res = score("FF", "White", "White")
    assert res.reward == 0.0 and not res.scored and not res.won


def test_ff_with_judge():
    calls = []

    def judge(question, prediction, answer):
        calls.append((question, prediction, answer))
        return 1.0 if prediction.lower() in answer.lower() else 0.0

    res = score("FF", " white ", "White", judge=judge, question="What color?")
    assert res.reward == 1.0 and res.won and res.scored
    assert calls == [("What color?", "white", "White")]
    assert score("FF", "x" * 1000, "x", judge=judge).reward == 0.0  # long answers score 0 unjudged
    assert len(calls) == 1


def test_unscored_without_ground_truth_and_unknown_type():
    assert not score("MCQ", "A", None).scored
    assert not score("NUM", "3", "").scored
    with pytest.raises(ActionError) as e:
        score("ESSAY", "A", "A")
    assert e.value.code is ErrorCode.UNKNOWN_QTYPE


def test_check_ground_truth():
    check_ground_truth("TR", "[51.72, 62.92]")
    check_ground_truth("MCQ", "A", ["A. x"])
    check_ground_truth("FF", None)
    for qtype, answer, options, msg in [
        ("ESSAY", "x", None, "unknown question_type"),
        ("MCQ", "A", [], "needs options"),
        ("MCQ", "7", ["A. x"], "option letter"),
        ("TR", "soon", None, "bad TR answer"),
        ("NUM", "n/a", None, "bad NUM answer"),
    ]:
        with pytest.raises(ValueError, match=msg):
            check_ground_truth(qtype, answer, options)


# --------------------------------------------------------------------------------- judge, .env
def test_verdict_parsing_and_prompt():
    assert parse_verdict("Judgement: 1") == 1.0
    assert parse_verdict("blah Judgement: 0") == 0.0
    assert parse_verdict("1") == 1.0 and parse_verdict(" 0 ") == 0.0 and parse_verdict("yes") == 0.0
    p = judge_prompt("Q?", "pred", "gt")
    assert p.endswith("[Question]: Q?\n[Reference Answer]: gt\n[Model Answer]: pred\nJudgement:")


SECRET = "sk-test-SECRET-0123456789"


class _JudgeHandler(agent_helpers.JsonHandler):
    seen: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.headers.get("Authorization"), body))
        reply = "Judgement: 1" if "[Model Answer]: white" in body["messages"][0]["content"] else "Judgement: 0"
        self.send_json(200, {"choices": [{"message": {"role": "assistant", "content": reply}}]})


def test_judge_from_env_file_end_to_end(tmp_path, monkeypatch, caplog):
    server = HTTPServer(("127.0.0.1", 0), _JudgeHandler)
    server.timeout = 10
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = tmp_path / ".env"
        env.write_text(
            f"# judge\nexport {envfile.JUDGE_URL}=http://127.0.0.1:{server.server_port}/v1\n"
            f"{envfile.JUDGE_MODEL}='judge-model'\n{envfile.JUDGE_API_KEY}=\"{SECRET}\"\n"
        )
        for name in (envfile.JUDGE_URL, envfile.JUDGE_MODEL, envfile.JUDGE_API_KEY):
            monkeypatch.delenv(name, raising=False)
        out, err = io.StringIO(), io.StringIO()
        with caplog.at_level(logging.DEBUG), redirect_stdout(out), redirect_stderr(err):
            judge = LLMJudge.from_env(env_file=env)
            assert judge is not None
            text = repr(judge) + str(judge.client) + repr(judge.client)
            good = score("FF", "white", "White", judge=judge, question="Horse color?")
            bad = score("FF", "black", "White", judge=judge, question="Horse color?")
        assert good.reward == 1.0 and good.scored and bad.reward == 0.0
        assert _JudgeHandler.seen[0][0] == f"Bearer {SECRET}"  # the key is sent, as a bearer token
        assert _JudgeHandler.seen[0][1]["model"] == "judge-model"
        everything = out.getvalue() + err.getvalue() + caplog.text + text
        assert SECRET not in everything
    finally:
        server.shutdown()
        server.server_close()


def test_judge_off_by_default(tmp_path, monkeypatch):
    for name in (envfile.JUDGE_URL, envfile.JUDGE_MODEL, envfile.JUDGE_API_KEY):
        monkeypatch.delenv(name, raising=False)
    assert LLMJudge.from_env(env_file=tmp_path / "missing.env") is None
    (tmp_path / ".env").write_text(f"{envfile.JUDGE_URL}=http://127.0.0.1:1/v1\n")  # no model → off
    assert LLMJudge.from_env(env_file=tmp_path / ".env") is None


def test_env_file_parsing(tmp_path):
    p = tmp_path / ".env"
    p.write_text("A=1\n# c\n\nexport B = two words # note\nC='quoted # kept'\nbroken line\nD=\n")
    assert envfile.read_env_file(p) == {"A": "1", "B": "two words", "C": "quoted # kept", "D": ""}
    assert envfile.get_setting("A", env_file=p, environ={}) == "1"
    assert envfile.get_setting("A", env_file=p, environ={"A": "env"}) == "env"  # environment wins
    assert envfile.get_setting("D", env_file=p, environ={}) is None
    assert envfile.read_env_file(tmp_path / "nope") == {}


def test_env_key_never_printed_in_subprocess(tmp_path):
    """A fresh interpreter that loads the key from .env and builds judge + policy prints no key."""
    (tmp_path / ".env").write_text(
        f"{envfile.JUDGE_URL}=http://127.0.0.1:9/v1\n{envfile.JUDGE_MODEL}=m\n{envfile.JUDGE_API_KEY}={SECRET}\n"
        f"{envfile.OPENAI_URL}=http://127.0.0.1:9/v1\n{envfile.OPENAI_MODEL}=m\n{envfile.OPENAI_API_KEY}={SECRET}\n")
    code = (
        "import logging; logging.basicConfig(level=logging.DEBUG)\n"
        "from omniagent_jax.agent.judge import LLMJudge\n"
        "from omniagent_jax.agent.policy import OpenAIPolicy\n"
        "j = LLMJudge.from_env(); p = OpenAIPolicy.from_env()\n"
        "print(j, p, j.client, p.client, vars(j).keys())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIAGENT_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "LLMJudge" in proc.stdout and "api_key=<set>" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
