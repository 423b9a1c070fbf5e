"""Read-only access to what a pipeline run leaves on disk (layout: rlaif.pipeline.store and rlaif.pipeline.run).

    RUN/pipeline.yaml            the pipeline as run (step names, types, ``from``)
    RUN/stats.json               every step's totals
    RUN/steps/<step>/batch-N[.rNN].parquet, .dropped.parquet, .done   the step's batches
    RUN/quarantine/<step>.jsonl  the step's quarantined records

Never writes, never resets a directory (``StepStore`` would reset a step whose fingerprint differs): a report of a
run must not change it. Only batches with a ``.done`` marker count, as for the run itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

MAX_ROWS = 50_000  # rows read per step for a distribution: enough for a histogram, bounded for a 1M-row run
_DONE = re.compile(r"^batch-(\d{6})\.done$")


class RunFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.stats: dict[str, dict[str, Any]] = json.loads((root / "stats.json").read_text())
        self.spec = _read_spec(root / "pipeline.yaml")

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.root.name)

    def edges(self) -> dict[str, list[str]]:
        """step -> upstream steps, in pipeline order (stats.json's order when pipeline.yaml is missing)."""
        declared = {}
        for step in self.spec.get("steps") or []:
            if isinstance(step, dict) and isinstance(step.get("name"), str):
                upstream = step.get("from") or []
                declared[step["name"]] = [upstream] if isinstance(upstream, str) else [str(u) for u in upstream]
        return {name: declared.get(name, []) for name in [*self.stats, *(n for n in declared if n not in self.stats)]}

    def step_params(self, name: str) -> dict[str, Any]:
        return next((s for s in self.spec.get("steps") or [] if isinstance(s, dict) and s.get("name") == name), {})

    def shards(self, step: str, suffix: str = ".parquet") -> Iterator[Path]:
        """The step's counted shards of one kind (outputs, ``.dropped.parquet``), first passes then retries."""
        folder = self.root / "steps" / step
        done = {}
        for marker in sorted(folder.glob("batch-*.done")) if folder.is_dir() else []:
            if match := _DONE.match(marker.name):
                try:
                    done[match.group(1)] = json.loads(marker.read_text()).get("retries", 0)
                except (ValueError, AttributeError):
                    continue
        for attempt in range(max(done.values(), default=0) + 1):
            tag = f".r{attempt:02d}" if attempt else ""
            for index, retries in done.items():
                shard = folder / f"batch-{index}{tag}{suffix}"
                if attempt <= retries and shard.is_file():
                    yield shard

    def columns(self, step: str) -> list[str]:
        shard = next(self.shards(step), None)
        return list(pq.read_schema(shard).names) if shard else []

    def column_values(self, step: str, columns: list[str], limit: int = MAX_ROWS) -> dict[str, list[Any]]:
        """The named columns (those the step has) of its first ``limit`` output rows."""
        out: dict[str, list[Any]] = {}
        present = [c for c in columns if c in self.columns(step)]
        if not present:
            return out
        rows = 0
        for shard in self.shards(step):
            table = pq.read_table(shard, columns=present).slice(0, limit - rows)
            for name in present:
                out.setdefault(name, []).extend(table.column(name).to_pylist())
            rows += table.num_rows
            if rows >= limit:
                break
        return out

    def first_rows(self, step: str, count: int = 3, suffix: str = ".parquet") -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for shard in self.shards(step, suffix):
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=count):
                rows += batch.to_pylist()
                break
            if len(rows) >= count:
                break
        return rows[:count]

    def dropped_examples(self, step: str, count: int = 3) -> list[dict[str, Any]]:
        return [
            {"reason": row.get("reason"), "record": _json_or_text(row.get("record"))}
            for row in self.first_rows(step, count, ".dropped.parquet")
        ]

    def quarantine_examples(self, step: str, count: int = 3) -> list[dict[str, Any]]:
        path = self.root / "quarantine" / f"{step}.jsonl"
        rows = []
        if path.is_file():
            with path.open() as handle:
                for line in handle:
                    if len(rows) >= count:
                        break
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict):
                        rows.append({**row, "record": _json_or_text(row.get("record"))})
        return rows


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _json_or_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
