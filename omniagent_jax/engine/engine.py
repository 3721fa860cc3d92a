"""The inference engine: continuous batching over a paged KV cache with prefix reuse.

A request is a prompt (token ids + its `MediaInputs`) and sampling parameters.
Admission matches the longest cached prefix (full pages, chained hashes of tokens + media content +
rope positions) and allocates pages for the rest; prefill runs in chunks over the uncached suffix
only, and the towers encode only media with a placeholder in that suffix; decoding runs up to
`decode_steps` tokens per dispatch in one jitted loop over every active sequence, padded to shape
buckets (stop ids and token limits are applied on device; the host trims after the block). When
pages run out, the most recently admitted sequence is preempted (its pages released; it is
recomputed later from its tokens so far).

The engine starts on the model's own arrays (no second copy of the weights); `update_weights` is the
only way new ones come in, copied into buffers the engine owns (the copy survives the caller donating
or deleting its arrays, as a train step does). Host state per sequence lives in `sequence.py`, the
jitted steps in `steps.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omniagent_jax.engine import steps
from omniagent_jax.engine.paged_cache import PagedKVCache
from omniagent_jax.engine.pages import OutOfPages, PagePool
from omniagent_jax.engine.requests import Completion, EngineStats, Request
from omniagent_jax.engine.sampling import sample_tokens
from omniagent_jax.engine.sequence import SequenceState
from omniagent_jax.model import Thinker

__all__ = ["Completion", "Engine", "EngineStats", "Request"]


class Engine:
    """Generation over many sequences at once with a paged, prefix-shared KV cache.

    `generate(requests)` runs them to completion; `submit` / `step` / `cancel` / `pop_finished` drive
    it incrementally (a server does that).
    """

    def __init__(self, model: Thinker, *, page_size: int = 16, num_pages: int = 1024, max_batch: int = 16,
                 prefill_chunk: int = 512, decode_steps: int = 8):
        if decode_steps < 1:
            raise ValueError("decode_steps must be >= 1")
        text = model.config.text
        graphdef, state = nnx.split(model)
        # A module of its own over the model's arrays, not copies: a 7B engine must not hold its weights
        # twice. Those arrays stay the caller's (never donated) until `update_weights` brings the
        # engine's own buffers.
        self.model: Thinker = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))  # new Variables, same arrays
        self._graphdef = graphdef
        self._owns_weights = False
        self._take_snapshot()
        self.decode_steps = decode_steps  # decode steps per dispatch: host work once per this many tokens
        self.pool = PagePool(num_pages, page_size)
        self.page_size = page_size
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.k_pages, self.v_pages = PagedKVCache.allocate(
            num_layers=text.num_hidden_layers, num_pages=num_pages, page_size=page_size,
            num_kv_heads=text.num_key_value_heads, head_dim=text.head_dim, dtype=model.dtype,
        )
        self.waiting: list[SequenceState] = []
        self.running: list[SequenceState] = []
        self.finished: dict[str, Completion] = {}
        self.stats = EngineStats()
        self._ids = itertools.count()

    # ------------------------------------------------------------------ public API

    def update_weights(self, params: nnx.State | Mapping) -> None:
        """Takes new weights: `params` is `nnx.state(model, nnx.Param)` of a model with this engine's
        structure (or the same as a pure dict, `nnx.to_pure_dict(state)`), every parameter with the same
        shape and dtype. They are copied into the engine's own buffers (the caller's arrays stay
        theirs: donating or deleting them afterwards is safe), and every prefix-cache entry is dropped,
        since pages computed with the old weights must never be reused. Requests in flight would mix
        old and new weights, so the engine must be idle (finish or cancel them first)."""
        if self.has_work():
            raise RuntimeError(
                f"update_weights needs an idle engine: {len(self.running)} running and {len(self.waiting)} waiting requests"
            )
        current = nnx.state(self.model, nnx.Param)
        old_leaves, treedef = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(current))
        given = dict(_named_leaves(params))
        new_leaves = []
        for path, old in old_leaves:
            name = jax.tree_util.keystr(path)
            if name not in given:
                raise ValueError(f"update_weights: parameter {name} is missing")
            new = given.pop(name)
            if getattr(new, "shape", None) != old.shape or getattr(new, "dtype", None) != old.dtype:
                raise ValueError(
                    f"update_weights: parameter {name} is {getattr(new, 'dtype', type(new).__name__)}{getattr(new, 'shape', '')}"
                    f", the engine's is {old.dtype}{old.shape}"
                )
            new_leaves.append(new)
        if given:
            raise ValueError(f"update_weights: unknown parameter {next(iter(given))}")
        copies = steps.copy_into([x for _, x in old_leaves], new_leaves, donate=self._owns_weights)
        self._owns_weights = True
        nnx.replace_by_pure_dict(current, jax.tree_util.tree_unflatten(treedef, copies))
        nnx.update(self.model, current)
        self._take_snapshot()
        self.pool.drop_prefix_cache()

    def _take_snapshot(self) -> None:
        # The steps take the weights as a flat list: flattening the module on every step costs host time.
        _, state = nnx.split(self.model)
        self._leaves, treedef = jax.tree_util.tree_flatten(state)
        self._forward, self._decode_loop = steps.compiled(self._graphdef, treedef)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """The stops of requests that name none: the model's, read from its checkpoint's generation config."""
        return self.model.config.stop_token_ids

    def submit(self, request: Request) -> str:
        if request.request_id is None:
            request = dataclasses.replace(request, request_id=f"req-{next(self._ids)}")
        if request.sampling.stop_token_ids is None:
            sampling = dataclasses.replace(request.sampling, stop_token_ids=self.stop_token_ids)
            request = dataclasses.replace(request, sampling=sampling)
        seq = SequenceState(request, self.model, self.page_size)
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

    def _preempt_for(self, seq: SequenceState) -> bool:
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

    def _ensure_pages(self, seq: SequenceState, num_tokens: int) -> bool:
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

    def _run(self, seqs: list[SequenceState], starts: list[int], ends: list[int]) -> tuple[jax.Array, jax.Array]:
        b = steps.bucket(len(seqs))
        t = steps.bucket(max(e - s for s, e in zip(starts, ends)))
        d = self.model.config.text.hidden_size
        ids = np.zeros((b, t), np.int32)
        positions = np.zeros((3, b, t), np.int32)
        page_table = steps.page_table([s.pages for s in seqs], b)
        context_len = np.zeros(b, np.int32)
        num_new = np.zeros(b, np.int32)
        media_mask = np.zeros((b, t), bool)
        media_rows = None
        for i, (seq, start, end) in enumerate(zip(seqs, starts, ends)):
            n = end - start
            ids[i, :n] = seq.tokens[start:end]
            positions[:, i, :n] = seq.positions(start, end)
            context_len[i], num_new[i] = start, n
            if seq.placed and start < len(seq.prompt):
                stop = min(end, len(seq.prompt))
                slots, rows = self.model.media_embeddings(seq.prompt, seq.media, start, stop)
                if len(slots):
                    self.stats.tower_items += seq.items_in(start, stop)
                    if media_rows is None:
                        media_rows = jnp.zeros((b, t, d), self.model.dtype)
                    media_rows = media_rows.at[i, slots - start].set(rows.astype(self.model.dtype))
                    media_mask[i, slots - start] = True
        if media_rows is None:
            media_rows = jnp.zeros((1, 1, d), self.model.dtype)
        logits, greedy, self.k_pages, self.v_pages = self._forward(
            self._leaves, self.k_pages, self.v_pages, page_table, context_len, num_new, ids, media_rows, media_mask, positions
        )
        return logits[: len(seqs)], greedy[: len(seqs)]

    def _prefill(self, seqs: list[SequenceState]) -> None:
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
            seq.prefilled += end - start
            self._register_full_pages(seq)
            if end == len(seq.tokens):
                done.append((seq, row, best))
        if done:
            self._sample([s for s, _, _ in done], jnp.stack([r for _, r, _ in done]), jnp.stack([b for _, _, b in done]))

    def _decode(self, seqs: list[SequenceState]) -> None:
        """Up to `decode_steps` tokens for every decoding sequence in one dispatch."""
        for seq in list(seqs):
            if seq in self.running:
                self._ensure_pages(seq, seq.num_cached + self._limit(seq))
        seqs = [s for s in seqs if s in self.running]  # some may have been preempted
        if not seqs:
            return
        limits = [self._limit(s) for s in seqs]
        num_steps = min(self.decode_steps, steps.bucket(max(limits)))  # one compile per power of two up to decode_steps
        b = steps.bucket(len(seqs))
        stop_ids = np.full((b, steps.bucket(max(len(s.params.stop_token_ids) for s in seqs), minimum=4)), -1, np.int32)
        for i, seq in enumerate(seqs):
            stop_ids[i, : len(seq.params.stop_token_ids)] = seq.params.stop_token_ids
        pad = b - len(seqs)
        tokens, logps, entropies, self.k_pages, self.v_pages = self._decode_loop(
            self._leaves, self.k_pages, self.v_pages, steps.page_table([s.pages for s in seqs], b),
            np.array([s.num_cached for s in seqs] + [0] * pad, np.int32),
            np.array(limits + [0] * pad, np.int32),
            np.array([s.output[-1] for s in seqs] + [0] * pad, np.int32),
            np.array([s.rope_delta for s in seqs] + [0] * pad, np.int32),
            stop_ids, *steps.sampling_rows([s.params for s in seqs], [len(s.output) for s in seqs], b),
            num_steps=num_steps, sample=any(s.params.temperature > 0 for s in seqs),
            with_stats=any(s.params.logprobs for s in seqs),
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

    def _limit(self, seq: SequenceState) -> int:
        """Tokens this sequence may still produce in the next decode dispatch."""
        return min(self.decode_steps, seq.params.max_new_tokens - len(seq.output))

    def _append(self, seq: SequenceState, token: int, logp: float, entropy: float) -> bool:
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

    def _sample(self, seqs: list[SequenceState], logits: jax.Array, greedy: jax.Array) -> None:
        stats = any(s.params.logprobs for s in seqs)
        if not stats and all(s.params.temperature == 0 for s in seqs):
            token = np.asarray(greedy)  # computed inside the forward: no second dispatch over the vocabulary
            logp = entropy = np.full(len(seqs), np.nan, np.float32)
        else:
            rows = steps.bucket(len(seqs))  # bucketed rows: one compile per batch-size bucket
            if rows > len(seqs):
                logits = jnp.concatenate([logits, jnp.zeros((rows - len(seqs), logits.shape[1]), logits.dtype)])
            drawn = sample_tokens(
                logits, *steps.sampling_rows([s.params for s in seqs], [len(s.output) for s in seqs], rows), with_stats=stats
            )
            token, logp, entropy = (np.asarray(x)[: len(seqs)] for x in drawn)
        for seq, tok, lp, ent in zip(seqs, token.tolist(), logp.tolist(), entropy.tolist()):
            self._append(seq, tok, lp, ent)

    def _register_full_pages(self, seq: SequenceState) -> None:
        full = seq.num_cached // self.page_size
        if full <= len(seq.hashes):
            return
        hashes = seq.prefix_hashes(full * self.page_size)
        for i in range(len(seq.hashes), full):
            self.pool.prefix.insert(hashes[i], seq.pages[i])
        seq.hashes = hashes

    def _retire(self, seq: SequenceState, reason: str) -> None:
        self.running.remove(seq)
        self._finish(seq, reason)

    def _finish(self, seq: SequenceState, reason: str) -> None:
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
            prefilled_tokens=seq.prefilled,
            logprobs=list(seq.logprobs) if want else None,
            entropies=list(seq.entropies) if want else None,
        )


def _named_leaves(params) -> list[tuple[str, object]]:
    """(name, array) of every parameter, named as in `nnx.to_pure_dict` (`['model']['layers'][0]...`)."""
    tree = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    return [(jax.tree_util.keystr(path), x) for path, x in jax.tree_util.tree_leaves_with_path(tree)]
