"""The video environment on a fake media backend: validation codes and their exact wire text,
notices, consolidation, budget, token limit, decode failures, prefix reuse."""

from __future__ import annotations

import json

import agent_helpers as h
import numpy as np
import pytest
from test_agent_actions import PARSER_TABLE

from omniagent_jax.agent import prompts
from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.environment import EnvConfig, VideoEnvironment
from omniagent_jax.agent.errors import ErrorCode
from omniagent_jax.agent.limits import EpisodeLimits
from omniagent_jax.agent.messages import MEDIA_KEY, message_text

RETRY = prompts.SYSTEM_RETRY
MCQ = dict(question_type="MCQ", options=("A. red", "B. blue"), answer="A")


def make_env(*, duration=60.0, fps=25.0, has_audio=True, max_steps=10, dynamic=False, forced=False,
             limits=EpisodeLimits(8, 300, 60), fail_on=None, readers=None, token_counter=None, **cfg):
    sample_kw = {**MCQ, **cfg.pop("sample", {})}
    sample = Sample(video="v.mp4", question="Which color?", **sample_kw)
    config = EnvConfig(limits=limits, budget=StepBudget(max_steps=max_steps, dynamic=dynamic, forced_answer=forced), **cfg)
    env = VideoEnvironment(sample, config, media_opener=h.fake_opener(duration, fps, has_audio, fail_on=fail_on, readers=readers),
                           token_counter=token_counter, **h.FAKE_ENV_KW)
    env.reset()
    return env


def last_text(env) -> str:
    return message_text(env.messages[-1])


def texts(msg) -> list[str]:
    return [p["text"] for p in msg["content"] if p["type"] == "text"]


# ---------------------------------------------------------------------- error table (wire text)
# (env kwargs, turns before the checked one, checked turn, code, exact [ERROR] text without the retry line)
ENV_TABLE = [
    ({}, [], h.answer("A"), ErrorCode.EARLY_ANSWER, "[ERROR] EARLY_ANSWER: Must gather evidence before answering"),
    ({}, [], h.frames(0, 61, 4), ErrorCode.FRAME_TS_OOB, "[ERROR] FRAME_TS_OOB: Range [0.0, 61.0] OOB for 60.0s"),
    ({}, [], h.frames(-1, 5, 4), ErrorCode.FRAME_TS_OOB, "[ERROR] FRAME_TS_OOB: Range [-1.0, 5.0] OOB for 60.0s"),
    ({}, [], h.frames(5, 4, 2), ErrorCode.CLIP_NEG_LEN, "[ERROR] CLIP_NEG_LEN: end 4.0 < start 5.0"),
    ({}, [], h.frames(0, 5, 9), ErrorCode.TOO_MANY_FRAMES, "[ERROR] TOO_MANY_FRAMES: num 9 > max 8"),
    ({}, [], h.frames(0, 5, 0), ErrorCode.INVALID_FRAME_NUM, "[ERROR] INVALID_FRAME_NUM: num must be >= 1"),
    ({"has_audio": False}, [], h.audio(0, 5), ErrorCode.NO_AUDIO, "[ERROR] NO_AUDIO"),
    ({}, [], h.audio(-0.5, 5), ErrorCode.AUDIO_RANGE, "[ERROR] AUDIO_RANGE: start -0.500s < 0"),
    ({}, [], h.audio(0, 60.5), ErrorCode.AUDIO_RANGE, "[ERROR] AUDIO_RANGE: end 60.500s > duration 60.000s"),
    ({}, [], h.audio(5, 5), ErrorCode.CLIP_NEG_LEN, "[ERROR] CLIP_NEG_LEN"),
    ({}, [], h.audio(5, 5.05), ErrorCode.AUDIO_TOO_SHORT, "[ERROR] AUDIO_TOO_SHORT: 0.050s < 0.1s"),
    ({"limits": EpisodeLimits(8, 30, 60)}, [], h.audio(0, 31), ErrorCode.AUDIO_TOO_LONG, "[ERROR] AUDIO_TOO_LONG: 31.000s > 30s"),
    ({"limits": EpisodeLimits(8, 30.0, 60)}, [], h.audio(0, 31), ErrorCode.AUDIO_TOO_LONG,
     "[ERROR] AUDIO_TOO_LONG: 31.000s > 30.0s"),
    ({}, [], h.clip(-1, 5), ErrorCode.CLIP_RANGE, "[ERROR] CLIP_RANGE: start -1.000s < 0"),
    ({}, [], h.clip(0, 61), ErrorCode.CLIP_RANGE, "[ERROR] CLIP_RANGE: end 61.000s > video duration 60.000s"),
    ({}, [], h.clip(5, 5), ErrorCode.CLIP_NEG_LEN, "[ERROR] CLIP_NEG_LEN"),
    ({"limits": EpisodeLimits(8, 300, 10)}, [], h.clip(0, 10.5), ErrorCode.CLIP_TOO_LONG, "[ERROR] CLIP_TOO_LONG: 10.500s > 10s"),
    ({}, [], h.clip(1, 1.15), ErrorCode.CLIP_TOO_SHORT, "[ERROR] CLIP_TOO_SHORT: 0.150s < 0.160s (need ≥ 4 frames)"),
    ({"sample": dict(question_type="TR", options=(), answer="[[1, 2]]")}, [h.frames(0, 1, 2)], h.answer("one to two"),
     ErrorCode.ANSWER_JSON_PARSE, "[ERROR] ANSWER_JSON_PARSE: Expecting value: line 1 column 1 (char 0)"),
    ({"sample": dict(question_type="TR", options=(), answer="[[1, 2]]")}, [h.frames(0, 1, 2)], h.answer("[[1, 2, 3]]"),
     ErrorCode.SPAN_FORMAT, "[ERROR] SPAN_FORMAT: Invalid span format: [[1, 2, 3]]"),
    ({"sample": dict(question_type="NUM", options=(), answer="3")}, [h.frames(0, 1, 2)], h.answer("three"),
     ErrorCode.ANSWER_NOT_STRING, "[ERROR] ANSWER_NOT_STRING: Cannot parse number from answer."),
    ({"max_steps": 2}, [h.frames(0, 1, 2)], h.frames(0, 1, 2), ErrorCode.STEP_LIMIT_REACHED, "[ERROR] STEP_LIMIT_REACHED"),
    ({}, [], "not json", ErrorCode.INVALID_JSON, "[ERROR] INVALID_JSON: must start with '{' and end with '}'."),
    ({"strict_confidence": True}, [], json.dumps({"observation": "", "think": "", "action": {"type": "answer", "content": "A"}}),
     ErrorCode.INVALID_JSON, "[ERROR] INVALID_JSON: missing keys: ['confidence']."),
    ({}, [], h.frames(0, 1, 2) + " {}", ErrorCode.TRAILING_GARBAGE, "[ERROR] INVALID_JSON: extra characters after JSON."),
    ({}, [], h.turn({"type": "zoom"}), ErrorCode.UNKNOWN_ACTION_TYPE, "[ERROR] INVALID_JSON: unknown action.type: zoom."),
    ({}, [], h.turn({"type": "get_audio", "start": "0", "end": 1}), ErrorCode.AUDIO_ARG_TYPE,
     "[ERROR] INVALID_JSON: 'start' missing or not number."),
    ({}, [], h.turn({"type": "get_clip", "start": 0}), ErrorCode.CLIP_ARG_TYPE,
     "[ERROR] INVALID_JSON: 'end' missing or not number."),
    ({}, [], h.turn({"type": "answer", "content": 1}), ErrorCode.ANSWER_NOT_STRING,
     "[ERROR] INVALID_JSON: 'content' missing or not string."),
]


@pytest.mark.parametrize("kw,before,text,code,wire", ENV_TABLE)
def test_error_table(kw, before, text, code, wire):
    env = make_env(**kw)
    for t in before:
        assert env.step(t).error_code is None
    steps_before = env.step_count
    res = env.step(text)
    assert res.error_code is code and not res.is_action_valid and res.reward == 0.0
    assert env.step_count == steps_before + 1  # an invalid action costs a step
    msg = env.messages[-1]
    if res.done:  # the last step: no retry line, the terminal notice instead
        assert texts(msg) == [wire, prompts.NOTICE_STEP_LIMIT]
    else:
        assert texts(msg) == [wire + RETRY, prompts.notice_countdown(env.step_count, env.max_steps)]
    assert msg["role"] == "user" and MEDIA_KEY not in msg


def test_every_protocol_code_is_exercised():
    """Parser table + environment table + the cases below cover every protocol error code."""
    covered = {c for *_, c, _ in PARSER_TABLE if c} | {row[3] for row in ENV_TABLE}
    covered |= {ErrorCode.TOKEN_LIMIT_EXCEEDED, ErrorCode.ENV_ALREADY_DONE, ErrorCode.MEDIA_DECODE_FAIL}  # tests below
    covered |= {ErrorCode.GT_JSON_PARSE, ErrorCode.UNKNOWN_QTYPE}  # test_bad_samples_are_refused + reward tests
    assert covered == set(ErrorCode)


def test_bad_samples_are_refused():
    with pytest.raises(ValueError, match="unknown question_type"):
        make_env(sample=dict(question_type="ESSAY"))
    with pytest.raises(ValueError, match="needs options"):
        make_env(sample=dict(options=()))
    with pytest.raises(ValueError, match="bad TR answer"):
        make_env(sample=dict(question_type="TR", options=(), answer="soon"))
    with pytest.raises(ValueError, match="lacks the slot"):
        make_env(system_prompt_template="no slots here")
    with pytest.raises(ValueError, match="token_counter"):
        make_env(max_prompt_tokens=100)
    readers = []
    with pytest.raises(ValueError, match="no video stream"):
        make_env(fps=0.0, readers=readers)
    assert readers[0].closed


# ----------------------------------------------------------------------------- happy path text
def test_first_messages_and_notices():
    env = make_env(max_steps=4, duration=12.3456, fps=29.97002997)
    sys_msg, user = env.messages
    assert sys_msg["role"] == "system" and "(Max 8 frames)" in sys_msg["content"][0]["text"]
    assert "(Max 300s)" in sys_msg["content"][0]["text"] and "(Max 60s)" in sys_msg["content"][0]["text"]
    assert texts(user) == [
        "Video META:\n- duration_seconds: 12.34\n- fps: 29.97\n- has_audio: True\n\nQuestion: Which color?"
        "\nOptions:\nA. red\nB. blue\nWhen answering, set action.content to ONE uppercase letter (A, B, C …).",
        "\n[NOTICE] Step 0/4. 4 steps remaining.",
    ]
    notices = []
    for t in (h.frames(0, 1, 2), "garbage", h.audio(0, 1)):
        env.step(t)
        notices.append(texts(env.messages[-1])[-1])
        all_notices = [p for m in env.messages if m["role"] == "user" for p in texts(m) if prompts.is_notice(p)]
        assert len(all_notices) == 1  # only one notice in context
    assert notices == ["\n[NOTICE] Step 1/4. 3 steps remaining.", "\n[NOTICE] Step 2/4. 2 steps remaining.",
                       "\n[NOTICE] FINAL STEP! You MUST provide your answer now."]
    res = env.step(h.answer("A"))
    assert res.done and res.won and res.reward == 1.0
    # answered on the last step: no steps remain, so the reference's terminal notice is the step-limit one
    assert texts(env.messages[-1]) == ["CORRECT ANSWER", "\n[NOTICE] STEP LIMIT REACHED. Operation terminated."]


def test_answer_feedback_and_early_termination_notice():
    env = make_env(max_steps=6)
    env.step(h.frames(0, 1, 2))
    res = env.step(h.answer("B"))
    assert res.done and not res.won and res.scored and env.end_reason == "ANSWERED"
    assert texts(env.messages[-1]) == ["INCORRECT ANSWER", "\n[NOTICE] Operation terminated. Steps used: 2/6."]
    env = make_env(sample=dict(answer=None))
    env.step(h.frames(0, 1, 2))
    res = env.step(h.answer("A"))
    assert res.done and not res.scored and texts(env.messages[-1])[0] == prompts.FEEDBACK_UNSCORED


def test_frames_timestamps_and_headers():
    readers = []
    env = make_env(readers=readers)
    res = env.step(h.frames(10, 12, 5))
    assert readers[0].calls[-1] == ("frames", [10.0, 10.5, 11.0, 11.5, 12.0])
    msg = env.messages[-1]
    assert texts(msg)[:3] == ["Frames 10.00s-12.00s (num=5).", "Frame 10.00s:", "Frame 10.50s:"]
    assert [p["type"] for p in msg["content"]].count("image") == 5
    assert all(p["image"].dtype == np.uint8 and p["image"].ndim == 3 for p in msg["content"] if p["type"] == "image")
    assert res.media.timestamps == (10.0, 10.5, 11.0, 11.5, 12.0) and res.media.num == 5
    env.step(h.frames(7, 9, 1))
    assert readers[0].calls[-1] == ("frames", [7.0])
    assert texts(env.messages[-1])[:2] == ["Frame at 7.00s (num=1).", "Frame 7.00s:"]
    # end == duration is allowed
    assert env.step(h.frames(0, 60, 3)).error_code is None


def test_length_limits_tolerate_float_error():
    env = make_env(duration=600.0)
    assert env.step(h.clip(124.14, 184.14)).error_code is None  # 60.000000000000014 s at a 60 s limit
    assert env.step(h.audio(100.7, 400.7)).error_code is None    # 300.00000000000006 s at a 300 s limit
    assert env.step(h.clip(0, 60.01)).error_code is ErrorCode.CLIP_TOO_LONG


def test_clip_min_frames_rule_and_audio_in_clip():
    env = make_env(fps=25.0)
    assert env.step(h.clip(1, 1.16)).error_code is None  # exactly 4 source frames
    env = make_env(fps=1.0)  # below 2 fps the rule does not apply
    res = env.step(h.clip(1, 1.1))
    assert res.error_code is None and res.media.has_audio
    env = make_env(has_audio=False)
    res = env.step(h.clip(0, 5))
    assert not res.media.has_audio and res.media.kind == "clip"
    assert texts(env.messages[-1])[0] == "Clip 0.00s-5.00s"
    assert env.messages[-1]["content"][1]["video"].audio is None


# ------------------------------------------------------------------------------ consolidation
def test_consolidation_keeps_only_latest_media():
    env = make_env()
    env.step(h.frames(10, 12, 5))
    env.step(h.audio(10, 20))
    msgs = env.messages
    assert texts(msgs[3]) == ["Frames 10.00s-12.00s (num=5). Timestamps: [10.00s, 10.50s, 11.00s, 11.50s, 12.00s] "
                              "[MEDIA OMITTED - Refer to your Observation]"]
    assert [p["type"] for p in msgs[5]["content"]] == ["text", "audio", "text"]
    env.step(h.clip(0, 8))
    msgs = env.messages
    assert texts(msgs[5]) == ["Audio 10.00s-20.00s [MEDIA OMITTED - Refer to your Observation]"]
    assert msgs[7]["content"][1]["type"] == "video"
    assert sum(1 for m in msgs if any(p["type"] != "text" for p in m["content"])) == 1
    # an invalid action purges the latest media too
    env.step(h.frames(0, 99, 2))
    msgs = env.messages
    assert texts(msgs[7]) == ["Clip 0.00s-8.00s [MEDIA OMITTED - Refer to your Observation]"]
    assert not any(p["type"] != "text" for m in msgs for p in m["content"])
    # assistant turns are never removed
    assert [m["role"] for m in msgs] == ["system", "user"] + ["assistant", "user"] * 4


def test_purge_on_error_can_be_disabled():
    env = make_env(purge_media_on_error=False)
    env.step(h.frames(0, 1, 2))
    env.step("bad")
    assert any(p["type"] == "image" for p in env.messages[3]["content"])


def test_decode_failure_ends_episode():
    env = make_env(fail_on="audio")
    env.step(h.frames(0, 1, 2))
    res = env.step(h.audio(0, 5))
    assert res.done and res.error_code is ErrorCode.MEDIA_DECODE_FAIL and res.is_action_valid
    assert res.end_reason == "MEDIA_DECODE_FAIL" and "injected audio failure" in res.error_detail
    assert texts(env.messages[-1]) == ["[ERROR] MEDIA_DECODE_FAIL: could not decode audio 0.00s-5.00s",
                                       "\n[NOTICE] Operation terminated. Steps used: 2/10."]
    # not the model's fault: the frames it already holds stay
    assert any(p["type"] == "image" for p in env.messages[3]["content"])


def test_short_frame_read_is_a_decode_failure():
    env = make_env()
    env._reader.frames = lambda ts: np.zeros((len(ts) - 1, 4, 4, 3), np.uint8)
    res = env.step(h.frames(0, 1, 3))
    assert res.error_code is ErrorCode.MEDIA_DECODE_FAIL and "2 of 3 frames" in res.error_detail


def test_env_already_done_leaves_history_alone():
    env = make_env(max_steps=2)
    env.step(h.frames(0, 1, 2))
    env.step(h.answer("A"))
    before = env.messages
    res = env.step(h.answer("A"))
    assert res.error_code is ErrorCode.ENV_ALREADY_DONE and res.done
    assert env.messages == before and env.step_count == 2


# ------------------------------------------------------------------------------------- budget
def test_budget_dynamic_fixed_and_limit():
    assert StepBudget(32, dynamic=True).effective_max_steps(600, 60) == 15
    assert StepBudget(12, dynamic=True).effective_max_steps(3600, 60) == 12
    assert StepBudget(32, dynamic=True).effective_max_steps(59.9, 60) == 5
    assert StepBudget(32, dynamic=True).effective_max_steps(300, 34.0) == 13  # the episode's clip limit
    assert StepBudget(7, dynamic=False).effective_max_steps(3600, 60) == 7
    assert make_env(duration=600, max_steps=32, dynamic=True).max_steps == 15
    with pytest.raises(ValueError):
        StepBudget(0)


def test_step_limit_without_answer_scores_zero():
    env = make_env(max_steps=3)
    env.step(h.frames(0, 1, 2))
    env.step(h.frames(1, 2, 2))
    res = env.step(h.audio(0, 3))
    assert res.done and res.reward == 0.0 and res.end_reason == "STEP_LIMIT_REACHED"
    assert texts(env.messages[-1]) == ["[ERROR] STEP_LIMIT_REACHED", prompts.NOTICE_STEP_LIMIT]
    # a parse error on the last step also ends the episode (no retry line)
    env = make_env(max_steps=2)
    env.step(h.frames(0, 1, 2))
    res = env.step("{oops}")
    assert res.done and res.error_code is ErrorCode.INVALID_JSON and res.end_reason == "STEP_LIMIT_REACHED"
    assert RETRY not in last_text(env)


def test_forced_final_answer():
    env = make_env(max_steps=2, forced=True)
    env.step(h.frames(0, 1, 2))
    res = env.step(h.frames(1, 2, 2))
    assert not res.done and res.error_code is ErrorCode.STEP_LIMIT_REACHED
    assert texts(env.messages[-1]) == ["[ERROR] STEP_LIMIT_REACHED" + RETRY, prompts.NOTICE_FORCED_ANSWER]
    res = env.step(h.answer("A"))
    assert res.done and res.won and res.reward == 1.0 and env.step_count == 3
    # in the grace turn anything but an answer ends the episode
    env = make_env(max_steps=2, forced=True)
    env.step(h.frames(0, 1, 2))
    env.step("junk")
    res = env.step(h.frames(0, 1, 2))
    assert res.done and res.end_reason == "STEP_LIMIT_REACHED" and res.reward == 0.0


# ------------------------------------------------------------------------------- token limit
def char_counter(messages):
    return sum(len(message_text(m)) for m in messages) // 4


def test_token_limit_terminates():
    env = make_env(token_counter=char_counter, max_prompt_tokens=10_000)
    base = char_counter(env.messages)
    res = env.step(h.frames(0, 1, 2))
    assert res.prompt_tokens is not None and res.prompt_tokens >= base and not res.done
    env = make_env(token_counter=char_counter, max_prompt_tokens=base + 32 + 5)
    res = env.step(h.frames(0, 1, 2, observation="x" * 400))
    assert res.done and res.error_code is ErrorCode.TOKEN_LIMIT_EXCEEDED and res.reward == 0.0
    tail = texts(env.messages[-1])
    assert tail[-2] == f"[ERROR] TOKEN_LIMIT_EXCEEDED: Prompt length {res.prompt_tokens} > {base + 37}"
    assert tail[-1] == "\n[NOTICE] Operation terminated. Steps used: 1/10."
    assert env.end_reason == "TOKEN_LIMIT_EXCEEDED"


# --------------------------------------------------------------------------- prefix reuse
def test_unchanged_prefix_is_reported():
    env = make_env()
    seen, unchanged = env.observe()
    assert unchanged == 0
    for t in (h.frames(0, 1, 2), h.audio(0, 2), "junk", h.clip(0, 3), h.frames(1, 2, 3)):
        res = env.step(t)
        now, unchanged = env.observe()
        assert unchanged == res.first_changed
        assert all(a is b for a, b in zip(now[:unchanged], seen[:unchanged]))  # untouched objects
        if unchanged < len(seen):
            assert now[unchanged] is not seen[unchanged]
        # the notice of the previous last user message is what changes at the latest
        assert unchanged <= len(seen) - 1
        seen = now
    # after a media step the previous media message (consolidated) is the first change
    env = make_env()
    env.step(h.frames(0, 1, 2))
    env.observe()
    res = env.step(h.frames(1, 2, 2))
    assert res.first_changed == 3
