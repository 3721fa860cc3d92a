"""Wire strings: the system-prompt template and its slots, META, guides, notices, placeholders."""

from __future__ import annotations

import json

import agent_helpers as h
import pytest

from omniagent_jax.agent import prompts
from omniagent_jax.agent.limits import EpisodeLimits


def test_default_template_states_the_rules_and_renders():
    text = prompts.render_system_prompt(prompts.DEFAULT_SYSTEM_PROMPT_TEMPLATE, EpisodeLimits(60, 300, 60))
    for slot in prompts.SYSTEM_PROMPT_SLOTS:
        assert slot not in text
    assert "(Max 60 frames)" in text and "num=60" in text and "(Max 300s)" in text and "(Max 60s)" in text
    for rule in ("Video META", "has_audio is False, never call `get_audio`", "[MEDIA OMITTED - Refer to your Observation]",
                 "Frames 10.00s-12.00s (num=5). Timestamps: [10.00s, 10.50s, 11.00s, 11.50s, 12.00s]",
                 "Observation is your memory", "Evidence ids", '"type": "get_frames"', '"type": "get_audio"',
                 '"type": "get_clip"', '"type": "answer"', "confidence >= 0.9", "FINAL STEP", "ONE JSON object on ONE line",
                 "no code fences"):
        assert rule in text, rule
    # the schema example line of the prompt is itself a valid turn
    example = next(line for line in text.splitlines() if line.startswith('{"observation"'))
    assert list(json.loads(example)) == ["observation", "think", "confidence", "action"]


def test_reference_prompt_round_trips_through_the_template(reference_dir):
    for steps in h.load_reference_trajectories(reference_dir / "example_train_sft.jsonl"):
        frames, audio, clip = h.reference_limits(steps[0])
        rendered = steps[0]["raw_input"][0]["content"][0]["text"]
        template = prompts.check_system_prompt_template(h.templatize_reference_prompt(rendered, frames, audio, clip))
        assert prompts.render_system_prompt(template, EpisodeLimits(frames, audio, clip)) == rendered


def test_limit_formatting_follows_the_type():
    assert prompts.format_limit(300) == "300" and prompts.format_limit(210.0) == "210.0"
    tpl = "{max_frames}|{max_audio}|{max_clip}"
    assert prompts.render_system_prompt(tpl, EpisodeLimits(50, 210.0, 34.0)) == "50|210.0|34.0"
    assert prompts.render_system_prompt(tpl, EpisodeLimits()) == "60|300|60"


def test_template_loading(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("{max_frames} {max_audio} {max_clip} {\"json\": true}", encoding="utf-8")
    assert prompts.load_system_prompt_template(p).endswith('{"json": true}')
    p.write_text("{max_frames} {max_audio}")
    with pytest.raises(ValueError, match=r"lacks the slot\(s\) \{max_clip\}"):
        prompts.load_system_prompt_template(p)
    with pytest.raises(ValueError, match="cannot read"):
        prompts.load_system_prompt_template(tmp_path / "missing.txt")


def test_meta_is_floored():
    assert prompts.floor2(30.069833) == "30.06" and prompts.floor2(29.97002997002997) == "29.97"
    assert prompts.floor2(25) == "25.00" and prompts.floor2(30.417) == "30.41" and prompts.floor2(0.999) == "0.99"
    assert prompts.format_meta(30.0, 25.0, False) == (
        "Video META:\n- duration_seconds: 30.00\n- fps: 25.00\n- has_audio: False\n\n")


@pytest.mark.parametrize("qtype,guide", [
    ("MCQ", "\nWhen answering, set action.content to ONE uppercase letter (A, B, C …)."),
    ("TR", "\nWhen answering, set action.content to a JSON array of timestamp pairs such as [[10.5, 20.0]]."),
    ("FF", "\nWhen answering, set action.content to **your free-form answer text**."),
    ("NUM", "\nWhen answering, set action.content to **ONE number**, e.g. 42 or 3.14159."),
    ("SIZE", "\nWhen answering, set action.content to **ONE number**, e.g. e.g., 203 or 10.3."),
])
def test_question_text(qtype, guide):
    text = prompts.question_text("Q?", qtype, ["A. x", "B. y"], duration=10, fps=5, has_audio=True)
    assert text.endswith(guide)
    assert ("\nOptions:\nA. x\nB. y\n" in text) == (qtype == "MCQ")
    with pytest.raises(ValueError, match="unknown question type"):
        prompts.question_text("Q?", "ESSAY", None, duration=1, fps=1, has_audio=False)


def test_notices_headers_placeholders_errors():
    assert prompts.notice_countdown(0, 5) == "\n[NOTICE] Step 0/5. 5 steps remaining."
    assert prompts.notice_countdown(4, 5) == "\n[NOTICE] FINAL STEP! You MUST provide your answer now."
    assert prompts.notice_terminated(2, 5) == "\n[NOTICE] Operation terminated. Steps used: 2/5."
    assert prompts.notice_terminated(5, 5) == "\n[NOTICE] STEP LIMIT REACHED. Operation terminated."
    assert prompts.is_notice("\n[NOTICE] x") and not prompts.is_notice("[ERROR] x")
    assert prompts.frames_header(0, 30.06, 10) == "Frames 0.00s-30.06s (num=10)."
    assert prompts.frames_header(7.5, 7.5, 1) == "Frame at 7.50s (num=1)."
    assert prompts.frame_label(3.339) == "Frame 3.34s:"
    assert prompts.audio_header(0, 30.06) == "Audio 0.00s-30.06s" and prompts.clip_header(8, 20) == "Clip 8.00s-20.00s"
    assert prompts.frames_placeholder("Frames 0.00s-1.00s (num=2).", [0, 1]) == (
        "Frames 0.00s-1.00s (num=2). Timestamps: [0.00s, 1.00s] [MEDIA OMITTED - Refer to your Observation]")
    assert prompts.media_placeholder("Clip 0.00s-8.00s") == "Clip 0.00s-8.00s [MEDIA OMITTED - Refer to your Observation]"
    assert prompts.error_text("NO_AUDIO", "", episode_continues=False) == "[ERROR] NO_AUDIO"
    assert prompts.error_text("X", "X", episode_continues=False) == "[ERROR] X"
    assert prompts.error_text("INVALID_JSON", "bad.", episode_continues=True) == (
        "[ERROR] INVALID_JSON: bad.\n[SYSTEM] The previous action was invalid. Analyze the error diagnostic above, "
        "resolve the conflict, and issue a corrected command to avoid wasting steps.")


def test_consolidating_reference_messages_without_records(reference_dir):
    """Messages built elsewhere (no MediaRecord) consolidate from their text like the reference's:
    each recorded live media message becomes exactly the placeholder recorded one step later."""
    from omniagent_jax.agent import memory

    checked = 0
    for steps in h.load_reference_trajectories(reference_dir / "example_train_sft.jsonl"):
        for before, after in zip(steps, steps[1:]):
            live = [dict(m) for m in before["raw_input"]]
            media = [i for i, m in enumerate(live) if any(p["type"] != "text" for p in m["content"])]
            if not media:
                continue
            idx = media[-1]
            checked += 1
            memory.remove_notices(live)
            assert memory.consolidate(live, keep_latest=0) == idx
            assert live[idx] == after["raw_input"][idx]
            assert memory.count_media_messages(live) == 0
    assert checked == 6  # frames, audio, clip placeholders all covered
