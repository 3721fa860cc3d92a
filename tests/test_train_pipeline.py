"""The SFT input pipeline: length grouping (less padding, one bucket per group, the same bucket on
every process, deterministic), the grouping rules, resumable state with pending samples, and
multi-worker prefetch equal to in-process encoding."""

from __future__ import annotations

import collections
import threading

import numpy as np
import pytest
from train_helpers import mixed_rows, text_row, write_jsonl

from omniagent_jax.processing import OmniProcessor
from omniagent_jax.train import grouping
from omniagent_jax.train.collate import collate
from omniagent_jax.train.config import load_config
from omniagent_jax.train.pipeline import SFTBatches
from omniagent_jax.train.sft_data import SampleEncoder

BUCKETS = (128, 256)  # mixed_rows: short rows ~70 tokens, long ones ~190


@pytest.fixture(scope="module")
def encoder():
    return SampleEncoder(OmniProcessor.from_pretrained(), data_root=".", max_length=512, vocab_remap=512)


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "mixed.jsonl", mixed_rows(24))


def _data(train_file, *extra):
    return load_config(None, [f"data.train_file={train_file}", f"data.buckets={list(BUCKETS)}", "data.batch_size=4", *extra]).data


def _take(batches: SFTBatches, n: int) -> list[tuple[list[int], int]]:
    return [(g.indices, g.length) for g in (next(batches) for _ in range(n))]


def _padded_tokens(batches: SFTBatches, n: int) -> tuple[int, int]:
    """(tokens after padding, tokens if each sample were padded only to its own bucket) over n steps."""
    padded = own = 0
    for _ in range(n):
        g = next(batches)
        padded += g.length * len(g.samples)
        own += sum(grouping.bucket_length(len(s["input_ids"]), BUCKETS) for s in g.samples)
    return padded, own


def test_group_by_length_cuts_padding_and_keeps_groups_in_one_bucket(mixed_file, encoder):
    steps = 12  # two epochs of 24 samples in groups of 4
    plain, plain_own = _padded_tokens(SFTBatches(_data(mixed_file, "data.group_by_length=false"), encoder, seed=1), steps)
    grouped = SFTBatches(_data(mixed_file), encoder, seed=1)
    padded, own = _padded_tokens(grouped, steps)
    # Grouped, every sample pays only its own bucket; ungrouped, a group of short rows holding one
    # long row pays 256 for each of its 4 rows (1 row in 4 is long: most groups do).
    assert padded == own
    assert plain - plain_own >= 5 * BUCKETS[0] and padded <= 0.8 * plain, (padded, plain)
    groups = [next(grouped) for _ in range(6)]
    for g in groups:
        lengths = [len(s["input_ids"]) for s in g.samples]
        assert g.length == grouping.bucket_length(max(lengths), BUCKETS)
        assert {grouping.slot_of(n, BUCKETS) for n in lengths} == {grouping.slot_of(g.length, BUCKETS)}  # one bucket
    assert {g.length for g in groups} == set(BUCKETS)


def test_grouped_order_is_deterministic_given_the_seed(mixed_file, encoder):
    a = _take(SFTBatches(_data(mixed_file), encoder, seed=3), 12)
    assert a == _take(SFTBatches(_data(mixed_file), encoder, seed=3), 12)
    assert a != _take(SFTBatches(_data(mixed_file), encoder, seed=4), 12)
    # Two epochs' worth of steps emit every sample (none is starved by grouping), none more than thrice.
    seen = collections.Counter(i for idx, _ in a for i in idx)
    assert set(seen) == set(range(24)) and max(seen.values()) <= 3


class _ThreadGather:
    """`gather` for n "processes" run as threads: every row is exchanged through a barrier."""

    def __init__(self, n: int):
        self.rows: list = [None] * n
        self.barrier = threading.Barrier(n, timeout=60)

    def __call__(self, p: int):
        def gather(row: np.ndarray) -> np.ndarray:
            self.rows[p] = row
            self.barrier.wait()
            out = np.stack(self.rows)
            self.barrier.wait()  # nobody overwrites a row before everyone has read them all
            return out

        return gather


def test_two_processes_emit_the_same_bucket_at_every_step(mixed_file, encoder):
    steps, gather, results, errors = 10, _ThreadGather(2), [None, None], []

    def run(p: int) -> None:
        try:
            b = SFTBatches(_data(mixed_file), encoder, seed=5, process_index=p, process_count=2, gather=gather(p))
            results[p] = ([next(b) for _ in range(steps)], b.samples_seen)
        except Exception as e:  # surfaced below; a dead thread would leave the other at the barrier
            errors.append(e)
            gather.barrier.abort()

    threads = [threading.Thread(target=run, args=(p,)) for p in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    (a, pulls_a), (b, pulls_b) = results
    assert [g.length for g in a] == [g.length for g in b] and len({g.length for g in a}) == 2
    for ga, gb in zip(a, b):
        assert len(ga.samples) == len(gb.samples) == 2  # each process holds half of the group of 4
        assert max(len(s["input_ids"]) for s in ga.samples + gb.samples) <= ga.length
    # Each process emits only its shard: even positions of the shuffled stream on 0, odd on 1.
    single = SFTBatches(_data(mixed_file, "data.group_by_length=false", "data.batch_size=1"), encoder, seed=5)
    stream = [next(single).indices[0] for _ in range(2 * max(pulls_a, pulls_b))]
    for groups, pulls, shard in ((a, pulls_a, stream[0::2]), (b, pulls_b, stream[1::2])):
        emitted = collections.Counter(i for g in groups for i in g.indices)
        assert not emitted - collections.Counter(shard[:pulls])


def test_resume_restores_grain_position_and_pending_samples(mixed_file, encoder):
    data = _data(mixed_file)
    first = SFTBatches(data, encoder, seed=7)
    _take(first, 3)
    state = first.get_state()
    assert state["pending"], "the test needs samples waiting in a queue at the checkpoint"
    expected = _take(first, 6)
    resumed = SFTBatches(data, encoder, seed=7)
    resumed.set_state(state)
    assert _take(resumed, 6) == expected
    # Without the pending samples the resumed order would differ.
    lost = SFTBatches(data, encoder, seed=7)
    lost.set_state({**state, "pending": []})
    assert _take(lost, 6) != expected


def test_decide_rules():
    group = 2
    row = lambda counts, age: [*counts, age, sum(counts)]  # noqa: E731
    # A full slot on every process wins, the smallest first.
    assert grouping.decide(np.array([row([2, 3, 0], 1), row([2, 2, 0], 1)]), group, 10) == (grouping.FULL, 0)
    assert grouping.decide(np.array([row([1, 3, 0], 1), row([2, 2, 0], 1)]), group, 10) == (grouping.FULL, 1)
    # Full on one process only: pull more, unless someone's oldest sample has waited max_wait pulls.
    assert grouping.decide(np.array([row([2, 0, 1], 3), row([1, 1, 0], 3)]), group, 10) is None
    assert grouping.decide(np.array([row([2, 0, 1], 10), row([1, 1, 0], 3)]), group, 10) == (grouping.OLDEST, -1)
    assert grouping.decide(np.array([row([0, 0, 1], 10), row([1, 1, 0], 3)]), group, 10) is None  # too few to emit
    queues = grouping.LengthQueues((128, 256), group)
    for pull, n in enumerate([300, 100, 200, 120]):
        queues.add(grouping.Pending(pull, pull, {"input_ids": np.zeros(n)}))
    assert list(queues.summary(pulls=5)) == [2, 1, 1, 5, 4]  # the 300-token sample sits past the last bucket
    assert [p.index for p in queues.take((grouping.OLDEST, -1))] == [0, 1]  # oldest first, across slots
    queues.add(grouping.Pending(9, 9, {"input_ids": np.zeros(60)}))
    assert [p.index for p in queues.take((grouping.FULL, 0))] == [3, 9] and queues.entries() == [[2, 2]]


def test_stale_samples_are_flushed_within_an_epoch(tmp_path, encoder):
    # 1 long row in 12: its bucket never fills a group of 4 within an epoch; rule 2 emits it padded.
    rows = write_jsonl(tmp_path / "rare.jsonl", mixed_rows(12, long_every=12))
    b = SFTBatches(_data(rows, "data.shuffle=false"), encoder, seed=0)
    groups = [next(b) for _ in range(4)]
    flushed = [g for g in groups if 0 in g.indices]
    assert flushed and flushed[0].length == 256
    assert b.samples_seen <= 2 * 12


def test_workers_prefetch_equals_in_process(mixed_file, encoder):
    plain = SFTBatches(_data(mixed_file), encoder, seed=9)
    workers = SFTBatches(_data(mixed_file, "data.workers=2"), encoder, seed=9)
    for _ in range(4):
        a, b = next(plain), next(workers)
        assert a.indices == b.indices and a.length == b.length
        for x, y in zip(a.samples, b.samples):
            np.testing.assert_array_equal(x["input_ids"], y["input_ids"])
            np.testing.assert_array_equal(x["labels"], y["labels"])
    state = workers.get_state()
    expected = _take(plain, 3)
    again = SFTBatches(_data(mixed_file, "data.workers=2"), encoder, seed=9)
    again.set_state(state)
    assert _take(again, 3) == expected


def test_bad_pending_sample_on_resume_is_a_clear_error(tmp_path, encoder):
    f = write_jsonl(tmp_path / "d.jsonl", mixed_rows(8))
    b = SFTBatches(_data(f, "data.shuffle=false"), encoder, seed=0)
    next(b)  # rows 1, 2, 3, 5 (short); the long rows 0 and 4 wait
    state = b.get_state()
    assert [i for _, i in state["pending"]] == [0, 4]
    index = state["pending"][0][1]
    rows = mixed_rows(8)
    rows[index] = "{not json"  # the file changed under the run
    write_jsonl(f, rows)
    with pytest.raises(RuntimeError, match=f"pending sample {index} no longer encodes"):
        SFTBatches(_data(f, "data.shuffle=false"), encoder, seed=0).set_state(state)


def test_collate_pads_to_the_group_length_and_rejects_a_longer_sample():
    prepared = [{"input_ids": np.arange(n), "labels": np.arange(n), "positions": np.zeros((3, n), np.int32)} for n in (5, 9)]
    out = collate(prepared, grad_accum=2, length=16, hidden=4)
    assert out["input_ids"].shape == (2, 1, 16) and out["attention_mask"].sum() == 14
    with pytest.raises(ValueError, match="a 9-token sample does not fit the padded length 8"):
        collate(prepared, grad_accum=1, length=8, hidden=4)


def test_text_row_lengths_fit_the_buckets(encoder):
    short, long = (len(encoder.encode(r)["input_ids"]) for r in (text_row(1), mixed_rows(1)[0]))
    assert short <= BUCKETS[0] < long <= BUCKETS[1]
