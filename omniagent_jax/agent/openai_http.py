"""A minimal client for OpenAI-compatible ``/v1/chat/completions`` endpoints (standard library only)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

CHAT_COMPLETIONS_PATH = "/chat/completions"
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_RETRIES = 2
_ERROR_BODY_CHARS = 500


class OpenAIError(RuntimeError):
    """The endpoint failed or answered with something that is not a chat completion."""


def chat_completions_url(url: str) -> str:
    """Accept a server root (``http://h:8000``), an API base (``.../v1``) or the full endpoint."""
    url = url.rstrip("/")
    if url.endswith(CHAT_COMPLETIONS_PATH):
        return url
    if not url.endswith("/v1"):
        url += "/v1"
    return url + CHAT_COMPLETIONS_PATH


class ChatCompletionsClient:
    """POSTs JSON bodies; retries connection errors and 5xx answers; never reveals the API key."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        retry_delay_s: float = 1.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint URL must start with http:// or https://, got {url!r}")
        self.url = chat_completions_url(url)
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_delay_s = retry_delay_s

    def __repr__(self) -> str:
        key = "set" if self._api_key else "unset"
        return f"ChatCompletionsClient(url={self.url!r}, api_key=<{key}>)"

    def _request(self, body: dict[str, Any]) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        return urllib.request.Request(self.url, data=data, headers=headers, method="POST")

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send one chat-completion request and return the decoded JSON response."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(self._request(body), timeout=self.timeout_s) as resp:
                    payload = resp.read()
                break
            except urllib.error.HTTPError as e:
                detail = e.read()[:_ERROR_BODY_CHARS].decode("utf-8", "replace")
                last = OpenAIError(f"{self.url} answered HTTP {e.code}: {detail}")
                if e.code < 500:
                    raise last from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                last = OpenAIError(f"cannot reach {self.url}: {reason}")
            if attempt < self.retries:
                time.sleep(self.retry_delay_s)
        else:
            assert last is not None
            raise last
        try:
            response = json.loads(payload)
            response["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise OpenAIError(f"{self.url} returned no chat completion: {payload[:_ERROR_BODY_CHARS]!r}") from None
        return response
