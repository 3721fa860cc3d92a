"""Endpoint settings from the environment or a ``.env`` file; API keys are read, never echoed.

Nothing here prints or logs a value. ``os.environ`` wins over the file, and the file is only read,
never copied into ``os.environ``.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping

# FF judge (an OpenAI-compatible chat endpoint). Off unless URL and model are set.
JUDGE_URL = "OMNIAGENT_JUDGE_URL"
JUDGE_MODEL = "OMNIAGENT_JUDGE_MODEL"
JUDGE_API_KEY = "OMNIAGENT_JUDGE_API_KEY"
# OpenAIPolicy defaults (the CLI's --openai-url / --openai-model override them).
OPENAI_URL = "OMNIAGENT_OPENAI_URL"
OPENAI_MODEL = "OMNIAGENT_OPENAI_MODEL"
OPENAI_API_KEY = "OMNIAGENT_OPENAI_API_KEY"

DEFAULT_ENV_FILE = ".env"


def read_env_file(path: str | pathlib.Path) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines (``#`` comments, blank lines, ``export`` prefixes, matching quotes).

    A missing file gives ``{}``. Malformed lines are skipped silently: reporting them could echo a
    secret into a log.
    """
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:  # trailing comment on an unquoted value
            value = value.split(" #", 1)[0].rstrip()
        if key:
            values[key] = value
    return values


def get_setting(
    name: str,
    *,
    env_file: str | pathlib.Path | None = DEFAULT_ENV_FILE,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """``name`` from the environment, else from ``env_file``; empty values count as unset."""
    env = os.environ if environ is None else environ
    value = env.get(name)
    if not value and env_file is not None:
        value = read_env_file(env_file).get(name)
    return value or None
