"""The episode card (episode.json in a checkpoint directory): unset run/eval flags take its values, set flags win,
a broken card is a clear error naming the file; `--model random` names the tiny random model."""

from __future__ import annotations

import json

import pytest

from omniagent_jax.agent import prompts
from omniagent_jax.agent.cli import UsageError, build_config
from omniagent_jax.agent.episode_card import CARD_FILE, EpisodeCardError, read_episode_card, write_episode_card
from omniagent_jax.agent.limits import DEFAULT_MAX_FRAMES, DEFAULT_MAX_STEPS
from omniagent_jax.cli import build_parser
from omniagent_jax.policy_flags import is_random_model
from omniagent_jax.processing.policy_contract import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE
from omniagent_jax.toy import settings

PROMPT = "Look with at most {max_frames} frames, {max_audio}s of audio, {max_clip}s clips. Reply in JSON."


def run_args(*extra: str):
    return build_parser().parse_args(["run", "--video", "v.mp4", "--question", "q", *extra])


def test_card_fills_unset_flags_and_set_flags_win(tmp_path):
    write_episode_card(tmp_path, system_prompt_template=PROMPT, max_frames=12, max_audio=6, max_clip=4, max_steps=5,
                       fixed_steps=True, strict_confidence=True, max_new_tokens=160, temperature=0.0)
    args = run_args("--model", str(tmp_path))
    config = build_config(args)
    assert (config.limits.max_frames, config.limits.max_audio, config.limits.max_clip) == (12, 6, 4)
    assert config.budget.max_steps == 5 and not config.budget.dynamic and config.strict_confidence
    assert config.system_prompt_template == PROMPT
    assert (args.max_new_tokens, args.temperature) == (160, 0.0)

    args = run_args("--model", str(tmp_path), "--max-frames", "7", "--temperature", "0.5", "--system-prompt-file",
                    str(settings.SYSTEM_PROMPT_FILE))
    config = build_config(args)
    assert config.limits.max_frames == 7 and args.temperature == 0.5 and config.limits.max_audio == 6
    assert config.system_prompt_template == settings.SYSTEM_PROMPT_TEMPLATE


def test_no_card_means_the_defaults(tmp_path):
    for extra in ((), ("--model", str(tmp_path)), ("--model", "random")):
        args = run_args(*extra)
        config = build_config(args)
        assert config.limits.max_frames == DEFAULT_MAX_FRAMES and config.budget.max_steps == DEFAULT_MAX_STEPS
        assert config.budget.dynamic and not config.strict_confidence
        assert config.system_prompt_template == prompts.DEFAULT_SYSTEM_PROMPT_TEMPLATE
        assert (args.max_new_tokens, args.temperature) == (DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE)


def test_toy_card_is_the_toy_episode(tmp_path):
    settings.write_card(tmp_path)
    assert build_config(run_args("--model", str(tmp_path))) == build_config(run_args(*settings.cli_flags()))
    assert build_config(run_args("--model", str(tmp_path))) == settings.env_config(max_prompt_tokens=None)


@pytest.mark.parametrize("card, problem", [
    ("{not json", "not readable JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"max_frame": 3}', "unknown keys ['max_frame']"),
    ('{"max_frames": 0}', "max_frames = 0 is not a valid value"),
    ('{"max_steps": 2.5}', "max_steps = 2.5 is not a valid value"),
    ('{"fixed_steps": "yes"}', "fixed_steps = 'yes' is not a valid value"),
    ('{"temperature": -1}', "temperature = -1 is not a valid value"),
    ('{"system_prompt_file": "missing.txt"}', "missing.txt"),
])
def test_broken_card_is_a_clear_error(tmp_path, card, problem):
    (tmp_path / CARD_FILE).write_text(card)
    with pytest.raises(EpisodeCardError, match="episode.json") as e:
        read_episode_card(tmp_path)
    assert problem in str(e.value)
    with pytest.raises(UsageError, match="episode.json"):
        build_config(run_args("--model", str(tmp_path)))


def test_prompt_without_slots_is_refused(tmp_path):
    (tmp_path / "p.txt").write_text("no slots here")
    (tmp_path / CARD_FILE).write_text(json.dumps({"system_prompt_file": "p.txt"}))
    with pytest.raises(EpisodeCardError, match="system_prompt_file"):
        read_episode_card(tmp_path)
    with pytest.raises(ValueError, match="unknown episode settings"):
        write_episode_card(tmp_path, max_frame=3)


def test_random_model_name():
    assert is_random_model(None) and is_random_model("random") and not is_random_model("assets/toy_agent")
