"""What keeps dedup's memory flat as data grows (bench/scale.py measures the whole pipeline): its indexes
(rlaif/steps/key_index.py) write older entries to sorted files and keep ~2 bytes a key in memory, its labels and
signatures sit in files too, and the answers are the same whether the index is in memory or on disk. Memory is
counted with tracemalloc (numpy reports its buffers to it): deterministic for a given input, no timing."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import rlaif.steps.key_index as key_index
from rlaif.steps.base import StepContext
from rlaif.steps.dedup import Dedup, DedupParams, optimal_bands
from rlaif.steps.key_index import BloomFilter, KeyIndex, LabelStore, merge_runs, sort_merge


@pytest.mark.parametrize("merge", [merge_runs, sort_merge])
def test_merge_runs_equals_a_stable_sort_of_both_runs(merge) -> None:
    rng = np.random.default_rng(0)
    for older, newer in [(0, 5), (5, 0), (100, 37), (1000, 1000), (3, 2000)]:
        k1, k2 = (np.sort(rng.integers(0, 40, n).astype(np.uint64)) for n in (older, newer))  # many equal keys
        d1, d2 = (rng.integers(0, 1 << 31, n).astype(np.uint32) for n in (older, newer))
        keys, values = merge((k1, d1), (k2, d2))
        order = np.argsort(np.concatenate([k1, k2]), kind="stable")
        assert np.array_equal(keys, np.concatenate([k1, k2])[order])
        assert np.array_equal(values, np.concatenate([d1, d2])[order])
        assert keys.dtype == np.uint64 and values.dtype == np.uint32


def test_bloom_filter_never_misses_a_key_and_passes_few_others() -> None:
    rng = np.random.default_rng(1)
    keys, others = (rng.integers(0, 1 << 63, n, dtype=np.uint64) * np.uint64(2) for n in (50_000, 200_000))
    bloom = BloomFilter(50_000)
    bloom.add(keys)
    assert bloom.maybe(keys).all()
    assert 0 < bloom.maybe(others + np.uint64(1)).mean() < 0.03  # 10 bits a key, 3 hashes: ~1.7% at capacity


@pytest.mark.parametrize(("chunk", "expected_keys"), [(7, None), (1 << 18, None), (7, 5000)])
def test_key_index_answers_like_a_dict_with_entries_in_memory_and_on_disk(monkeypatch, chunk, expected_keys) -> None:
    """Small memory budget and merge chunks, so entries go through memory runs, disk runs and chunked merges of
    disk runs; keys repeated up to 150 times (past a disk lookup's 2-block window) and keys never added. Its Bloom
    filter grows (rebuilt from the runs) unless sized for the keys expected."""
    monkeypatch.setattr(key_index, "_MERGE_CHUNK", chunk)
    rng = np.random.default_rng(2)
    index, expected = KeyIndex(memory_keys=300, expected_keys=expected_keys), {}
    first_filter = index._filter
    common = rng.integers(0, 1 << 63, 20, dtype=np.uint64)
    for batch in range(50):  # 5,000 keys: past the smallest filter's 4,096
        keys = np.concatenate([rng.integers(0, 1 << 63, 60, dtype=np.uint64), rng.choice(common, 40)])
        values = np.arange(batch * 100, batch * 100 + 100, dtype=np.uint32)
        wanted = np.concatenate([keys[:30], rng.choice(common, 10), rng.integers(0, 1 << 63, 30, dtype=np.uint64)])
        at, found = index.lookup(wanted)
        got = sorted(zip(at.tolist(), found.tolist(), strict=True))
        assert got == sorted((i, v) for i, key in enumerate(wanted.tolist()) for v in expected.get(key, []))
        index.add(keys, values)
        for key, value in zip(keys.tolist(), values.tolist(), strict=True):
            expected.setdefault(key, []).append(value)
    assert len(index._disk) >= 1 and len(index) == 5000
    assert max(len(v) for v in expected.values()) > 2 * key_index.FENCE
    assert (index._filter is first_filter) == (expected_keys is not None)  # sized: never rebuilt
    index.close()


def test_label_store_keeps_positions_and_any_label_by_number() -> None:
    positions, named = LabelStore(integers=True), LabelStore(integers=False)
    positions.append(list(range(5000)))
    named.append(["a", None, {"id": 3}, 7.5])
    named.append(["é" * 1000])
    assert positions.get([4999, 0, 17]) == [4999, 0, 17]
    assert named.get([4, 2, 1, 0]) == ["é" * 1000, {"id": 3}, None, "a"]
    named.close()


def corpus(count: int, seed: int = 0) -> list[dict]:
    """Unrelated 25-word texts, every tenth an exact copy and every tenth a near copy (one word changed) of an
    earlier one."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    words = rng.integers(0, len(vocab), (count, 25))
    texts: list[str] = []
    for i in range(count):
        row = list(vocab[words[i]])
        if i % 10 == 3:
            row = texts[i // 2].split()
        elif i % 10 == 7:
            row = texts[i // 2].split()
            row[5] = "changed"
        texts.append(" ".join(row))
    return [{"prompt": text, "id": f"r{i}"} for i, text in enumerate(texts)]


def run_dedup(records: list[dict], batch: int, total: int | None = None, **params) -> tuple[list, int]:
    """(dropped, how many kept); ``total``: the record count the runner would tell the step (its contexts')."""
    step = Dedup("dedup", DedupParams(column="prompt", **params), Path("."))
    step.setup(StepContext(records_total=total))
    dropped, kept = [], 0
    for first in range(0, len(records), batch):
        result = step.process(records[first : first + batch], StepContext(records_total=total))
        dropped += result.dropped
        kept += len(result.records)
    step.teardown()
    return dropped, kept


@pytest.mark.parametrize("id_column", [None, "id"])
def test_an_index_on_disk_finds_the_same_duplicates(monkeypatch, id_column) -> None:
    records = corpus(6000)
    in_memory = run_dedup(records, 500, id_column=id_column)
    monkeypatch.setattr(key_index, "MEMORY_KEYS", 4000)  # ~200 kept records' band keys, then to disk
    on_disk = run_dedup(records, 500, id_column=id_column)
    assert on_disk == in_memory and len(in_memory[0]) > 1000
    reasons = {reason for _, reason in in_memory[0]}
    assert reasons == {"duplicate (exact)", "near-duplicate"}
    # every dropped record points at a kept one
    dropped_ids = {record["id"] for record, _ in in_memory[0]}
    targets = [record["_duplicate_of"] for record, _ in in_memory[0]]
    assert not dropped_ids & {target if id_column else f"r{target}" for target in targets}


def test_dedup_sizes_its_bloom_filters_for_the_records_it_is_told_of(monkeypatch) -> None:
    """Told how many records come (the runner's ``records_total``), each index's filter is made once, big enough;
    not told, the filters grow. The same duplicates either way."""
    monkeypatch.setattr(key_index, "MEMORY_KEYS", 4000)  # the filters start small: unsized, they must grow
    made: list[int] = []

    class CountedFilter(BloomFilter):
        def __init__(self, capacity: int) -> None:
            super().__init__(capacity)
            made.append(self.capacity)

    monkeypatch.setattr(key_index, "BloomFilter", CountedFilter)
    records = corpus(6000)
    grown = run_dedup(records, 500)
    grew = len(made)
    made.clear()
    assert run_dedup(records, 500, total=len(records)) == grown
    assert grew > 2 and len(made) == 2  # the exact index's and the near index's, never rebuilt
    defaults = DedupParams(column="prompt")
    bands, _ = optimal_bands(defaults.threshold, defaults.num_perm)
    assert sorted(made) == [6000, 6000 * bands]


def dedup_memory(count: int, told: bool = False) -> tuple[int, int, int]:
    """(bytes the step holds after ``count`` records, the peak above the start, records kept); ``told``: its contexts
    say how many records come (as the engine's do), so its filters are sized for them from the first batch."""
    records = corpus(count)
    step = Dedup("dedup", DedupParams(column="prompt"), Path("."))
    ctx = StepContext(records_total=count if told else None)
    step.setup(ctx)
    kept = 0
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for first in range(0, count, 2000):
            kept += len(step.process(records[first : first + 2000], ctx).records)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    step.teardown()
    return held - start, peak - start, kept


@pytest.mark.parametrize("told", [False, True])
def test_dedup_holds_a_few_dozen_bytes_per_record_kept_once_its_index_is_on_disk(monkeypatch, told) -> None:
    monkeypatch.setattr(key_index, "MEMORY_KEYS", 20_000)  # ~1,000 kept records' band keys in memory
    small_held, _, small_kept = dedup_memory(8000, told)
    held, peak, kept = dedup_memory(24000, told)
    assert 0.8 * 24000 < kept < 24000  # the planted copies are dropped
    # What one more kept record costs once its keys are on disk (fixed costs, such as the word-hash cache and the
    # in-memory runs, cancel out): Bloom filter and fence bits for its 20 band keys and its exact key, and its
    # label. The in-memory index took ~410 bytes (its keys, a dict entry, a Python int).
    per_record = (held - small_held) / (kept - small_kept)
    assert per_record < 80, per_record
    # the transient peak above what is held: a batch's working set and one merge's chunks
    assert peak - held < 24_000_000, (peak, held)
