"""The FF (free-form) LLM judge on any OpenAI-compatible endpoint; off unless configured.

Configure with ``OMNIAGENT_JUDGE_URL`` and ``OMNIAGENT_JUDGE_MODEL`` (+ ``OMNIAGENT_JUDGE_API_KEY``)
in the environment or a ``.env`` file. The judge answers 1 (consistent) or 0 after ``Judgement:``.
"""

from __future__ import annotations

import pathlib

from omniagent_jax.agent import envfile
from omniagent_jax.agent.openai_http import ChatCompletionsClient

JUDGE_INSTRUCTIONS = """You grade answers to questions about videos.
You are given a question, the reference answer and a model's answer. Decide whether the model's \
answer agrees with the reference answer: it agrees when it states the same fact, even if worded \
differently, shorter, or longer (for example 'red' agrees with 'The car is red'). It does not agree \
when it contradicts the reference or answers something else.
Reply with a single digit after "Judgement:": 1 if the answers agree, 0 if they do not.

[Question]: What color is the umbrella?
[Reference Answer]: The umbrella is yellow.
[Model Answer]: yellow
Judgement: 1

[Question]: How does the man leave the room?
[Reference Answer]: He climbs out through the window.
[Model Answer]: He walks out of the door.
Judgement: 0

[Question]: Is the dog wearing a collar?
[Reference Answer]: No, the dog has no collar.
[Model Answer]: no
Judgement: 1
"""


def judge_prompt(question: str, prediction: str, answer: str) -> str:
    """The full judge prompt; it ends with ``Judgement:`` so the reply is the verdict."""
    return (
        f"{JUDGE_INSTRUCTIONS}\n[Question]: {question}\n[Reference Answer]: {answer}\n"
        f"[Model Answer]: {prediction}\nJudgement:"
    )


def parse_verdict(reply: str) -> float:
    """1.0 / 0.0 from the judge's reply (the text after the last ``Judgement:`` if present)."""
    if "Judgement:" in reply:
        tail = reply.split("Judgement:")[-1].strip()
        if "1" in tail:
            return 1.0
        return 0.0
    return 1.0 if reply.strip() == "1" else 0.0


class LLMJudge:
    """Callable ``(question, prediction, answer) -> 1.0 | 0.0`` backed by a chat endpoint."""

    def __init__(self, client: ChatCompletionsClient, model: str, *, max_tokens: int = 16) -> None:
        self.client = client
        self.model = model
        self.max_tokens = max_tokens

    def __repr__(self) -> str:
        return f"LLMJudge(model={self.model!r}, client={self.client!r})"

    def __call__(self, question: str, prediction: str, answer: str) -> float:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": judge_prompt(question, prediction, answer)}],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        reply = self.client.create(body)["choices"][0]["message"].get("content") or ""
        return parse_verdict(reply)

    @classmethod
    def from_env(cls, *, env_file: str | pathlib.Path | None = envfile.DEFAULT_ENV_FILE) -> "LLMJudge | None":
        """The configured judge, or ``None`` (FF then scores 0.0, marked not judged)."""
        url = envfile.get_setting(envfile.JUDGE_URL, env_file=env_file)
        model = envfile.get_setting(envfile.JUDGE_MODEL, env_file=env_file)
        if not url or not model:
            return None
        key = envfile.get_setting(envfile.JUDGE_API_KEY, env_file=env_file)
        return cls(ChatCompletionsClient(url, api_key=key), model)
