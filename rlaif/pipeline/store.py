"""A step's directory in the run: one Parquet shard per batch, a completion marker per batch written last.

    steps/<step>/fingerprint           the cache key the contents belong to (another key: the directory is reset)
    steps/<step>/batch-000007.parquet  the batch's output records
    steps/<step>/batch-000007.quarantine.parquet   records that failed, with reason and raw output
    steps/<step>/batch-000007.dropped.parquet      records a filter dropped, with the reason (and its annotations)
    steps/<step>/batch-000007.done     the batch's stats (JSON) — written last, so it proves the files above
    steps/<step>/stats.json, COMPLETE  the step's totals, once every batch is done

A process killed at any moment leaves at worst a batch without its marker; a re-run redoes exactly that batch.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rlaif.pipeline.arrow import records_to_table
from rlaif.steps.base import BatchResult, Record

MARKER = "COMPLETE"


class StepStore:
    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root = root
        self.fingerprint = fingerprint
        key_file = root / "fingerprint"
        if root.exists() and (not key_file.is_file() or key_file.read_text() != fingerprint):
            shutil.rmtree(root)  # another configuration produced these files: none of them may be reused
        root.mkdir(parents=True, exist_ok=True)
        if not key_file.is_file():
            _write_atomic(key_file, fingerprint)
        for leftover in root.glob("*.tmp"):
            leftover.unlink()  # a write interrupted by a kill; its batch has no marker and will be redone

    @property
    def complete(self) -> bool:
        return (self.root / MARKER).is_file()

    def stats(self) -> dict[str, Any]:
        return json.loads((self.root / "stats.json").read_text())

    def done_batches(self) -> dict[int, dict[str, Any]]:
        done = {}
        for marker in self.root.glob("batch-*.done"):
            done[int(marker.stem.split("-")[1])] = json.loads(marker.read_text())
        return done

    def write_batch(self, index: int, result: BatchResult, stats: dict[str, Any]) -> None:
        stem = f"batch-{index:06d}"
        if result.records:
            _write_parquet(self.root / f"{stem}.parquet", result.records)
        if result.quarantined:
            rows = [
                {
                    "reason": q.reason,
                    "detail": q.detail,
                    "raw_output": q.raw_output,
                    "record": json.dumps(q.record, default=str),
                }
                for q in result.quarantined
            ]
            _write_parquet(self.root / f"{stem}.quarantine.parquet", rows)
        if result.dropped:
            rows = [{"reason": reason, "record": json.dumps(record, default=str)} for record, reason in result.dropped]
            _write_parquet(self.root / f"{stem}.dropped.parquet", rows)
        _write_atomic(self.root / f"{stem}.done", json.dumps(stats))

    def reset(self) -> None:
        """Forget every batch (kept: the fingerprint), for a stateful step that must start over."""
        for path in self.root.glob("batch-*"):
            path.unlink()

    def finish(self, stats: dict[str, Any]) -> None:
        _write_atomic(self.root / "stats.json", json.dumps(stats, indent=2))
        _write_atomic(self.root / MARKER, "")

    def records(self) -> Iterator[list[Record]]:
        """Output records batch by batch, in batch order (only batches with a marker count)."""
        for index in sorted(self.done_batches()):
            shard = self.root / f"batch-{index:06d}.parquet"
            if shard.is_file():
                for batch in pq.ParquetFile(shard).iter_batches(batch_size=1000):
                    yield batch.to_pylist()

    def tables(self) -> Iterator[pa.Table]:
        """The same output as Arrow tables, one per batch: saving needs no round trip through Python dicts."""
        for index in sorted(self.done_batches()):
            shard = self.root / f"batch-{index:06d}.parquet"
            if shard.is_file():
                yield pq.read_table(shard)

    def quarantined(self) -> Iterator[dict[str, Any]]:
        for shard in sorted(self.root.glob("batch-*.quarantine.parquet")):
            yield from pq.read_table(shard).to_pylist()


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    table = records_to_table(rows, str(path.relative_to(path.parent.parent)))
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
