"""The dataset writer streams a split back from its spool one row group at a time (so saving a million rows holds one
row group, not the whole split): rows keep their order, shards and row groups keep their sizes, and shards written
side by side (one thread each) are the ones a single writer makes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaif.pipeline import dataset_writer
from rlaif.pipeline.dataset_card import DatasetCardInfo
from rlaif.pipeline.dataset_writer import _Spool, write_dataset


def test_rows_shards_and_row_groups_survive_the_streamed_read_back(tmp_path: Path) -> None:
    batches = [
        [{"id": i, "text": f"row {i}"} for i in range(start, min(start + 3000, 25_000))]
        for start in range(0, 25_000, 3000)
    ]
    info = DatasetCardInfo(pipeline_name="t", pipeline_yaml="")
    counts = write_dataset({"train": iter(batches)}, tmp_path / "out", info, max_rows_per_shard=20_000)
    assert counts == {"train": 25_000}
    shards = sorted((tmp_path / "out" / "data").glob("train-*.parquet"))
    assert [pq.ParquetFile(s).metadata.num_rows for s in shards] == [20_000, 5_000]
    groups = [
        pq.ParquetFile(s).metadata.row_group(g).num_rows
        for s in shards
        for g in range(pq.ParquetFile(s).num_row_groups)
    ]
    assert groups == [10_000, 10_000, 5_000]
    ids = [row["id"] for s in shards for row in pq.read_table(s).to_pylist()]
    assert ids == list(range(25_000))


def spooled(tmp_path: Path) -> _Spool:
    """20 rows in batches of 1-4; column ``note`` is null in rows 0-6 and text after: two spool files."""
    sizes, rows, start = [3, 4, 1, 2, 4, 3, 3], [], 0
    for size in sizes:
        rows.append([{"id": i, "note": None if i < 7 else f"n{i}"} for i in range(start, start + size)])
        start += size
    spool = _Spool(tmp_path / "spool")
    with spool:
        spool.consume(iter(rows), "train")
    return spool


def test_the_spool_reads_any_row_range_without_mixing_files(tmp_path: Path) -> None:
    spool = spooled(tmp_path)
    assert spool.rows == 20 and len(spool.files) == 2
    for start, stop in [(0, 20), (0, 1), (2, 9), (6, 7), (7, 8), (5, 19), (19, 20), (10, 10), (3, 14)]:
        tables = list(spool.tables(start, stop))
        assert [r["id"] for t in tables for r in t.to_pylist()] == list(range(start, stop)), (start, stop)
        # A table never spans the two files: each has one schema (note null, then note text).
        assert all({r["note"] is None for r in t.to_pylist()} in ({True}, {False}) for t in tables)


def test_shards_written_side_by_side_equal_one_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def write(threads: int) -> Path:
        monkeypatch.setattr(dataset_writer, "_WRITER_THREADS", threads)
        batches = [[{"id": i, "text": f"row {i}"} for i in range(start, start + 700)] for start in range(0, 7000, 700)]
        write_dataset({"train": iter(batches)}, tmp_path / str(threads), info, max_rows_per_shard=1500, jsonl=True)
        return tmp_path / str(threads)

    info = DatasetCardInfo(pipeline_name="t", pipeline_yaml="")
    one, four = write(1), write(4)
    shards = sorted(p.name for p in (one / "data").iterdir())
    assert shards == sorted(p.name for p in (four / "data").iterdir()) and len(shards) == 5
    for name in shards:
        assert pq.read_table(one / "data" / name).equals(pq.read_table(four / "data" / name))
    ids = [row["id"] for name in shards for row in pq.read_table(four / "data" / name).to_pylist()]
    assert ids == list(range(7000))
    assert (four / "train.jsonl").read_text() == (one / "train.jsonl").read_text()
    assert [json.loads(line)["id"] for line in (four / "train.jsonl").read_text().splitlines()] == list(range(7000))


def test_a_shard_that_fails_in_its_thread_fails_the_save_and_keeps_the_old_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = DatasetCardInfo(pipeline_name="t", pipeline_yaml="")
    out = tmp_path / "dataset"
    write_dataset({"train": iter([[{"id": 0, "text": "old"}]])}, out, info)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    conform = dataset_writer._conform

    def failing_conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
        if 1234 in table.column("id").to_pylist():  # a row of the second shard
            raise OSError("disk full")
        return conform(table, schema)

    monkeypatch.setattr(dataset_writer, "_conform", failing_conform)
    batches = [[{"id": i, "text": f"row {i}"} for i in range(start, start + 500)] for start in range(0, 3000, 500)]
    with pytest.raises(OSError, match="disk full"):
        write_dataset({"train": iter(batches)}, out, info, max_rows_per_shard=1000)
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]  # no .partial folder left
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
