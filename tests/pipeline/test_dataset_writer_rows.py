"""The dataset writer streams a split back from its spool one row group at a time (so saving a million rows holds one
row group, not the whole split): rows keep their order, shards and row groups keep their sizes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from rlaif.pipeline.dataset_card import DatasetCardInfo
from rlaif.pipeline.dataset_writer import write_dataset


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
