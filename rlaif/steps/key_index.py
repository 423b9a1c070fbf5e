"""State that grows with the corpus, kept off the heap: a uint64-key -> uint32-value multimap whose older entries live
in sorted runs on disk, and a store of labels by number. Dedup's near-duplicate index (band keys -> kept doc) and
exact index (text hash -> kept doc) are KeyIndexes; its ``_duplicate_of`` labels sit in a LabelStore.

Why: at 1M records the in-memory index held ~410 bytes per kept record (its sorted runs, a Python dict of exact keys
and a list of labels), so peak RSS grew 2.4x from 100k to 1M records (bench/scale.py). Here a KeyIndex holds, per key,
~10 bits of Bloom filter and 1/32 of a fence key in memory; the rest is in files the page cache serves. A caller
that knows how many keys will come (``expected_keys``) gets a filter sized for them at once: growing one re-adds
every key each time.

A lookup: keys the filter cannot rule out (the hits and ~2% of the others) are searched in the in-memory runs, then
in each disk run, where the fences (every FENCE-th key, in memory) locate each key's block and one pread per distinct
block reads a window of 2 blocks. Nothing is memory-mapped: what the files hold stays in the page cache, not in this
process's RSS.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FENCE = 32  # keys per block of a disk run: a lookup gathers 2 blocks (512 bytes of keys); fences take 1/4 byte a key
MEMORY_KEYS = 1 << 20  # entries kept in memory (12 MB) before they are written out as a disk run
_MERGE_CHUNK = 1 << 18  # entries per chunk when disk runs are merged (3 MB a side)
_ADD_CHUNK = 1 << 16  # keys per pass when bits are set
_BLOOM_BITS_PER_KEY = 10  # with 3 hashes: ~1.7% of absent keys pass at capacity
_HASH_MULTIPLIERS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9], dtype=np.uint64)


class BloomFilter:
    """A Bloom filter over uint64 keys that are already hashes: 3 slots from the high halves of the key times 3 odd
    constants, mapped onto ``bits`` by multiply-shift (no power-of-two rounding, so memory follows the capacity)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 1 << 12)
        self.size = _BLOOM_BITS_PER_KEY * self.capacity
        self.bits = np.zeros((self.size + 7) // 8, dtype=np.uint8)
        self.count = 0

    def _slot_numbers(self, keys: np.ndarray) -> list[np.ndarray]:
        """The bit number of each of the 3 slots of every key, one array per hash."""
        size = np.uint64(self.size)
        return [(((keys * multiplier) >> np.uint64(32)) * size) >> np.uint64(32) for multiplier in _HASH_MULTIPLIERS]

    def _slots(self, keys: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(byte, bit mask) of each of the 3 slots of every key."""
        return [
            ((slot >> np.uint64(3)).astype(np.intp), _BIT[(slot & np.uint64(7)).astype(np.intp)])
            for slot in self._slot_numbers(keys)
        ]

    def add(self, keys: np.ndarray) -> None:
        # One fancy-indexed |= per bit position instead of np.bitwise_or.at (7 of dedup's 53 s at 1M records):
        # within a group every write sets the same bit, so repeated bytes come out right. The slots are grouped by
        # a stable argsort of their 3-bit position (a radix sort on uint8: linear), not by 24 boolean masks.
        # In chunks: the temporaries (~33 bytes a slot) stay a few MB when the whole filter is rebuilt.
        for first in range(0, len(keys), _ADD_CHUNK):
            slots = np.concatenate(self._slot_numbers(keys[first : first + _ADD_CHUNK]))
            position = (slots & np.uint64(7)).astype(np.uint8)
            ends = np.cumsum(np.bincount(position, minlength=8))
            byte = (slots >> np.uint64(3)).astype(np.intp)[np.argsort(position, kind="stable")]
            for k, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
                self.bits[byte[start:end]] |= _BIT[k]
        self.count += len(keys)

    def maybe(self, keys: np.ndarray) -> np.ndarray:
        found = np.ones(len(keys), dtype=bool)
        for byte, bit in self._slots(keys):
            found &= (self.bits[byte] & bit) > 0
        return found

    def full(self) -> bool:
        return self.count > self.capacity


_BIT = np.array([1 << k for k in range(8)], dtype=np.uint8)


def merge_runs(older: tuple[np.ndarray, np.ndarray], newer: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Two sorted (keys, values) runs as one, ``older``'s entries first among equal keys (what a stable sort of the
    two, concatenated, gives). Linear: each entry of ``newer`` lands after the ``older`` keys <= it; no argsort.
    For runs in memory (up to ``memory_keys``): its temporaries take ~9 bytes an entry, ``sort_merge``'s ~2.5x that."""
    (k1, d1), (k2, d2) = older, newer
    at = np.searchsorted(k1, k2, side="right") + np.arange(len(k2))
    rest = np.ones(len(k1) + len(k2), dtype=bool)
    rest[at] = False
    keys, values = np.empty(len(rest), dtype=k1.dtype), np.empty(len(rest), dtype=d1.dtype)
    keys[at], keys[rest] = k2, k1
    values[at], values[rest] = d2, d1
    return keys, values


def sort_merge(older: tuple[np.ndarray, np.ndarray], newer: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """``merge_runs`` by a stable argsort of the two runs concatenated: numpy's stable sort of 64-bit keys is timsort,
    which finds the two runs and merges them in one galloping pass, 1.4-3x faster than ``merge_runs`` (2^18-2^22
    keys a side) but with ~2.5x its temporaries: used where the runs are chunks of bounded size (disk-run merges)."""
    (k1, d1), (k2, d2) = older, newer
    keys = np.concatenate([k1, k2])
    order = np.argsort(keys, kind="stable")
    return keys[order], np.concatenate([d1, d2])[order]


class DiskRun:
    """A sorted run on disk: packed (uint64 key, uint32 value) records in one file, read with pread (a memory map
    would put whole large folios of the page cache in this process's RSS at each touch: measured, 64 lookups mapped
    33 MB), with every FENCE-th key in memory."""

    def __init__(self, path: Path, count: int, fences: np.ndarray) -> None:
        self.path, self.count, self.fences = path, count, fences  # fences gathered as the run was written
        self._fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.count

    def read(self, first: int, count: int) -> np.ndarray:
        """Records ``first`` .. ``first + count`` (fewer at the end of the run), a fresh array."""
        data = os.pread(self._fd, count * RECORD.itemsize, first * RECORD.itemsize)
        return np.frombuffer(data, dtype=RECORD)

    def lookup(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``wanted``, value) for every entry whose key is wanted."""
        if not self.count or not len(wanted):
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.uint32)
        # The first entry of a key sits after the last fence below it, within one block: a 2-block window holds it
        # and at least FENCE - 1 entries after it. Each distinct window is read once.
        block = (np.searchsorted(self.fences, wanted, side="left") - 1).clip(min=0)
        blocks, row = np.unique(block, return_inverse=True)
        size = 2 * FENCE * RECORD.itemsize
        data = b"".join(os.pread(self._fd, size, int(b) * FENCE * RECORD.itemsize).ljust(size, b"\0") for b in blocks)
        windows = np.frombuffer(data, dtype=RECORD).reshape(len(blocks), 2 * FENCE)
        position = blocks[row, None] * FENCE + np.arange(2 * FENCE)
        equal = (windows["key"][row] == wanted[:, None]) & (position < self.count)
        which, column = np.nonzero(equal)
        values = [windows["value"][row[which], column]]
        # A key repeated past its window (a band shared by many kept docs): read on until it ends.
        for i in np.flatnonzero(equal[:, -1] & (position[:, -1] + 1 < self.count)).tolist():
            first = int(position[i, -1]) + 1
            while first < self.count:
                more = self.read(first, 4 * FENCE)
                same = more["value"][more["key"] == wanted[i]]
                which = np.concatenate([which, np.full(len(same), i)])
                values.append(same)
                if len(same) < len(more):
                    break
                first += len(more)
        return which, np.concatenate(values)

    def close(self) -> None:
        os.close(self._fd)
        self.path.unlink(missing_ok=True)


RECORD = np.dtype([("key", "<u8"), ("value", "<u4")])  # packed: 12 bytes an entry


class KeyIndex:
    """uint64 key -> uint32 value, a multimap that only grows. New entries go to sorted runs in memory, merged as they
    grow (a binary counter); past ``memory_keys`` they are written out as one disk run, and disk runs are merged,
    chunk by chunk, while the newer is at least half the older (O(log n) runs; each entry rewritten O(log n)
    times). A Bloom filter over every key keeps most absent keys from reaching the runs."""

    def __init__(
        self, memory_keys: int | None = None, directory: str | None = None, expected_keys: int | None = None
    ) -> None:
        self.memory_keys = memory_keys or MEMORY_KEYS  # read when built, so that tests can make it small
        self._dir = tempfile.TemporaryDirectory(prefix="rlaif-index-", dir=directory)
        self._memory: list[tuple[np.ndarray, np.ndarray]] = []
        self._disk: list[DiskRun] = []
        # Sized for the keys the caller expects, when it knows: growing re-adds every key at each 1.5x (at 1M records
        # dedup's band keys were added ~2.6 times over, a quarter of its index time); grown past that as before.
        self._filter = BloomFilter(max(self.memory_keys, expected_keys or 0))
        self._written = 0

    def __len__(self) -> int:
        return sum(len(keys) for keys, _ in self._memory) + sum(len(run) for run in self._disk)

    def add(self, keys: np.ndarray, values: np.ndarray, presorted: bool = False) -> None:
        """Add entries; ``presorted``: ``keys`` are in ascending order already (the caller sorted them elsewhere)."""
        if not len(keys):
            return
        # Not stable: among equal keys a lookup returns values in no particular order (dedup sorts candidates).
        order = slice(None) if presorted else np.argsort(keys)
        self._memory.append((keys[order], values[order].astype(np.uint32)))
        while len(self._memory) > 1 and len(self._memory[-2][0]) <= len(self._memory[-1][0]):
            self._memory.append(merge_runs(self._memory.pop(-2), self._memory.pop()))
        self._filter.add(keys)
        if self._filter.full():  # rebuilt for 1.5x the keys held: 10-15 bits a key
            self._filter = BloomFilter(len(self) * 3 // 2)
            for chunk in self._all_keys():
                self._filter.add(chunk)
        if sum(len(k) for k, _ in self._memory) >= self.memory_keys:
            self._spill()

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index into ``keys``, value) for every entry whose key is one of ``keys``, in no particular order."""
        where = np.flatnonzero(self._filter.maybe(keys))
        wanted = keys[where]
        found_at, found_values = [], []
        for run_keys, run_values in self._memory:
            low = np.searchsorted(run_keys, wanted, side="left")
            counts = np.searchsorted(run_keys, wanted, side="right") - low
            at = np.repeat(low - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            found_at.append(np.repeat(where, counts))
            found_values.append(run_values[at])
        for run in self._disk:
            which, values = run.lookup(wanted)
            found_at.append(where[which])
            found_values.append(values)
        if not found_at:
            return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.uint32)
        return np.concatenate(found_at), np.concatenate(found_values).astype(np.uint32)

    def _spill(self) -> None:
        keys, values = self._memory[0]
        for run in self._memory[1:]:
            keys, values = merge_runs((keys, values), run)
        self._memory = []
        self._disk.append(self._write([(keys, values)]))
        del keys, values
        while len(self._disk) > 1 and 2 * len(self._disk[-1]) >= len(self._disk[-2]):
            newer, older = self._disk.pop(), self._disk.pop()
            self._disk.append(self._write(_merged_chunks(older, newer)))
            older.close()
            newer.close()

    def _write(self, chunks: Any) -> DiskRun:
        path = Path(self._dir.name) / f"run-{self._written}"
        self._written += 1
        fences, count = [], 0
        with path.open("wb") as file:
            for keys, values in chunks:
                records = np.empty(len(keys), dtype=RECORD)
                records["key"], records["value"] = keys, values
                records.tofile(file)
                fences.append(keys[-count % FENCE :: FENCE].astype(np.uint64))  # every FENCE-th key of the run
                count += len(keys)
        return DiskRun(path, count, np.concatenate(fences))

    def _all_keys(self):
        for keys, _ in self._memory:
            yield keys
        for run in self._disk:
            for first in range(0, len(run), _MERGE_CHUNK):
                yield run.read(first, _MERGE_CHUNK)["key"]

    def close(self) -> None:
        for run in self._disk:
            run.close()
        self._disk, self._memory = [], []
        self._dir.cleanup()


def _merged_chunks(older: DiskRun, newer: DiskRun):
    """The entries of two disk runs in key order, a chunk at a time (only two chunks and their merge in memory)."""
    i = j = 0
    while i < len(older) or j < len(newer):
        a, b = older.read(i, _MERGE_CHUNK), newer.read(j, _MERGE_CHUNK)
        # Take everything up to the smaller of the chunks' last keys, from each side that has more beyond its chunk:
        # at least one whole chunk goes, and no later entry of either run is smaller than what went.
        bounds = [chunk["key"][-1] for chunk, run, k in ((a, older, i), (b, newer, j)) if k + len(chunk) < len(run)]
        a_end = len(a) if not bounds else int(np.searchsorted(a["key"], min(bounds), side="right"))
        b_end = len(b) if not bounds else int(np.searchsorted(b["key"], min(bounds), side="right"))
        yield sort_merge((a["key"][:a_end], a["value"][:a_end]), (b["key"][:b_end], b["value"][:b_end]))
        i, j = i + a_end, j + b_end


class LabelStore:
    """Labels by number (0, 1, 2, ... in the order added). Integer labels (dedup's default: positions) in a numpy
    array, 8 bytes each; any other label pickled to a temporary file, with its offset in memory."""

    def __init__(self, integers: bool) -> None:
        self.integers = integers
        self._values = np.empty(1 << 12, dtype=np.int64)  # integers, or offsets of the pickles (one more than labels)
        self._count = 0
        self._file = None if integers else tempfile.TemporaryFile(prefix="rlaif-labels-")  # noqa: SIM115
        if not integers:
            self._values[0] = 0

    def __len__(self) -> int:
        return self._count

    def append(self, labels: list[Any]) -> None:
        needed = self._count + len(labels) + 1
        if needed > len(self._values):
            self._values = np.resize(self._values, max(needed, 2 * len(self._values)))
        if self.integers:
            self._values[self._count : self._count + len(labels)] = labels
        else:
            assert self._file is not None
            blobs = [pickle.dumps(label) for label in labels]
            os.pwrite(self._file.fileno(), b"".join(blobs), int(self._values[self._count]))  # unbuffered, as pread
            ends = self._values[self._count] + np.cumsum([len(blob) for blob in blobs])
            self._values[self._count + 1 : self._count + 1 + len(labels)] = ends
        self._count += len(labels)

    def get(self, numbers: list[int]) -> list[Any]:
        if self.integers:
            return self._values[numbers].tolist()
        assert self._file is not None
        labels = []
        for number in numbers:
            start, end = int(self._values[number]), int(self._values[number + 1])
            labels.append(pickle.loads(os.pread(self._file.fileno(), end - start, start)))
        return labels

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
