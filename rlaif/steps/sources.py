"""Sources: local files (jsonl, json, parquet, csv), Hub datasets, and inline records.

Local files stream in batches, so a million-record source is never one Python list (json is the exception: a
JSON array has to be parsed whole). A malformed line is quarantined with its file and line, never dropped.
"""

from __future__ import annotations

import csv
import glob
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from rlaif.steps.base import BatchResult, Quarantined, Record, Step, StepContext, StepParams

FORMATS = ("jsonl", "json", "parquet", "csv")
BATCH = 1000  # records (or lines) per source batch
SUFFIX_FORMAT = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class LoadParams(StepParams):
    path: str | None = Field(None, description="local file or glob (jsonl, json, parquet, csv)")
    dataset: str | None = Field(None, description="Hub dataset id, read with datasets in streaming mode")
    split: str = "train"
    config: str | None = None
    format: str | None = Field(None, description="override the format guessed from the file suffix")
    columns: dict[str, str] = Field(default_factory=dict, description="rename: source column -> our column")
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_origin(self) -> LoadParams:
        if (self.path is None) == (self.dataset is None):
            raise ValueError("give exactly one of path (a local file) or dataset (a Hub id)")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}")
        return self


class Load(Step):
    """Read records from local files or a Hub dataset. Outputs: the file's columns, renamed by ``columns``."""

    Params = LoadParams
    is_source = True
    # JSONL is read as raw lines here and parsed by ``prepare``: an executor may parse batches in other processes.
    prepares = True
    params: LoadParams

    def files(self) -> list[Path]:
        if self.params.path is None:
            return []
        matches = sorted(glob.glob(str(self.resolve(self.params.path))))
        return [Path(m) for m in matches] or [self.resolve(self.params.path)]

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        if self.params.dataset is not None or not all(f.is_file() for f in self.files()):
            return None  # known only once the Hub answers; a missing file is reported on its own
        first = next(iter(self._records(self.files()[:1], limit=1)), None)
        if first is None or isinstance(first, Quarantined):
            return set(self.params.columns.values()) or None
        return set(self._rename(first))

    def read(self, ctx: StepContext) -> Iterator[BatchResult]:
        return (self.prepare(chunk) for chunk in self.read_chunks(ctx))

    def read_chunks(self, ctx: StepContext) -> Iterator[list[tuple[str, int, str]] | BatchResult]:
        """The batches before parsing: local JSONL without ``limit`` as lists of (file name, line number, line),
        1000 non-blank lines each, across files; any other input as parsed batches of 1000."""
        files = [] if self.params.dataset is not None else self.files()
        if files and self.params.limit is None and all(self._format(path) == "jsonl" for path in files):
            lines = _jsonl_lines(files)
            while chunk := list(itertools.islice(lines, BATCH)):
                yield chunk
            return
        stream: Iterator[Record | Quarantined]
        stream = self._hub_records() if self.params.dataset is not None else self._records(files, self.params.limit)
        while batch := list(itertools.islice(stream, BATCH)):
            yield self._batch(batch)

    def prepare(self, chunk: list[tuple[str, int, str]] | BatchResult) -> BatchResult:
        """A chunk of ``read_chunks`` as a batch: JSONL lines parsed (bad ones quarantined with file:line)."""
        if isinstance(chunk, BatchResult):
            return chunk
        return self._batch([_parse_jsonl(name, number, line) for name, number, line in chunk])

    def _batch(self, items: list[Record | Quarantined]) -> BatchResult:
        result = BatchResult()
        for item in items:
            if isinstance(item, Quarantined):
                result.quarantined.append(item)
            else:
                result.records.append(self._rename(item))
        return result

    def _rename(self, record: Record) -> Record:
        return {self.params.columns.get(k, k): v for k, v in record.items()}

    def _records(self, paths: list[Path], limit: int | None) -> Iterator[Record | Quarantined]:
        stream = itertools.chain.from_iterable(self._read_file(p) for p in paths)
        return itertools.islice(stream, limit)

    def _format(self, path: Path) -> str | None:
        return self.params.format or SUFFIX_FORMAT.get(path.suffix.lower())

    def _read_file(self, path: Path) -> Iterator[Record | Quarantined]:
        fmt = self._format(path)
        if fmt == "jsonl":
            yield from (_parse_jsonl(*line) for line in _jsonl_lines([path]))
        elif fmt == "json":
            yield from _read_json(path)
        elif fmt == "parquet":
            yield from _read_parquet(path)
        elif fmt == "csv":
            with path.open(newline="") as handle:
                yield from csv.DictReader(handle)
        else:
            raise ValueError(f"{path}: unknown format; expected a suffix in {sorted(SUFFIX_FORMAT)} or `format:`")

    def _hub_records(self) -> Iterator[Record]:
        from datasets import load_dataset

        data = load_dataset(self.params.dataset, self.params.config, split=self.params.split, streaming=True)
        return itertools.islice(iter(data), self.params.limit)


def _jsonl_lines(paths: list[Path]) -> Iterator[tuple[str, int, str]]:
    """(file name, line number, line) of every non-blank line of the files, in order."""
    for path in paths:
        name = path.name
        with path.open() as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield name, number, line


def _parse_jsonl(name: str, number: int, line: str) -> Record | Quarantined:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        where = f"{name}:{number}"
        return Quarantined({"_source": where}, "invalid JSON", f"{where}: {exc}", raw_output=line[:2000])
    if not isinstance(value, dict):
        where = f"{name}:{number}"
        detail = f"{where}: expected a JSON object, got {type(value).__name__}"
        return Quarantined({"_source": where}, "not a JSON object", detail, raw_output=line[:2000])
    return value


def _read_json(path: Path) -> Iterator[Record]:
    data: Any = json.loads(path.read_text())
    rows = data.get("data", data.get("rows")) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON array of objects, or an object with a 'data' array")
    yield from rows


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
        yield from batch.to_pylist()


class InlineParams(StepParams):
    records: list[dict[str, Any]] = Field(min_length=1)


class Inline(Step):
    """Records written in the pipeline file itself. Outputs: the union of their keys."""

    Params = InlineParams
    is_source = True
    params: InlineParams

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        return set().union(*(r.keys() for r in self.params.records))

    def read(self, ctx: StepContext) -> Iterator[BatchResult]:
        records = self.params.records
        for start in range(0, len(records), 1000):
            yield BatchResult(records=[dict(r) for r in records[start : start + 1000]])
