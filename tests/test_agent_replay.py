"""Replay of the reference SFT trajectories: our environment must rebuild every recorded context.

For each trajectory of ``tests/data/reference/example_train_sft.jsonl`` we run our environment with the
reference's own system prompt (turned back into a template with our three slots, refilled from
the episode's recorded limits) and a ScriptedPolicy replaying the recorded outputs, on a video with
the recorded duration/fps/has_audio. Before every step our message list must equal the recorded
``raw_input``: text parts exactly, media parts by kind, order and timestamps (paths aside).
"""

from __future__ import annotations

from typing import Any

import agent_helpers as h
import pytest

from omniagent_jax.agent.budget import StepBudget
from omniagent_jax.agent.data import Sample
from omniagent_jax.agent.environment import EnvConfig, VideoEnvironment
from omniagent_jax.agent.limits import RL_MAX_STEPS, EpisodeLimits
from omniagent_jax.agent.messages import MEDIA_KEY, MediaRecord
from omniagent_jax.agent.policy import ScriptedPolicy
from omniagent_jax.agent.records import step_log_lines
from omniagent_jax.agent.runner import run_episode


def _media_ok(ours: dict[str, Any]) -> str | None:
    """Check a live media message's parts against its own record; returns a problem or None."""
    record = ours.get(MEDIA_KEY)
    parts = ours["content"]
    media = [p for p in parts if p["type"] != "text"]
    if not media:
        return None
    if isinstance(record, MediaRecord):  # a live message
        record = record.to_json()
    if not isinstance(record, dict):  # a step-log message carries the record as JSON
        return "media message without a media record"
    if parts[0] != {"type": "text", "text": record["header"]}:
        return f"first part is not the header {record['header']!r}"
    if record["kind"] == "frames":
        labels = [parts[i - 1].get("text") for i, p in enumerate(parts) if p["type"] == "image"]
        want = [f"Frame {t:.2f}s:" for t in record["timestamps"]]
        if labels != want or len(media) != record["num"]:
            return f"frame labels {labels} do not match the record timestamps {want}"
    return None


def assert_context_equal(ours: list[dict[str, Any]], recorded: list[dict[str, Any]], where: str) -> None:
    """Equal text exactly, media by kind/order/timestamps; on failure name the first differing message."""
    for i in range(max(len(ours), len(recorded))):
        if i >= len(ours) or i >= len(recorded):
            extra = ours[i] if i < len(ours) else recorded[i]
            side = "ours" if i < len(ours) else "recorded"
            pytest.fail(f"{where}: message counts differ ({len(ours)} ours vs {len(recorded)} recorded); "
                        f"first extra message [{i}] ({side}): {h.describe_message(extra)}")
        a, b = ours[i], recorded[i]
        same = a["role"] == b["role"] and len(a["content"]) == len(b["content"]) and all(
            pa["type"] == pb["type"] and (pa["type"] != "text" or pa["text"] == pb["text"])
            for pa, pb in zip(a["content"], b["content"])
        )
        problem = _media_ok(a)
        if not same or problem:
            pytest.fail(f"{where}: first differing message is [{i}]{' (' + problem + ')' if problem else ''}\n"
                        f"  ours:     {h.describe_message(a)}\n  recorded: {h.describe_message(b)}")


def replay_trajectory(steps: list[dict[str, Any]], *, media_opener, media_errors=None) -> tuple:
    first = steps[0]
    info = first["extra_info"]
    max_frames, max_audio, max_clip = h.reference_limits(first)
    system_text = first["raw_input"][0]["content"][0]["text"]
    template = h.templatize_reference_prompt(system_text, max_frames, max_audio, max_clip)
    sample = Sample(video=info["video"], question_type=info["question_type"], question=info["question"],
                    options=tuple(info.get("options") or ()), answer=info["answer"])
    config = EnvConfig(
        limits=EpisodeLimits(max_frames, max_audio, max_clip),
        # The recorded budget came from the dynamic rule with the episode's clip limit.
        budget=StepBudget(max_steps=RL_MAX_STEPS, dynamic=True),
        system_prompt_template=template,
        strict_confidence=True,
    )
    policy = ScriptedPolicy([s["output"] for s in steps])
    kw = {} if media_errors is None else {"media_errors": media_errors}
    with VideoEnvironment(sample, config, media_opener=media_opener, **kw) as env:
        assert env.max_steps == info["env_config"]["actual_max_steps"]
        result = run_episode(env, policy)
        lines = step_log_lines(result, env, question_id=first["question_id"], traj_id=first["traj_id"])
    return result, policy, lines


def check_replay(steps, result, policy, lines) -> None:
    tag = f"trajectory {steps[0]['traj_id']} ({steps[0]['extra_info']['question_type']})"
    assert policy.calls == len(steps), f"{tag}: the episode took {policy.calls} turns, the reference {len(steps)}"
    for k, ref in enumerate(steps):
        assert_context_equal(policy.inputs[k], ref["raw_input"], f"{tag}, before step {ref['step']}")
    for ours, ref in zip(lines, steps):
        assert ours["done"] == ref["done"] and ours["step"] == ref["step"]
        # the reference stored SIZE rewards in float32 (0.699999988)
        assert ours["step_reward"] == pytest.approx(ref["step_reward"], abs=1e-6)
        assert ours["episode_reward"] == pytest.approx(ref["episode_reward"], abs=1e-6)
        assert ours["extra_info"]["won"] == ref["extra_info"]["won"]
        assert set(ref) <= set(ours)
        # our step log carries the reference's raw_input again (media parts hold the video path)
        assert_context_equal(ours["raw_input"], ref["raw_input"], f"{tag}, step log {ref['step']}")
    assert result.won and result.end_reason == "ANSWERED"


def test_reference_trajectories_replay_fake_media(reference_dir):
    trajectories = h.load_reference_trajectories(reference_dir / "example_train_sft.jsonl")
    assert len(trajectories) == 3
    for steps in trajectories:
        info = steps[0]["extra_info"]
        readers: list = []
        opener = h.fake_opener(info["duration_seconds"], info["fps"], info["has_audio"], readers=readers)
        result, policy, lines = replay_trajectory(steps, media_opener=opener, media_errors=(h.FakeMediaError,))
        check_replay(steps, result, policy, lines)
        assert readers[0].closed
        # every media action of the reference reached the media layer with its exact range
        kinds = [c[0] for c in readers[0].calls]
        recorded = [s for s in steps if '"type": "get_' in s["output"]]
        assert len(kinds) == len(recorded)


def test_replay_reports_first_differing_message(reference_dir):
    """A wrong recorded text makes the assertion name that message."""
    steps = h.load_reference_trajectories(reference_dir / "example_train_sft.jsonl")[0]
    info = steps[0]["extra_info"]
    opener = h.fake_opener(info["duration_seconds"], info["fps"], info["has_audio"])
    result, policy, lines = replay_trajectory(steps, media_opener=opener, media_errors=(h.FakeMediaError,))
    tampered = [dict(m) for m in steps[1]["raw_input"]]
    tampered[2] = {"role": "user", "content": [{"type": "text", "text": "Frames 0.00s-30.06s (num=9)."}]}
    with pytest.raises(pytest.fail.Exception, match=r"first differing message is \[3\]"):
        assert_context_equal(policy.inputs[1], tampered[:2] + steps[1]["raw_input"][2:3] + tampered[2:], "x")
    with pytest.raises(pytest.fail.Exception, match=r"message counts differ"):
        assert_context_equal(policy.inputs[1], steps[1]["raw_input"][:-1], "x")


def test_reference_trajectories_replay_real_media(reference_dir, tmp_path):
    """The same replay through ``omniagent_jax.media`` on tiny real videos with the recorded facts
    (recorded fps, duration to the frame, audio track when the recording had one)."""
    from fractions import Fraction

    from omniagent_jax.media import MediaError, open_video

    trajectories = h.load_reference_trajectories(reference_dir / "example_train_sft.jsonl")
    for k, steps in enumerate(trajectories):
        info = steps[0]["extra_info"]
        fps = Fraction(info["fps"]).limit_denominator(1001)
        path = h.write_test_video(tmp_path / f"ref{k}.mp4", duration=info["duration_seconds"], fps=fps,
                                  audio=info["has_audio"])
        opened = []

        def opener(_video_path, _p=path):
            reader = open_video(str(_p))
            opened.append(reader)
            return reader

        result, policy, lines = replay_trajectory(steps, media_opener=opener, media_errors=(MediaError,))
        check_replay(steps, result, policy, lines)
        # real decoded media reached the context
        for ctx in policy.inputs:
            for msg in ctx:
                for part in msg["content"]:
                    if part["type"] == "image":
                        assert part["image"].dtype.name == "uint8" and part["image"].shape[-1] == 3
                    elif part["type"] == "audio":
                        assert part["audio"].dtype.name == "float32" and part["audio"].ndim == 1
                    elif part["type"] == "video":
                        clip = part["video"]
                        assert clip.frames.shape[0] == len(clip.timestamps) >= 2
                        assert (clip.audio is not None) == info["has_audio"]
