"""The inference engine: continuous batching over a paged KV cache with prefix reuse.

A request is a prompt (token ids + its `MediaInputs`) and sampling parameters.
Admission matches the longest cached prefix (full pages, chained hashes of tokens + media content +
rope positions) and allocates pages for the rest; prefill runs in chunks over the uncached suffix
only, and the towers encode only media with a placeholder in that suffix; decoding runs up to
`decode_steps` tokens per dispatch in one jitted loop over every active sequence, padded to shape
buckets (stop ids and token limits are applied on device; the host trims after the block). When
pages run out, the most recently admitted sequence is preempted (its pages released; it is
recomputed later from its tokens so far).

Requests fail alone: `submit` checks every value first (`check_request`: a `RequestError` names the
field); in a step, a sequence whose media encode raises or whose logits turn non-finite finishes
with finish_reason "error" (pages released) while the batch goes on. A failed device call fails its
batch only; if it consumed the donated KV buffers, they are rebuilt and the other sequences recomputed.

The engine starts on the model's own arrays (no second copy of the weights); `update_weights` is the
only way new ones come in, copied into buffers the engine owns (the copy survives the caller donating
or deleting its arrays, as a train step does). With a `mesh`, weights and KV pages are sharded over its
`tensor` axis (`placement.py`). Per-sequence host state: `sequence.py`; jitted steps: `steps.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from omniagent_jax.engine import placement, steps, weights
from omniagent_jax.engine.pages import OutOfPages, PagePool
from omniagent_jax.engine.requests import Completion, EngineStats, Request, RequestError, check_request
from omniagent_jax.engine.sampling import sample_tokens
from omniagent_jax.engine.sequence import SequenceState
from omniagent_jax.model import Thinker

__all__ = ["Completion", "Engine", "EngineStats", "Request", "RequestError"]


class Engine:
    """Generation over many sequences at once with a paged, prefix-shared KV cache.

    `generate(requests)` runs them to completion; `submit` / `step` / `cancel` / `pop_finished` drive
    it incrementally (a server does that).
    """

    def __init__(self, model: Thinker, *, page_size: int = 16, num_pages: int = 1024, max_batch: int = 16,
                 prefill_chunk: int = 512, decode_steps: int = 8, mesh: Mesh | None = None):
        """`mesh`: weights and KV pages sharded over its `tensor` axis (`placement`); None: the default device."""
        if decode_steps < 1:
            raise ValueError("decode_steps must be >= 1")
        self.mesh = None if mesh is None else placement.check_mesh(mesh)
        graphdef, state = nnx.split(model)
        # A module of its own over the model's arrays, not copies: a 7B engine must not hold its weights
        # twice. Arrays already where the mesh wants them stay the caller's (never donated) until
        # `update_weights` brings the engine's own buffers; the others are moved tensor by tensor.
        leaves, owned = placement.place(jax.tree.leaves(state), placement.param_shardings(state, mesh, model.config))
        self._shared = {id(x) for x, mine in zip(leaves, owned) if not mine}  # the caller's arrays we run on
        self.model: Thinker = nnx.merge(graphdef, jax.tree.unflatten(jax.tree.structure(state), leaves))  # new Variables
        self._graphdef = graphdef
        self._kv_sharding = placement.kv_sharding(mesh, model.config.text.num_key_value_heads)
        self._take_snapshot()
        self.decode_steps = decode_steps  # decode steps per dispatch: host work once per this many tokens
        self.pool = PagePool(num_pages, page_size)
        self.page_size = page_size
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self._allocate_cache()
        self.waiting: list[SequenceState] = []
        self.running: list[SequenceState] = []
        self.finished: dict[str, Completion] = {}
        self._live: dict[str, SequenceState] = {}  # waiting or running, by id
        self.stats = EngineStats()
        self._ids = itertools.count()

    # ------------------------------------------------------------------ public API

    def update_weights(self, params: nnx.State | Mapping, *, on_tensor: Callable[[int], None] | None = None) -> None:
        """Takes new weights: `params` is `nnx.state(model, nnx.Param)` of a model with this engine's
        structure (or the same as a pure dict, `nnx.to_pure_dict(state)`), every parameter with the same
        shape and dtype, in any layout (the trainer's FSDP/tensor shardings over all devices included).
        They are copied into the engine's own buffers in the engine's layout (the caller's arrays stay
        theirs: donating or deleting them afterwards is safe) — from another layout tensor by tensor, each
        old one freed as its new one lands (`placement.reshard`; `on_tensor(i)` after each) — and every
        prefix-cache entry is dropped, since pages computed with the old weights must never be reused.
        Requests in flight would mix old and new weights, so the engine must be idle."""
        if self.has_work():
            raise RuntimeError(f"update_weights needs an idle engine: {len(self.running)} running and "
                               f"{len(self.waiting)} waiting requests")
        current = nnx.state(self.model, nnx.Param)
        old_leaves, treedef = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(current))
        new_leaves = weights.matching_leaves(old_leaves, params)
        old = [x for _, x in old_leaves]
        copies = weights.copy_in(old, new_leaves, [id(x) not in self._shared for x in old], on_tensor)
        self._shared = set()
        nnx.replace_by_pure_dict(current, jax.tree_util.tree_unflatten(treedef, copies))
        nnx.update(self.model, current)
        self._take_snapshot()
        self.pool.drop_prefix_cache()

    def _take_snapshot(self) -> None:
        # The steps take the weights as a flat list: flattening the module on every step costs host time.
        _, state = nnx.split(self.model)
        self._leaves, treedef = jax.tree_util.tree_flatten(state)
        self._forward, self._decode_loop = steps.compiled(self._graphdef, treedef, self._kv_sharding)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """The stops of requests that name none: the model's, read from its checkpoint's generation config."""
        return self.model.config.stop_token_ids

    def submit(self, request: Request) -> str:
        """Queues `request` and returns its id. Raises `RequestError` (a ValueError naming the field)
        before anything is queued when a value is out of range, its media do not match its
        placeholders, it could never fit the page pool, or its id is already in flight."""
        if request.request_id is None:
            request = dataclasses.replace(request, request_id=f"req-{next(self._ids)}")
        elif request.request_id in self._live:
            raise RequestError("request_id", f"{request.request_id!r} is already in flight")
        if request.sampling.stop_token_ids is None:
            sampling = dataclasses.replace(request.sampling, stop_token_ids=self.stop_token_ids)
            request = dataclasses.replace(request, sampling=sampling)
        check_request(request, self.model.config.text.vocab_size)
        try:
            seq = SequenceState(request, self.model, self.page_size)
        except Exception as e:  # placeholder/feature mismatches, grids rope_index cannot lay out
            raise RequestError("media", f"do not fit the prompt: {e}") from e
        need = self.pool.pages_for(len(seq.prompt) + seq.params.max_new_tokens)
        if need > self.pool.num_pages - 1:
            raise RequestError(
                "max_new_tokens",
                f"request {seq.id} needs up to {need} pages ({len(seq.prompt)} prompt + {seq.params.max_new_tokens} new tokens) "
                f"but the pool has {self.pool.num_pages - 1}",
            )
        self.waiting.append(seq)
        self._live[seq.id] = seq
        return seq.id

    def cancel(self, request_id: str) -> None:
        """Finishes a request in flight with finish_reason "cancelled" and frees its pages; unknown ids are ignored."""
        seq = self._live.get(request_id)
        if seq is not None:
            self._drop(seq)
            self._finish(seq, "cancelled")

    def generated(self, request_id: str) -> list[int] | None:
        """The tokens a request in flight has sampled so far (a copy), or None when it is not in flight."""
        seq = self._live.get(request_id)
        return None if seq is None else list(seq.output)

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
        self._preempt(victims[-1])
        return True

    def _preempt(self, seq: SequenceState) -> None:
        """Back to the front of the queue with no pages: it is recomputed from its tokens so far."""
        self.running.remove(seq)
        self.pool.release(seq.pages)
        seq.pages, seq.hashes, seq.num_cached = [], [], 0
        self.waiting.insert(0, seq)
        self.stats.preemptions += 1

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

    def _run(self, seqs: list[SequenceState], starts: list[int], ends: list[int]):
        """One forward over `[start, end)` of each sequence → (the sequences still in it, as (seq, start, end),
        their logits, argmax and all-finite flags). The media of each sequence are encoded on their own
        first, so an encode that raises fails that sequence alone; a failed device call fails the batch."""
        d = self.model.config.text.hidden_size
        kept, media = [], []
        for seq, start, end in zip(seqs, starts, ends):
            slots, rows = np.zeros(0, np.int64), None
            if seq.placed and start < len(seq.prompt):
                stop = min(end, len(seq.prompt))
                try:
                    slots, rows = self.model.media_embeddings(seq.prompt, seq.media, start, stop)
                except Exception as e:
                    self._fail(seq, f"media encoding failed: {_one_line(e)}")
                    continue
                self.stats.tower_items += seq.items_in(start, stop) if len(slots) else 0
            kept.append((seq, start, end))
            media.append((slots, rows))
        if not kept:
            return [], None, None, None
        b = steps.bucket(len(kept))
        t = steps.bucket(max(e - s for _, s, e in kept), minimum=steps.MIN_PREFILL_TOKENS)
        ids, positions, media_mask = np.zeros((b, t), np.int32), np.zeros((3, b, t), np.int32), np.zeros((b, t), bool)
        context_len, num_new = np.zeros(b, np.int32), np.zeros(b, np.int32)
        media_rows = None
        for i, ((seq, start, end), (slots, rows)) in enumerate(zip(kept, media)):
            ids[i, : end - start] = seq.tokens[start:end]
            positions[:, i, : end - start] = seq.positions(start, end)
            context_len[i], num_new[i] = start, end - start
            if len(slots):
                if media_rows is None:
                    media_rows = jnp.zeros((b, t, d), self.model.dtype)
                media_rows = media_rows.at[i, slots - start].set(rows.astype(self.model.dtype))
                media_mask[i, slots - start] = True
        if media_rows is None:
            media_rows = jnp.zeros((1, 1, d), self.model.dtype)
        try:
            logits, greedy, finite, self.k_pages, self.v_pages = self._forward(
                self._leaves, self.k_pages, self.v_pages, steps.page_table([s.pages for s, _, _ in kept], b), context_len,
                num_new, ids, media_rows, media_mask, positions)
            finite = np.asarray(finite)[: len(kept)]
        except Exception as e:
            self._device_failure([s for s, _, _ in kept], e)
            return [], None, None, None
        return kept, logits[: len(kept)], greedy[: len(kept)], finite

    def _prefill(self, seqs: list[SequenceState]) -> None:
        starts = [seq.num_cached for seq in seqs]
        ends = [min(len(seq.tokens), start + self.prefill_chunk) for seq, start in zip(seqs, starts)]
        kept, logits, greedy, finite = self._run(seqs, starts, ends)
        done = []
        for i, (seq, start, end) in enumerate(kept):
            if not finite[i]:  # its new KV may be NaN too: never registered, released with the sequence
                self._fail(seq, "non-finite logits in prefill")
                continue
            seq.num_cached = end
            self.stats.prefilled_tokens += end - start
            seq.prefilled += end - start
            self._register_full_pages(seq)
            if end == len(seq.tokens):
                done.append((i, seq))
        if done:
            rows = np.array([i for i, _ in done])
            self._sample([seq for _, seq in done], logits[rows], greedy[rows])

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
        b = steps.bucket(len(seqs), minimum=steps.MIN_DECODE_ROWS)
        stop_ids = np.full((b, steps.bucket(max(len(s.params.stop_token_ids) for s in seqs), minimum=4)), -1, np.int32)
        for i, seq in enumerate(seqs):
            stop_ids[i, : len(seq.params.stop_token_ids)] = seq.params.stop_token_ids
        pad = b - len(seqs)
        try:
            tokens, logps, entropies, bad, self.k_pages, self.v_pages = self._decode_loop(
                self._leaves, self.k_pages, self.v_pages, steps.page_table([s.pages for s in seqs], b),
                np.array([s.num_cached for s in seqs] + [0] * pad, np.int32),
                np.array(limits + [0] * pad, np.int32),
                np.array([s.output[-1] for s in seqs] + [0] * pad, np.int32),
                np.array([s.rope_delta for s in seqs] + [0] * pad, np.int32),
                stop_ids, *steps.sampling_rows([s.params for s in seqs], [len(s.output) for s in seqs], b),
                num_steps=num_steps, sample=any(s.params.temperature > 0 for s in seqs),
                with_stats=any(s.params.logprobs for s in seqs),
            )
            tokens, logps, entropies, bad = np.asarray(tokens), np.asarray(logps), np.asarray(entropies), np.asarray(bad)
        except Exception as e:
            self._device_failure(seqs, e)
            return
        self.stats.decode_steps += num_steps
        for row, (seq, limit) in enumerate(zip(seqs, limits)):
            if bad[row]:
                self._fail(seq, "non-finite logits in decoding")
                continue
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
        self._drop(seq)
        self._finish(seq, reason)
        return True

    def _sample(self, seqs: list[SequenceState], logits: jax.Array, greedy: jax.Array) -> None:
        stats = any(s.params.logprobs for s in seqs)
        if not stats and all(s.params.temperature == 0 for s in seqs):
            token = np.asarray(greedy)  # computed inside the forward: no second dispatch over the vocabulary
            logp = entropy = np.full(len(seqs), np.nan, np.float32)
        else:
            rows = steps.bucket(len(seqs), minimum=steps.MIN_DECODE_ROWS)  # one compile per batch-size bucket
            if rows > len(seqs):
                logits = jnp.concatenate([logits, jnp.zeros((rows - len(seqs), logits.shape[1]), logits.dtype)])
            try:
                drawn = sample_tokens(
                    logits, *steps.sampling_rows([s.params for s in seqs], [len(s.output) for s in seqs], rows), with_stats=stats
                )
                token, logp, entropy = (np.asarray(x)[: len(seqs)] for x in drawn)
            except Exception as e:
                self._device_failure(seqs, e)
                return
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

    def _drop(self, seq: SequenceState) -> None:
        for queue in (q for q in (self.waiting, self.running) if seq in q):
            queue.remove(seq)

    def _fail(self, seq: SequenceState, message: str) -> None:
        """Finishes one sequence with finish_reason "error" (pages released); the others go on."""
        self._drop(seq)
        self.stats.errors += 1
        self._finish(seq, "error", message)

    def _device_failure(self, seqs: list[SequenceState], error: Exception) -> None:
        """A jitted call over `seqs` raised: they fail. If it had consumed the donated KV buffers, those are
        rebuilt, every other running sequence goes back to waiting (recomputed from its tokens) and the
        prefix cache, whose pages are gone, is dropped."""
        for seq in seqs:  # all still running: a call's sequences are unfinished
            self._fail(seq, f"device step failed: {_one_line(error)}")
        if self.k_pages.is_deleted() or self.v_pages.is_deleted():
            self._allocate_cache()
            for seq in reversed(list(self.running)):
                self._preempt(seq)
            self.pool.drop_prefix_cache()

    def _allocate_cache(self) -> None:
        text = self.model.config.text
        shape = (text.num_hidden_layers, text.num_key_value_heads, self.pool.num_pages, self.page_size, text.head_dim)
        self.k_pages, self.v_pages = placement.allocate_pages(shape, self.model.dtype, self._kv_sharding)

    def _finish(self, seq: SequenceState, reason: str, error: str | None = None) -> None:
        if seq.pages:
            self.pool.release(seq.pages)
            seq.pages = []
        seq.finish_reason = reason
        self._live.pop(seq.id, None)
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
            error=error,
        )


def _one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"[:300]
