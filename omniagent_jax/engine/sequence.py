"""Host state of one request in flight: its tokens, rope positions, media placement and the
content keys that make prefix-cache hashes tell different media apart."""

from __future__ import annotations

import numpy as np

from omniagent_jax.engine.pages import page_hashes
from omniagent_jax.engine.requests import Request
from omniagent_jax.model import Thinker
from omniagent_jax.processing.media_inputs import MediaInputs

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # spreads an item's key over its tokens


class SequenceState:
    """One request being served: prompt + generated tokens, pages, and what is cached of it."""

    def __init__(self, request: Request, model: Thinker, page_size: int):
        self.request = request
        self.id = request.request_id
        self.params = request.sampling
        self.prompt = np.asarray(request.input_ids, np.int64).reshape(-1)
        self.media = request.media if request.media is not None else MediaInputs()
        positions, delta = model.rope_index(self.prompt[None], None, self.media)
        self.prompt_positions = positions[:, 0]
        self.rope_delta = int(delta[0])
        self.placed = model.placeholder_slots(self.prompt, self.media)  # (item, placeholder positions); checks counts
        self.keys = np.zeros(len(self.prompt), np.uint64)  # 0 for text, else the item's content key mixed with the index
        for item, where in self.placed:
            digest = np.uint64(self.media.content_key(item))
            self.keys[where] = (digest + np.arange(len(where), dtype=np.uint64) * _GOLDEN) | np.uint64(1)
        self.page_size = page_size
        self.output: list[int] = []
        self.logprobs: list[float] = []
        self.entropies: list[float] = []
        self.pages: list[int] = []
        self.hashes: list[bytes] = []  # chained hashes of the full pages registered so far
        self._hashes: list[bytes] = []  # memo of `prefix_hashes`
        self.num_cached = 0  # tokens whose KV sits in `pages`
        self.cached_from_prefix = 0
        self.prefilled = 0  # tokens run through prefill for this request, recomputation included
        self.finish_reason: str | None = None

    @property
    def tokens(self) -> np.ndarray:
        return np.concatenate([self.prompt, np.asarray(self.output, np.int64)])

    def positions(self, start: int, end: int) -> np.ndarray:
        """Rope positions `[3, end − start]`: TMRoPE for the prompt, `index + delta` for generated tokens."""
        n = len(self.prompt)
        head = self.prompt_positions[:, start:min(end, n)]
        tail = np.arange(max(start, n), end) + self.rope_delta
        return np.concatenate([head, np.broadcast_to(tail, (3, len(tail)))], axis=1)

    def media_keys(self, start: int, end: int) -> np.ndarray:
        keys = np.zeros(end - start, np.uint64)
        n = min(end, len(self.prompt))
        if start < n:
            keys[: n - start] = self.keys[start:n]
        return keys

    def items_in(self, start: int, end: int) -> int:
        """Media items with a placeholder in `[start, end)`: those the towers encode for that chunk."""
        return sum(1 for _, where in self.placed if ((where >= start) & (where < end)).any())

    @property
    def needs_prefill(self) -> bool:
        # Every token but the one the next decode step feeds must be cached before decoding.
        return self.num_cached < len(self.prompt) + len(self.output) - (1 if self.output else 0) or not self.output

    def prefix_hashes(self, num_tokens: int | None = None) -> list[bytes]:
        """Chained hashes of the full pages of the first `num_tokens` tokens (default: all), memoised:
        tokens are only ever appended, so each page is hashed once."""
        tokens = self.tokens if num_tokens is None else self.tokens[:num_tokens]
        full = len(tokens) // self.page_size
        if len(self._hashes) < full:
            self._hashes = page_hashes(
                tokens, self.media_keys(0, len(tokens)), self.positions(0, len(tokens)), self.page_size, self._hashes
            )
        return self._hashes[:full]
