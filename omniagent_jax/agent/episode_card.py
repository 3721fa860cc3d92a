"""The episode card: how a checkpoint expects to be prompted (docs/protocol.md §1).

A checkpoint trained on its own system prompt and limits (the toy agent: 12 frames, 6 s of audio, 5 fixed
steps) is lost under the released model's defaults. Such a checkpoint directory carries ``episode.json``: the
episode flags of ``omniagent run`` / ``eval`` it was trained with (and the temperature it is meant to be played
at), with its system prompt template beside it. A flag the user leaves unset takes the card's value, then the
built-in default; a flag the user sets always wins.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

from omniagent_jax.agent import prompts
from omniagent_jax.agent.limits import DEFAULT_MAX_AUDIO, DEFAULT_MAX_CLIP, DEFAULT_MAX_FRAMES, DEFAULT_MAX_STEPS
from omniagent_jax.processing.policy_contract import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TEMPERATURE, is_integer

CARD_FILE = "episode.json"
PROMPT_FILE = "system_prompt.txt"

# Each card key is the `omniagent run` flag's argparse name; its built-in default applies when neither the
# command line nor a card sets it.
DEFAULTS: dict[str, Any] = {
    "max_frames": DEFAULT_MAX_FRAMES,
    "max_audio": DEFAULT_MAX_AUDIO,
    "max_clip": DEFAULT_MAX_CLIP,
    "max_steps": DEFAULT_MAX_STEPS,
    "fixed_steps": False,
    "strict_confidence": False,
    "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
    "temperature": DEFAULT_TEMPERATURE,  # the sampling the checkpoint is meant to be played with (the toy agent: greedy)
    "system_prompt_file": None,
}
_BOOLS = ("fixed_steps", "strict_confidence")
_COUNTS = ("max_frames", "max_steps", "max_new_tokens")


def _valid(key: str, value: Any) -> bool:
    if key in _BOOLS:
        return isinstance(value, bool)
    if key == "system_prompt_file":
        return isinstance(value, str)
    if key in _COUNTS:
        return is_integer(value) and value > 0
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and (value >= 0 if key == "temperature" else value > 0)  # seconds of audio / clip, temperature


class EpisodeCardError(ValueError):
    """An ``episode.json`` that cannot be used (the message names the file and the problem)."""


def read_episode_card(model_dir: str | pathlib.Path) -> dict[str, Any] | None:
    """The card of a checkpoint directory (``system_prompt_file`` made absolute), or None when it has none."""
    path = pathlib.Path(model_dir) / CARD_FILE
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise EpisodeCardError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(card, dict):
        raise EpisodeCardError(f"{path}: must be a JSON object")
    unknown = sorted(set(card) - set(DEFAULTS))
    if unknown:
        raise EpisodeCardError(f"{path}: unknown keys {unknown} (known: {sorted(DEFAULTS)})")
    for key, value in card.items():
        if not _valid(key, value):
            raise EpisodeCardError(f"{path}: {key} = {value!r} is not a valid value")
    if "system_prompt_file" in card:
        prompt = path.parent / card["system_prompt_file"]
        try:
            prompts.load_system_prompt_template(prompt)
        except (OSError, ValueError) as e:
            raise EpisodeCardError(f"{path}: system_prompt_file {prompt}: {e}") from None
        card["system_prompt_file"] = str(prompt)
    return card


def write_episode_card(model_dir: str | pathlib.Path, *, system_prompt_template: str | None = None, **settings: Any) -> None:
    """Writes ``episode.json`` (and the prompt template as ``system_prompt.txt``) into a checkpoint directory."""
    unknown = sorted(set(settings) - set(DEFAULTS) - {"system_prompt_file"})
    if unknown:
        raise ValueError(f"unknown episode settings {unknown}")
    out = pathlib.Path(model_dir)
    card = dict(settings)
    if system_prompt_template is not None:
        (out / PROMPT_FILE).write_text(system_prompt_template, encoding="utf-8")
        card["system_prompt_file"] = PROMPT_FILE
    (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    read_episode_card(out)  # what we write must read back


def resolve_episode_settings(args: argparse.Namespace) -> None:
    """Fills every episode flag left unset (None) in ``args``: from the card of ``args.model`` when it has one,
    else the built-in default. Idempotent; raises EpisodeCardError for a broken card."""
    model = getattr(args, "model", None)
    card = read_episode_card(model) if model and pathlib.Path(model).is_dir() else None
    for key, default in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, (card or {}).get(key, default))
