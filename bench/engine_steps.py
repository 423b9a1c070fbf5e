"""Plugin steps for the engine benchmark (bench/engine.py), loaded by dotted path (``type: engine_steps.Numbers``)."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from rlaif.steps.base import BatchResult, Record, Step, StepContext, StepParams


def make_record(i: int) -> Record:
    """The benchmark's record; distilabel's side builds the same ones."""
    return {"id": i, "text": f"record {i} of the engine benchmark: a short line of text"}


class NumbersParams(StepParams):
    count: int = Field(ge=1)
    batch_size: int = Field(1000, ge=1)


class Numbers(Step):
    """Source of ``count`` synthetic records, in batches. Outputs: ``id``, ``text``."""

    Params = NumbersParams
    is_source = True
    outputs = ("id", "text")
    params: NumbersParams

    def read(self, ctx: StepContext) -> Iterator[BatchResult]:
        count, size = self.params.count, self.params.batch_size
        for start in range(0, count, size):
            yield BatchResult(records=[make_record(i) for i in range(start, min(start + size, count))])


class TextLength(Step):
    """Map. Inputs: ``text``. Outputs: ``length`` (characters)."""

    inputs = ("text",)
    outputs = ("length",)

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        return BatchResult(records=[{**r, "length": len(r["text"])} for r in records])


class DropTenth(Step):
    """Filter. Inputs: ``id``. Drops every record with ``id % 10 == 0`` with the reason "id divisible by 10"."""

    inputs = ("id",)

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        for r in records:
            if r["id"] % 10 == 0:
                result.dropped.append((r, "id divisible by 10"))
            else:
                result.records.append(r)
        return result
