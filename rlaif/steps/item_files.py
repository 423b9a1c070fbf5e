"""Items of a data file a step reads whole, beside its records (benchmark items, a human-labelled sample): one reader
per suffix. A malformed JSON line is an error naming the file and line; a line holding a JSON value that is not an
object becomes ``{"text": value}``; a ``.txt`` file is one item per non-empty line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _jsonl_items(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: invalid JSON ({exc})") from None
            yield item if isinstance(item, dict) else {"text": item}


def _parquet_items(path: Path) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
        yield from batch.to_pylist()


def _txt_items(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as handle:
        yield from ({"text": line} for line in handle if line.strip())


ITEM_READERS: dict[str, Callable[[Path], Iterator[dict[str, Any]]]] = {
    ".jsonl": _jsonl_items,
    ".parquet": _parquet_items,
    ".txt": _txt_items,
}


def read_items(path: Path) -> list[dict[str, Any]]:
    """Every item of ``path``, by its suffix (JSON lines for a suffix without its own reader)."""
    return list(ITEM_READERS.get(path.suffix.lower(), _jsonl_items)(path))
