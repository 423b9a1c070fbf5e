"""What keeps dedup's memory small as data grows (bench/scale.py measures the whole pipeline): the index merges its
runs in linear time without sorting copies, keeps the signatures on disk, and holds a few hundred bytes per record
kept. Memory is counted with tracemalloc (numpy reports its buffers to it): deterministic for a given input, no
timing."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import rlaif.steps.dedup as dedup_module
from rlaif.steps.base import StepContext
from rlaif.steps.dedup import Dedup, DedupParams, merge_runs


def test_merge_runs_equals_a_stable_sort_of_both_runs() -> None:
    rng = np.random.default_rng(0)
    for older, newer in [(0, 5), (5, 0), (100, 37), (1000, 1000), (3, 2000)]:
        k1, k2 = (np.sort(rng.integers(0, 40, n).astype(np.uint64)) for n in (older, newer))  # many equal keys
        d1, d2 = (rng.integers(0, 1 << 31, n).astype(np.uint32) for n in (older, newer))
        keys, docs = merge_runs((k1, d1), (k2, d2))
        order = np.argsort(np.concatenate([k1, k2]), kind="stable")
        assert np.array_equal(keys, np.concatenate([k1, k2])[order])
        assert np.array_equal(docs, np.concatenate([d1, d2])[order])
        assert keys.dtype == np.uint64 and docs.dtype == np.uint32


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
    return [{"prompt": text} for text in texts]


def dedup_memory(count: int) -> tuple[int, int, int]:
    """(bytes the step holds after ``count`` records, the peak above the start, records kept)."""
    records = corpus(count)
    step = Dedup("dedup", DedupParams(column="prompt"), Path("."))
    step.setup(StepContext())
    kept = 0
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for first in range(0, count, 2000):
            kept += len(step.process(records[first : first + 2000], StepContext()).records)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held - start, peak - start, kept


def test_dedup_holds_a_few_hundred_bytes_per_record_kept() -> None:
    small_held, _, small_kept = dedup_memory(4000)
    held, peak, kept = dedup_memory(16000)
    assert 0.8 * 16000 < kept < 16000  # the planted copies are dropped
    # What one more kept record costs (fixed costs, such as the word-hash cache, cancel out): its band keys in the
    # runs (20 x 12 bytes) and their filter bits, its label and its exact key. Its signature (128 x 4 bytes) is on
    # disk, not here (the old in-memory index took ~900 bytes).
    per_record = (held - small_held) / (kept - small_kept)
    assert 250 < per_record < 550, per_record
    # the transient peak above what is held: a batch's working set and one merge, not copies of every run
    assert peak - held < 24_000_000, (peak, held)


def test_runs_capped_in_size_find_the_same_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    records = corpus(6000)

    def run() -> tuple[list, int]:
        step = Dedup("dedup", DedupParams(column="prompt"), Path("."))
        step.setup(StepContext())
        dropped = []
        for first in range(0, len(records), 500):
            dropped += step.process(records[first : first + 500], StepContext()).dropped
        return dropped, len(step._index._runs)  # type: ignore[union-attr]

    uncapped, few = run()
    monkeypatch.setattr(dedup_module, "_MAX_RUN_KEYS", 20_000)  # ~1,000 kept records' band keys
    capped, many = run()
    assert capped == uncapped and len(uncapped) > 1000
    assert many > few
