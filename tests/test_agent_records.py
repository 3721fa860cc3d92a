"""Step logs in the reference format, the SFT export filter, latest_run.json, and data rows."""

from __future__ import annotations

import copy
import json

import agent_helpers as h
import pytest

from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import DataError, Sample, iter_samples, load_samples, sample_from_row
from omniagent_jax.agent.environment import EnvConfig, VideoEnvironment
from omniagent_jax.agent.limits import EpisodeLimits
from omniagent_jax.agent.policy import ScriptedPolicy
from omniagent_jax.agent.records import (
    export_sft,
    latest_run_record,
    read_jsonl,
    rebase_path,
    step_log_lines,
    write_jsonl,
)
from omniagent_jax.agent.runner import run_episode
from omniagent_jax.processing.policy_contract import SEED_LIMIT, PolicyMetrics, PolicyOutput, turn_seed

REFERENCE_STEP_KEYS = {"question_id", "traj_id", "step", "raw_input", "output", "step_reward", "done", "extra_info",
                       "episode_reward"}


def episode(outputs, *, answer="A", video="videos/set/a.mp4", max_steps=6, policy=None, seed=None):
    sample = Sample(video=video, question_type="MCQ", question="Q?", options=("A. x", "B. y"), answer=answer)
    config = EnvConfig(limits=EpisodeLimits(8, 300, 60), budget=StepBudget(max_steps=max_steps, dynamic=False))
    env = VideoEnvironment(sample, config, media_opener=h.fake_opener(30.0, 25.0, True), **h.FAKE_ENV_KW)
    with env:
        result = run_episode(env, policy or ScriptedPolicy(outputs), seed=seed)
    return result, env


def test_step_log_format(reference_dir):
    result, env = episode([h.frames(0, 10, 3), "oops", h.clip(0, 5), h.answer("A")])
    lines = step_log_lines(result, env, question_id="v_1_0_1", traj_id="t1")
    ref = json.loads((reference_dir / "example_train_sft.jsonl").read_text().splitlines()[0])
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    for line in lines:
        assert set(line) == REFERENCE_STEP_KEYS
        assert set(ref["extra_info"]) - {"token_stats"} <= set(line["extra_info"])
        assert set(ref["extra_info"]["env_config"]) <= set(line["extra_info"]["env_config"])
        assert line["done"] in ("True", "False") and line["extra_info"]["is_action_valid"] in ("True", "False")
        assert line["episode_reward"] == 1.0
        json.dumps(line)  # JSON-serializable: no arrays left
    assert [line["done"] for line in lines] == ["False", "False", "False", "True"]
    assert lines[1]["extra_info"]["error_code"] == "INVALID_JSON" and lines[1]["extra_info"]["is_action_valid"] == "False"
    assert lines[0]["extra_info"]["action"] == {"type": "get_frames", "start": 0.0, "end": 10.0, "num": 3}
    # media parts name the video; the message's record says what to cut from it
    msg = lines[1]["raw_input"][3]
    assert {p["image"] for p in msg["content"] if p["type"] == "image"} == {"videos/set/a.mp4"}
    assert msg["media"] == {"kind": "frames", "start": 0.0, "end": 10.0, "header": "Frames 0.00s-10.00s (num=3).",
                            "num": 3, "timestamps": [0.0, 5.0, 10.0]}
    clip_msg = lines[3]["raw_input"][-1]
    assert clip_msg["media"]["kind"] == "clip" and clip_msg["media"]["has_audio"] is True
    assert lines[3]["step_reward"] == 1.0 and lines[3]["extra_info"]["won"] is True


def _traj(lines, tid, won, *, error_at=None, question="Q?"):
    out = []
    for i, line in enumerate(copy.deepcopy(lines)):
        line["traj_id"] = tid
        line["extra_info"]["won"] = won if i == len(lines) - 1 else False
        line["extra_info"]["question"] = question
        line["extra_info"].pop("error_code", None)
        if error_at == i:
            line["extra_info"]["error_code"] = "INVALID_JSON"
        out.append(line)
    return out


def test_sft_export_filter():
    result, env = episode([h.frames(0, 10, 3), h.audio(0, 5), h.answer("A")])
    base = step_log_lines(result, env, question_id="q", traj_id="x")
    lines = (
        _traj(base, "t1", True)                      # won, then superseded by t3
        + _traj(base, "t2", False)                   # lost
        + _traj(base, "t3", True, error_at=1)        # the last won one: kept, minus its errored step
        + _traj(base, "t4", False, question="Other")  # another sample, never won: dropped
        + _traj(base + base[:1], "t5", True, question="Long")  # won but 4 steps > max_steps
    )
    for i, line in enumerate(lines[-4:]):
        line["step"] = i + 1
    kept, stats = export_sft(lines, base_path="/data/root", max_steps=3)
    assert {line["traj_id"] for line in kept} == {"t3"}
    assert [line["step"] for line in kept] == [1, 3]
    assert stats == {"samples": 3, "trajectories": 5, "kept_trajectories": 1, "kept_steps": 2, "dropped_not_won": 2,
                     "dropped_superseded": 1, "dropped_too_long": 1, "dropped_error_steps": 1,
                     # the reference's report (INVALID_JSON is none of its error categories)
                     "ffmpeg_err": 0, "step_limit": 0, "token_limit": 0, "win_count": 1, "fail_count": 1, "overstep_count": 1}
    assert kept[0]["extra_info"]["video"] == "/data/root/videos/set/a.mp4"
    img_paths = {p["image"] for m in kept[1]["raw_input"] for p in m["content"] if p["type"] == "image"}
    assert img_paths <= {"/data/root/videos/set/a.mp4"}
    assert lines[0]["extra_info"]["video"] == "videos/set/a.mp4"  # inputs untouched


def test_sft_export_of_the_reference_file(reference_dir, tmp_path):
    lines = read_jsonl(reference_dir / "example_train_sft.jsonl")
    kept, stats = export_sft(lines, base_path="base", max_steps=50)
    assert len(kept) == 12 and stats["kept_trajectories"] == 3
    audio_part = kept[2]["raw_input"][5]["content"][1]
    assert audio_part == {"type": "audio", "audio": "base/placeholder_frame.jpg"}
    assert kept[0]["extra_info"]["video"] == "base/videos/example_mcq_commercial.mp4"
    assert export_sft(lines, base_path="base", max_steps=4)[1]["dropped_too_long"] == 1  # the 5-step SIZE one
    path = write_jsonl(tmp_path / "out" / "sft.jsonl", kept)
    assert read_jsonl(path) == kept


def test_rebase_path():
    assert rebase_path("a/b.mp4", "/r") == "/r/a/b.mp4"
    assert rebase_path("/abs/x.mp4", "/r") == "/abs/x.mp4"
    assert rebase_path("/old/root/x.mp4", "/r", strip_prefix="/old/root") == "/r/x.mp4"
    assert rebase_path("", "/r") == ""


def test_latest_run_record_fields():
    result, env = episode([h.frames(0, 10, 3), h.answer("B")])
    rec = latest_run_record(result, env, runtime_config={"max_steps": 6}, policy_name="scripted")
    for key in ("video", "question", "gt_answer", "final_answer", "question_type", "options", "source_label",
                "dataset_name", "video_name", "total_steps", "runtime_config", "env_snapshot", "messages", "steps",
                "kvcache"):
        assert key in rec
    assert rec["gt_answer"] == "A" and rec["final_answer"] == "B" and rec["question_type"] == "MCQ"
    assert rec["total_reward"] == 0.0 and rec["won"] is False and rec["end_reason"] == "ANSWERED" and rec["scored"]
    # an episode that never answers still scores a real 0 when it has a ground truth
    timed_out, _ = episode([h.frames(0, 1, 2), h.frames(1, 2, 2)], max_steps=2)
    assert timed_out.end_reason == "STEP_LIMIT_REACHED" and timed_out.scored and timed_out.total_reward == 0.0
    no_gt, _ = episode([h.frames(0, 1, 2), h.frames(1, 2, 2)], answer=None, max_steps=2)
    assert not no_gt.scored
    assert rec["video_name"] == "a.mp4" and rec["dataset_name"] == "set" and rec["total_steps"] == 2
    step = rec["steps"][0]
    for key in ("step", "action_type", "think", "observation", "confidence", "response", "reward",
                "generation_seconds", "env_step_seconds", "step_wall_seconds", "prompt_total_tokens"):
        assert key in step
    assert step["action_type"] == "get_frames" and step["media"]["kind"] == "frames"
    # a scripted policy cannot tell whether prefix KV was reused: the record says so instead of False
    assert rec["kvcache"]["prefix_caching_enabled"] is None and step["prefix_caching_enabled"] is None
    json.dumps(rec)


class CachingPolicy(ScriptedPolicy):
    """Scripted turns reported as an engine with prefix caching would report them."""

    def generate(self, messages, *, unchanged_prefix=0, seed=None):
        text = super().generate(messages, unchanged_prefix=unchanged_prefix, seed=seed).text
        metrics = PolicyMetrics(prompt_tokens=900, cached_prompt_tokens=600, completion_tokens=40, prep_seconds=0.25,
                                generation_seconds=0.5, prefix_caching=True)
        return PolicyOutput(text, finish_reason="stop", metrics=metrics)


def test_episode_seed_reaches_every_turn_and_the_record():
    policy = CachingPolicy([h.frames(0, 10, 3), h.answer("A")])
    result, env = episode(None, policy=policy, seed=7)
    assert policy.seeds == [turn_seed(7, 1), turn_seed(7, 2)] and [r.seed for r in result.steps] == policy.seeds
    rec = latest_run_record(result, env, runtime_config={}, policy_name="caching")
    assert rec["seed"] == 7 and rec["kvcache"]["prefix_caching_enabled"] is True and rec["kvcache"]["enabled"] is True
    step = rec["steps"][0]
    assert step["seed"] == turn_seed(7, 1) and step["prefix_caching_enabled"] is True and step["finish_reason"] == "stop"
    assert (step["prompt_total_tokens"], step["response_tokens"], step["common_prefix_tokens"]) == (900, 40, 600)
    assert step["effective_new_prompt_tokens"] == 300 and step["generation_seconds"] == 0.5
    assert step["multimodal_prep_seconds"] == 0.25 and step["policy_metrics"]["prefilled_tokens"] is None
    unseeded = ScriptedPolicy([h.frames(0, 10, 3), h.answer("A")])
    assert episode(None, policy=unseeded)[0].seed is None and unseeded.seeds == [None, None]


def test_turn_seeds_differ_across_turns_and_neighbouring_episodes():
    seeds = {turn_seed(e, t) for e in range(50) for t in range(1, 21)}
    assert len(seeds) == 1000 and all(0 <= s < SEED_LIMIT for s in seeds)
    assert turn_seed(5, 2) == turn_seed(5, 2) and turn_seed(-3, 1) != turn_seed(3, 1)


# ------------------------------------------------------------------------------------- data rows
def test_reference_data_files_load(reference_dir):
    evals = load_samples(reference_dir / "example_eval.jsonl")
    assert [s.major_type for s in evals] == ["MCQ", "MCQ", "TR", "TR", "SIZE", "SIZE"]
    assert evals[2].answer == "[[1.4, 40.066]]" and evals[0].index == 0
    rl = load_samples(reference_dir / "example_train_rl.jsonl")
    assert rl[0].question_type == "MCQ_LongVR-Short" and rl[0].major_type == "MCQ" and rl[0].has_audio is True
    assert rl[0].fps == pytest.approx(29.97002997002997)
    assert all(s.to_json()["video"] for s in rl)


@pytest.mark.parametrize("row,msg", [
    ({"question_type": "MCQ", "question": "q", "options": ["A. x"], "answer": "A"}, "'video'"),
    ({"video": "v", "question_type": "MCQ", "question": "", "options": ["A. x"]}, "'question'"),
    ({"video": "v", "question_type": "ESSAY", "question": "q"}, "unknown question_type"),
    ({"video": "v", "question_type": "MCQ", "question": "q"}, "needs options"),
    ({"video": "v", "question_type": "MCQ", "question": "q", "options": "A. x"}, "list of strings"),
    ({"video": "v", "question_type": "TR", "question": "q", "answer": "[[1, 2"}, "bad TR answer"),
    ({"video": "v", "question_type": "NUM", "question": "q", "answer": "n/a"}, "bad NUM answer"),
    ({"video": "v", "question_type": "FF", "question": "q", "fps": -1}, "'fps'"),
    ({"video": "v", "question_type": "FF", "question": "q", "has_audio": "yes"}, "'has_audio'"),
    ({"video": "v", "question_type": "FF", "question": "q", "extra_info": [1]}, "'extra_info'"),
    ([1, 2], "JSON object"),
])
def test_broken_rows(row, msg):
    with pytest.raises(DataError, match=msg):
        sample_from_row(row)


def test_broken_file_names_the_line(tmp_path):
    p = tmp_path / "d.jsonl"
    good = {"video": "v.mp4", "question_type": "FF", "question": "q", "answer": "x", "extra_info": {"index": 7}}
    p.write_text(json.dumps(good) + "\n\n" + "{not json\n")
    with pytest.raises(DataError, match=r"d.jsonl:3: not valid JSON"):
        load_samples(p)
    p.write_text(json.dumps(good) + "\n" + json.dumps({**good, "question_type": "X"}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: unknown question_type"):
        load_samples(p)
    p.write_text(json.dumps(good) + "\n")
    s = load_samples(p, resolve_videos=True)[0]
    assert s.index == 7 and s.video == str(tmp_path / "v.mp4")
    with pytest.raises(DataError, match="cannot read"):
        load_samples(tmp_path / "missing.jsonl")
    p.write_bytes(json.dumps(good).encode() + b"\n\xff\xfe bad\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: not UTF-8 text"):
        load_samples(p)
    assert next(iter_samples(p, video_root="/videos")).video == "/videos/v.mp4"
