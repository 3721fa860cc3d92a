"""The inference engine: continuous batching over a paged KV cache with prefix reuse.

A request is a prompt (token ids + the processor's media inputs for it) and sampling parameters.
Admission matches the longest cached prefix (full pages, chained hashes of tokens + media content +
rope positions) and allocates pages for the rest; prefill runs in chunks over the uncached suffix
only, and the towers encode only media with a placeholder in that suffix; decoding runs up to
`decode_steps` tokens per dispatch in one jitted loop over every active sequence, padded to shape
buckets (stop ids and token limits are applied on device; the host trims after the block). When
pages run out, the most recently admitted sequence is preempted (its pages released; it is
recomputed later from its tokens so far).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omniagent_jax.engine.paged_cache import PagedKVCache
from omniagent_jax.engine.pages import NULL_PAGE, OutOfPages, PagePool, page_hashes
from omniagent_jax.engine.sampling import SamplingParams, choose_tokens, greedy_tokens, sample_tokens, sampling_arrays
from omniagent_jax.model import Thinker
from omniagent_jax.processing.layout import audio_token_count, vision_token_count

MEDIA_INPUT_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "video_second_per_grid",
    "input_features",
    "feature_attention_mask",
)


@dataclasses.dataclass
class Request:
    """One prompt. `media` holds the processor's outputs for this prompt alone (HF names)."""

    input_ids: np.ndarray
    sampling: SamplingParams = SamplingParams()
    media: dict | None = None
    use_audio_in_video: bool = False
    request_id: str | None = None


@dataclasses.dataclass
class Completion:
    request_id: str
    tokens: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose KV came from the prefix cache
    logprobs: list[float] | None = None
    entropies: list[float] | None = None


@dataclasses.dataclass
class EngineStats:
    prefilled_tokens: int = 0  # tokens run through prefill (incl. recomputation after preemption)
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    decode_steps: int = 0
    preemptions: int = 0
    tower_items: int = 0  # media items encoded by the towers
    peak_pages: int = 0  # most pages referenced at once


def _bucket(n: int, minimum: int = 1) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


class _Sequence:
    """Host state of one request in flight."""

    def __init__(self, request: Request, model: Thinker, page_size: int):
        self.request = request
        self.id = request.request_id
        self.params = request.sampling
        self.prompt = np.asarray(request.input_ids, np.int64).reshape(-1)
        media = request.media or {}
        positions, delta = model.rope_index(
            self.prompt[None],
            image_grid_thw=media.get("image_grid_thw"),
            video_grid_thw=media.get("video_grid_thw"),
            video_second_per_grid=media.get("video_second_per_grid"),
            feature_attention_mask=media.get("feature_attention_mask"),
            use_audio_in_video=request.use_audio_in_video,
        )
        self.prompt_positions = positions[:, 0]
        self.rope_delta = int(delta[0])
        self.media = _MediaIndex(self.prompt, media, model)
        self.page_size = page_size
        self.output: list[int] = []
        self.logprobs: list[float] = []
        self.entropies: list[float] = []
        self.pages: list[int] = []
        self.hashes: list[bytes] = []  # chained hashes of the full pages registered so far
        self._hashes: list[bytes] = []  # memo of `prefix_hashes`
        self.num_cached = 0  # tokens whose KV sits in `pages`
        self.cached_from_prefix = 0
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
            keys[: n - start] = self.media.keys[start:n]
        return keys

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
            self._hashes = page_hashes(tokens, self.media_keys(0, len(tokens)), self.positions(0, len(tokens)), self.page_size, self._hashes)
        return self._hashes[:full]


class _MediaIndex:
    """Which media item and feature row fills each placeholder token of a prompt, plus content keys."""

    def __init__(self, prompt: np.ndarray, media: dict, model: Thinker):
        cfg = model.config
        self.model = model
        self.media = media
        self.keys = np.zeros(len(prompt), np.uint64)
        self.slots: list[tuple[str, int, np.ndarray]] = []  # (kind, item, token positions)
        merge = cfg.vision.spatial_merge_size
        for kind, token_id, counts in (
            ("audio", cfg.audio_token_id, _audio_counts(media)),
            ("image", cfg.image_token_id, _grid_counts(media.get("image_grid_thw"), merge)),
            ("video", cfg.video_token_id, _grid_counts(media.get("video_grid_thw"), merge)),
        ):
            where = np.flatnonzero(prompt == token_id)
            if len(where) != sum(counts):
                raise ValueError(f"{kind} placeholder/feature mismatch: {len(where)} placeholder tokens, media gives {sum(counts)}")
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)
            for item in range(len(counts)):
                positions = where[offsets[item] : offsets[item + 1]]
                digest = int.from_bytes(hashlib.blake2b(self._content(kind, item), digest_size=8).digest(), "little")
                self.keys[positions] = (np.uint64(digest) + np.arange(len(positions), dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
                self.slots.append((kind, item, positions))

    def _rows(self, kind: str, item: int):
        m = self.media
        if kind == "audio":
            fmask = np.asarray(m["feature_attention_mask"])
            return np.asarray(m["input_features"])[item : item + 1], fmask[item : item + 1]
        rows_key, grid_key = ("pixel_values", "image_grid_thw") if kind == "image" else ("pixel_values_videos", "video_grid_thw")
        grid = np.asarray(m[grid_key]).reshape(-1, 3)
        sizes = np.concatenate([[0], np.cumsum(grid.prod(axis=1))]).astype(int)
        return np.asarray(m[rows_key])[sizes[item] : sizes[item + 1]], grid[item : item + 1]

    def _content(self, kind: str, item: int) -> bytes:
        a, b = self._rows(kind, item)
        return kind.encode() + np.ascontiguousarray(a).tobytes() + np.ascontiguousarray(b).tobytes()

    def embeddings(self, start: int, end: int) -> tuple[list[np.ndarray], list[jax.Array]]:
        """Media embeddings for the placeholder tokens in `[start, end)`; only items that have one there are encoded."""
        where, rows = [], []
        for kind, item, positions in self.slots:
            inside = (positions >= start) & (positions < end)
            if not inside.any():
                continue
            a, b = self._rows(kind, item)
            feats = self.model.encode_audios(a, b) if kind == "audio" else self.model.encode_images(a, b)
            where.append(positions[inside] - start)
            rows.append(feats[np.flatnonzero(inside)])
        return where, rows


def _grid_counts(grid, merge: int) -> list[int]:
    return [] if grid is None else [vision_token_count(g, merge) for g in np.asarray(grid).reshape(-1, 3)]


def _audio_counts(media: dict) -> list[int]:
    if media.get("input_features") is None:
        return []
    return [audio_token_count(int(n)) for n in np.asarray(media["feature_attention_mask"]).sum(axis=-1)]


def _page_table(seqs: list[_Sequence], rows: int) -> np.ndarray:
    """`[rows, M]` page tables (M bucketed; unused entries and padding rows point at the null page)."""
    table = np.full((rows, _bucket(max(len(s.pages) for s in seqs))), NULL_PAGE, np.int32)
    for i, seq in enumerate(seqs):
        table[i, : len(seq.pages)] = seq.pages
    return table


def _sampling_rows(seqs: list[_Sequence], rows: int) -> tuple[np.ndarray, ...]:
    """The sampling arrays of `seqs` (next step = tokens generated so far), padded to `rows` rows."""
    pad = rows - len(seqs)
    return sampling_arrays([s.params for s in seqs] + [seqs[0].params] * pad, [len(s.output) for s in seqs] + [0] * pad)


def _merge(graphdef, treedef, leaves) -> Thinker:
    return nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, leaves))


def _forward(graphdef, treedef, leaves, k_pages, v_pages, page_table, context_len, num_new, ids, media_rows, media_mask, positions):
    """One step over `[B, T]` new tokens → logits at each row's last real token, their argmax (so greedy
    rows need no second dispatch), and the updated pages."""
    model = _merge(graphdef, treedef, leaves)
    embeds = model.embed_tokens(ids)
    embeds = jnp.where(media_mask[..., None], media_rows.astype(embeds.dtype), embeds)
    cache = PagedKVCache(k_pages, v_pages, page_table, context_len, num_new)
    hidden, cache = model.decode(embeds, positions, cache)
    last = hidden[jnp.arange(ids.shape[0]), jnp.maximum(num_new - 1, 0)]
    logits = model.logits(last)
    return logits, greedy_tokens(logits), cache.k_pages, cache.v_pages


def _decode_loop(graphdef, treedef, leaves, k_pages, v_pages, page_table, context_len, limit, ids, rope_delta, stop_ids, temperature,
                 top_k, top_p, seeds, steps, *, num_steps: int, sample: bool, with_stats: bool):
    """`num_steps` decode steps in one dispatch. Row b feeds `ids[b]` at position `context_len[b]`, then
    its own sampled tokens; it runs while `i < limit[b]` and it has not sampled a stop id (later steps
    write to the null page and their tokens are dropped by the host). Returns `[num_steps, B]` tokens,
    log-probs, entropies and the updated pages."""
    model = _merge(graphdef, treedef, leaves)
    batch = ids.shape[0]

    def step(carry, i):
        k_pages, v_pages, ids, live = carry
        active = live & (i < limit)
        position = context_len + i
        rope = jnp.broadcast_to((position + rope_delta)[None, :, None], (3, batch, 1))
        cache = PagedKVCache(k_pages, v_pages, page_table, position, active.astype(jnp.int32))
        hidden, cache = model.decode(model.embed_tokens(ids[:, None]), rope, cache)
        logits = model.logits(hidden[:, 0])
        if sample or with_stats:
            token, logp, entropy = choose_tokens(logits, temperature, top_k, top_p, seeds, steps + i, with_stats=with_stats)
        else:
            token = greedy_tokens(logits)
            logp = entropy = jnp.full((batch,), jnp.nan, jnp.float32)
        stopped = jnp.any(token[:, None] == stop_ids, axis=1)
        return (cache.k_pages, cache.v_pages, token, active & ~stopped), (token, logp, entropy)

    (k_pages, v_pages, _, _), (tokens, logps, entropies) = jax.lax.scan(
        step, (k_pages, v_pages, ids, jnp.ones(batch, bool)), jnp.arange(num_steps)
    )
    return tokens, logps, entropies, k_pages, v_pages


@functools.lru_cache(maxsize=8)
def _compiled(graphdef, treedef):
    """The jitted model steps for one model structure (shared by every engine on an equal structure)."""
    forward = jax.jit(functools.partial(_forward, graphdef, treedef), donate_argnums=(1, 2))
    decode = jax.jit(functools.partial(_decode_loop, graphdef, treedef), donate_argnums=(1, 2),
                     static_argnames=("num_steps", "sample", "with_stats"))
    return forward, decode


class Engine:
    """Generation over many sequences at once with a paged, prefix-shared KV cache.

    `generate(requests)` runs them to completion; `submit` / `step` / `cancel` / `pop_finished` drive
    it incrementally (a server does that).
    """

    def __init__(self, model: Thinker, *, page_size: int = 16, num_pages: int = 1024, max_batch: int = 16, prefill_chunk: int = 512,
                 decode_steps: int = 8):
        if decode_steps < 1:
            raise ValueError("decode_steps must be >= 1")
        text = model.config.text
        self.model = model
        self.decode_steps = decode_steps  # decode steps per dispatch: host work once per this many tokens
        self.sync_weights()
        self.pool = PagePool(num_pages, page_size)
        self.page_size = page_size
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.k_pages, self.v_pages = PagedKVCache.allocate(
            num_layers=text.num_hidden_layers, num_pages=num_pages, page_size=page_size,
            num_kv_heads=text.num_key_value_heads, head_dim=text.head_dim, dtype=model.dtype,
        )
        self.waiting: list[_Sequence] = []
        self.running: list[_Sequence] = []
        self.finished: dict[str, Completion] = {}
        self.stats = EngineStats()
        self._ids = itertools.count()

    # ------------------------------------------------------------------ public API

    def sync_weights(self) -> None:
        """Takes a fresh snapshot of `self.model`'s weights (call after updating them in place).

        The engine passes the weights to its jitted steps as a flat list: flattening the NNX module
        on every step costs more host time than a small model's whole decode step.
        """
        graphdef, state = nnx.split(self.model)
        self._leaves, treedef = jax.tree_util.tree_flatten(state)
        self._forward, self._decode_loop = _compiled(graphdef, treedef)

    def submit(self, request: Request) -> str:
        if request.request_id is None:
            request = dataclasses.replace(request, request_id=f"req-{next(self._ids)}")
        seq = _Sequence(request, self.model, self.page_size)
        need = self.pool.pages_for(len(seq.prompt) + seq.params.max_new_tokens)
        if need > self.pool.num_pages - 1:
            raise ValueError(
                f"request {seq.id} needs up to {need} pages ({len(seq.prompt)} prompt + {seq.params.max_new_tokens} new tokens) "
                f"but the pool has {self.pool.num_pages - 1}"
            )
        self.waiting.append(seq)
        return seq.id

    def cancel(self, request_id: str) -> None:
        for queue in (self.waiting, self.running):
            for seq in queue:
                if seq.id == request_id:
                    queue.remove(seq)
                    self._finish(seq, "cancelled")
                    return

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> None:
        self._admit()
        prefilling = [s for s in self.running if s.needs_prefill]
        if prefilling:
            self._prefill(prefilling)
        decoding = [s for s in self.running if not s.needs_prefill and s.finish_reason is None]
        if decoding:
            self._decode(decoding)

    def pop_finished(self) -> dict[str, Completion]:
        done, self.finished = self.finished, {}
        return done

    def generate(self, requests: Iterable[Request]) -> list[Completion]:
        ids = [self.submit(r) for r in requests]
        while self.has_work():
            self.step()
        done = self.pop_finished()
        return [done[i] for i in ids]

    # ------------------------------------------------------------------ scheduling

    def _admit(self) -> None:
        in_flight = {h for s in self.running if s.needs_prefill for h in s.prefix_hashes()[len(s.hashes):]}
        for seq in list(self.waiting):
            if len(self.running) >= self.max_batch:
                break
            hashes = seq.prefix_hashes()
            total = len(seq.tokens)
            # The last token is always recomputed (its logits start decoding), so never share its page.
            usable = min(len(hashes), (total - 1) // self.page_size)
            matched = self.pool.prefix.match(hashes[:usable])
            if len(matched) < usable and hashes[len(matched)] in in_flight:
                continue  # another sequence is prefilling this very prefix: wait and share it
            need = self.pool.pages_for(total) - len(matched)
            revived = sum(1 for page in matched if self.pool.refcount[page] == 0)  # evictable now, held once retained
            if need > self.pool.num_free - revived - self._reserve():
                break
            self.pool.retain(matched)
            seq.pages = matched + self.pool.allocate(need)
            seq.hashes = hashes[: len(matched)]
            seq.num_cached = len(matched) * self.page_size
            if not seq.output:
                seq.cached_from_prefix = seq.num_cached
            self.stats.cached_tokens += seq.num_cached
            self.waiting.remove(seq)
            self.running.append(seq)
            in_flight.update(hashes[len(matched):])
            self._note_peak()

    def _note_peak(self) -> None:
        self.stats.peak_pages = max(self.stats.peak_pages, int((self.pool.refcount > 0).sum()))

    def _reserve(self) -> int:
        """Pages kept back so running sequences can grow by one page each before preemption kicks in."""
        return min(len(self.running), self.pool.num_free)

    def _preempt_for(self, seq: _Sequence) -> bool:
        """Frees pages by preempting the most recently admitted other sequence; False if none."""
        victims = [s for s in self.running if s is not seq]
        if not victims:
            return False
        victim = victims[-1]
        self.running.remove(victim)
        self.pool.release(victim.pages)
        victim.pages, victim.hashes, victim.num_cached = [], [], 0
        self.waiting.insert(0, victim)
        self.stats.preemptions += 1
        return True

    def _ensure_pages(self, seq: _Sequence, num_tokens: int) -> bool:
        need = self.pool.pages_for(num_tokens) - len(seq.pages)
        while need > 0:
            try:
                seq.pages += self.pool.allocate(need)
                self._note_peak()
                return True
            except OutOfPages:
                if not self._preempt_for(seq):
                    raise
        return True

    # ------------------------------------------------------------------ model steps

    def _run(self, seqs: list[_Sequence], starts: list[int], ends: list[int]) -> tuple[jax.Array, jax.Array]:
        b = _bucket(len(seqs))
        t = _bucket(max(e - s for s, e in zip(starts, ends)))
        d = self.model.config.text.hidden_size
        ids = np.zeros((b, t), np.int32)
        positions = np.zeros((3, b, t), np.int32)
        page_table = _page_table(seqs, b)
        context_len = np.zeros(b, np.int32)
        num_new = np.zeros(b, np.int32)
        media_mask = np.zeros((b, t), bool)
        media_rows = None
        for i, (seq, start, end) in enumerate(zip(seqs, starts, ends)):
            n = end - start
            ids[i, :n] = seq.tokens[start:end]
            positions[:, i, :n] = seq.positions(start, end)
            context_len[i], num_new[i] = start, n
            if start < len(seq.prompt):
                where, rows = seq.media.embeddings(start, min(end, len(seq.prompt)))
                self.stats.tower_items += len(rows)
                for w, r in zip(where, rows):
                    if media_rows is None:
                        media_rows = jnp.zeros((b, t, d), self.model.dtype)
                    media_rows = media_rows.at[i, w].set(r.astype(self.model.dtype))
                    media_mask[i, w] = True
        if media_rows is None:
            media_rows = jnp.zeros((1, 1, d), self.model.dtype)
        logits, greedy, self.k_pages, self.v_pages = self._forward(
            self._leaves, self.k_pages, self.v_pages, page_table, context_len, num_new, ids, media_rows, media_mask, positions
        )
        return logits[: len(seqs)], greedy[: len(seqs)]

    def _prefill(self, seqs: list[_Sequence]) -> None:
        starts, ends = [], []
        for seq in seqs:
            target = len(seq.tokens)
            start = seq.num_cached
            end = min(target, start + self.prefill_chunk)
            starts.append(start)
            ends.append(end)
        logits, greedy = self._run(seqs, starts, ends)
        done = []
        for seq, start, end, row, best in zip(seqs, starts, ends, logits, greedy):
            seq.num_cached = end
            self.stats.prefilled_tokens += end - start
            self._register_full_pages(seq)
            if end == len(seq.tokens):
                done.append((seq, row, best))
        if done:
            self._sample([s for s, _, _ in done], jnp.stack([r for _, r, _ in done]), jnp.stack([b for _, _, b in done]))

    def _decode(self, seqs: list[_Sequence]) -> None:
        """Up to `decode_steps` tokens for every decoding sequence in one dispatch."""
        for seq in list(seqs):
            if seq in self.running:
                self._ensure_pages(seq, seq.num_cached + self._limit(seq))
        seqs = [s for s in seqs if s in self.running]  # some may have been preempted
        if not seqs:
            return
        limits = [self._limit(s) for s in seqs]
        num_steps = min(self.decode_steps, _bucket(max(limits)))  # one compile per power of two up to decode_steps
        b = _bucket(len(seqs))
        stop_ids = np.full((b, _bucket(max(len(s.params.stop_token_ids) for s in seqs), minimum=4)), -1, np.int32)
        for i, seq in enumerate(seqs):
            stop_ids[i, : len(seq.params.stop_token_ids)] = seq.params.stop_token_ids
        pad = b - len(seqs)
        tokens, logps, entropies, self.k_pages, self.v_pages = self._decode_loop(
            self._leaves, self.k_pages, self.v_pages, _page_table(seqs, b),
            np.array([s.num_cached for s in seqs] + [0] * pad, np.int32),
            np.array(limits + [0] * pad, np.int32),
            np.array([s.output[-1] for s in seqs] + [0] * pad, np.int32),
            np.array([s.rope_delta for s in seqs] + [0] * pad, np.int32),
            stop_ids, *_sampling_rows(seqs, b),
            num_steps=num_steps, sample=any(s.params.temperature > 0 for s in seqs), with_stats=any(s.params.logprobs for s in seqs),
        )
        self.stats.decode_steps += num_steps
        tokens, logps, entropies = np.asarray(tokens), np.asarray(logps), np.asarray(entropies)
        for row, (seq, limit) in enumerate(zip(seqs, limits)):
            for i in range(limit):
                seq.num_cached += 1
                if self._append(seq, int(tokens[i, row]), float(logps[i, row]), float(entropies[i, row])):
                    break
            if seq.finish_reason is None:
                self._register_full_pages(seq)

    def _limit(self, seq: _Sequence) -> int:
        """Tokens this sequence may still produce in the next decode dispatch."""
        return min(self.decode_steps, seq.params.max_new_tokens - len(seq.output))

    def _append(self, seq: _Sequence, token: int, logp: float, entropy: float) -> bool:
        """Records one sampled token; retires the sequence (True) on a stop id or its token limit."""
        seq.output.append(token)
        seq.logprobs.append(logp)
        seq.entropies.append(entropy)
        if token in seq.params.stop_token_ids:
            reason = "stop"
        elif len(seq.output) >= seq.params.max_new_tokens:
            reason = "length"
        else:
            return False
        self._register_full_pages(seq)
        self._retire(seq, reason)
        return True

    def _sample(self, seqs: list[_Sequence], logits: jax.Array, greedy: jax.Array) -> None:
        stats = any(s.params.logprobs for s in seqs)
        if not stats and all(s.params.temperature == 0 for s in seqs):
            token = np.asarray(greedy)  # computed inside the forward: no second dispatch over the vocabulary
            logp = entropy = np.full(len(seqs), np.nan, np.float32)
        else:
            rows = _bucket(len(seqs))  # bucketed rows: one compile per batch-size bucket
            if rows > len(seqs):
                logits = jnp.concatenate([logits, jnp.zeros((rows - len(seqs), logits.shape[1]), logits.dtype)])
            drawn = sample_tokens(logits, *_sampling_rows(seqs, rows), with_stats=stats)
            token, logp, entropy = (np.asarray(x)[: len(seqs)] for x in drawn)
        for seq, tok, lp, ent in zip(seqs, token.tolist(), logp.tolist(), entropy.tolist()):
            self._append(seq, tok, lp, ent)

    def _register_full_pages(self, seq: _Sequence) -> None:
        full = seq.num_cached // self.page_size
        if full <= len(seq.hashes):
            return
        hashes = seq.prefix_hashes(full * self.page_size)
        for i in range(len(seq.hashes), full):
            self.pool.prefix.insert(hashes[i], seq.pages[i])
        seq.hashes = hashes

    def _retire(self, seq: _Sequence, reason: str) -> None:
        self.running.remove(seq)
        self._finish(seq, reason)

    def _finish(self, seq: _Sequence, reason: str) -> None:
        if seq.pages:
            self.pool.release(seq.pages)
            seq.pages = []
        seq.finish_reason = reason
        want = seq.params.logprobs
        self.finished[seq.id] = Completion(
            request_id=seq.id,
            tokens=list(seq.output),
            finish_reason=reason,
            prompt_tokens=len(seq.prompt),
            cached_tokens=seq.cached_from_prefix,
            logprobs=list(seq.logprobs) if want else None,
            entropies=list(seq.entropies) if want else None,
        )
