"""Run a validated pipeline: steps in topological order, batches through each, cached and resumable.

Each step runs to completion before the next starts and reads its input back from the upstream shards, so memory
stays bounded by one batch per step whatever the source size, and every batch boundary is a resume point.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.pipeline.fingerprint import step_fingerprint
from rlaif.pipeline.progress import Reporter
from rlaif.pipeline.runtime import EngineRuntime
from rlaif.pipeline.spec import Pipeline, StepSpec
from rlaif.pipeline.store import StepStore
from rlaif.steps.base import BatchResult, Quarantined, Record, Step, StepContext

log = logging.getLogger(__name__)


class AccountingError(RuntimeError):
    """A step lost or invented records: in != out + dropped + quarantined."""


@dataclass
class RunResult:
    run_dir: Path
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    stores: dict[str, StepStore] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)


def run_steps(
    pipeline: Pipeline,
    run_dir: Path,
    *,
    limit: int | None = None,
    runtime: EngineRuntime | None = None,
    reporter: Reporter | None = None,
) -> RunResult:
    """Run (or reuse from cache) every step; ``limit`` caps what each source reads (dry runs)."""
    runtime = runtime or EngineRuntime(pipeline.models, pipeline.seed)
    reporter = reporter or Reporter(enabled=False)
    result = RunResult(run_dir)
    try:
        for name, spec in pipeline.steps.items():
            fingerprint = step_fingerprint(pipeline, spec, [result.fingerprints[u] for u in spec.upstream])
            store = StepStore(run_dir / "steps" / name, fingerprint)
            result.fingerprints[name], result.stores[name] = fingerprint, store
            if store.complete:
                stats = {**store.stats(), "cached": True}
                reporter.cached(name, stats)
            else:
                inputs = [result.stores[u] for u in spec.upstream]
                total = sum(result.stats[u]["records_out"] for u in spec.upstream) if inputs else None
                stats = _run_step(spec, store, inputs, runtime, reporter, total, limit)
            result.stats[name] = stats
    finally:
        runtime.close()
    return result


def _run_step(
    spec: StepSpec,
    store: StepStore,
    inputs: list[StepStore],
    runtime: EngineRuntime,
    reporter: Reporter,
    total: int | None,
    limit: int | None,
) -> dict[str, Any]:
    step = spec.step
    step.setup(runtime.context(spec.name))
    report = step.setup_report()  # measured in setup (a judge check): kept with the step's stats, for the card
    done = store.done_batches()
    if done and step.stateful:
        log.info("step %s keeps state across batches: redoing it from its first batch", spec.name)
        store.reset()
        done = {}
    started = time.perf_counter()
    with reporter.step(spec.name, total) as advance:
        for stats in done.values():
            advance(stats["records_in"])
        batches = _batches(step, runtime.context(spec.name), inputs, spec.batch_size, limit)
        for index, batch in enumerate(batches):
            if index in done:
                continue
            batch_started = time.perf_counter()
            outcome = (
                batch if isinstance(batch, BatchResult) else _process(step, batch, runtime.context(spec.name, index))
            )
            records_in = _count(outcome) if isinstance(batch, BatchResult) else len(batch)
            stats = _batch_stats(records_in, outcome, time.perf_counter() - batch_started)
            _check_accounting(spec.name, f"batch {index}", stats)
            store.write_batch(index, outcome, stats)
            done[index] = stats
            advance(records_in)
    stats = _step_stats(spec, done.values(), time.perf_counter() - started)
    if report:
        stats["setup"] = report
    _check_accounting(spec.name, "step", stats)
    store.finish(stats)
    return stats


def _batches(
    step: Step, ctx: StepContext, inputs: list[StepStore], size: int, limit: int | None
) -> Iterator[list[Record] | BatchResult]:
    if step.is_source:
        yield from _limited(step.read(ctx), limit)
        return
    # A join reads its upstreams one after the other (a union, in `from` order), re-cut to this step's batch size.
    records = itertools.chain.from_iterable(itertools.chain.from_iterable(s.records() for s in inputs))
    while batch := list(itertools.islice(records, size)):
        yield batch


def _limited(batches: Iterator[BatchResult], limit: int | None) -> Iterator[BatchResult]:
    seen = 0
    for batch in batches:
        if limit is not None and len(batch.records) > limit - seen:
            # A dry run cuts the source short: count only what it lets through.
            batch.records = batch.records[: max(0, limit - seen)]
            batch.inputs_emitted = None
        seen += len(batch.records)
        yield batch
        if limit is not None and seen >= limit:
            return


def _process(step: Step, batch: list[Record], ctx: StepContext) -> BatchResult:
    """The step's hook on the whole batch; if it raises, record by record, quarantining the ones that still raise."""
    try:
        return step.process(batch, ctx)
    except Exception as exc:  # noqa: BLE001 - any failure of user or model code must become a quarantine reason
        log.warning("step %s failed on a batch of %d (%s); retrying record by record", step.name, len(batch), exc)
    merged = BatchResult()
    for record in batch:
        try:
            one = step.process([record], ctx)
        except Exception as exc:  # noqa: BLE001
            merged.quarantined.append(Quarantined(record, f"step raised {type(exc).__name__}", str(exc)))
            continue
        merged.inputs_emitted = (merged.inputs_emitted or 0) + one.emitted
        merged.records += one.records
        merged.dropped += one.dropped
        merged.quarantined += one.quarantined
        merged.tokens_in += one.tokens_in
        merged.tokens_out += one.tokens_out
    return merged


def _count(outcome: BatchResult) -> int:
    return outcome.emitted + len(outcome.dropped) + len(outcome.quarantined)


def _batch_stats(records_in: int, outcome: BatchResult, seconds: float) -> dict[str, Any]:
    return {
        "records_in": records_in,
        "records_out": len(outcome.records),
        "inputs_emitted": outcome.emitted,
        "dropped": dict(Counter(reason for _, reason in outcome.dropped)),
        "quarantined": dict(Counter(q.reason for q in outcome.quarantined)),
        "tokens_in": outcome.tokens_in,
        "tokens_out": outcome.tokens_out,
        "wall_s": seconds,
    }


def _step_stats(spec: StepSpec, batches: Any, wall_s: float) -> dict[str, Any]:
    totals: dict[str, Any] = {
        "name": spec.name,
        "type": spec.type,
        "records_in": 0,
        "records_out": 0,
        "inputs_emitted": 0,
        "tokens_in": 0,
        "tokens_out": 0,
    }
    dropped: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    for stats in batches:
        for key in ("records_in", "records_out", "inputs_emitted", "tokens_in", "tokens_out"):
            totals[key] += stats[key]
        dropped.update(stats["dropped"])
        quarantined.update(stats["quarantined"])
    totals.update(dropped=dict(dropped), quarantined=dict(quarantined), wall_s=round(wall_s, 3))
    totals["records_per_s"] = round(totals["records_in"] / wall_s, 1) if wall_s > 0 else None
    return totals


def _check_accounting(step_name: str, scope: str, stats: dict[str, Any]) -> None:
    emitted = stats["inputs_emitted"]
    accounted = emitted + sum(stats["dropped"].values()) + sum(stats["quarantined"].values())
    if accounted != stats["records_in"]:
        out = f"{stats['records_out']} out" + (f" (from {emitted} inputs)" if emitted != stats["records_out"] else "")
        raise AccountingError(
            f"step {step_name!r} ({scope}): {stats['records_in']} records in, but {out} + "
            f"{sum(stats['dropped'].values())} dropped + {sum(stats['quarantined'].values())} quarantined"
        )
