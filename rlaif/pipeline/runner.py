"""Run a validated pipeline: steps in topological order, batches through each, cached and resumable.

Each step runs to completion before the next starts and reads its input back from the upstream shards, so memory
stays bounded by one batch per step whatever the source size, and every batch boundary is a resume point.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import pickle
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from rlaif.backends.base import is_transient_exception, is_transient_reason
from rlaif.backends.server_pool import failure_lines, usage_since
from rlaif.pipeline.budget import BudgetStop, BudgetTracker, add_usage, usage_of
from rlaif.pipeline.fingerprint import step_fingerprint
from rlaif.pipeline.progress import Reporter
from rlaif.pipeline.runtime import EngineRuntime
from rlaif.pipeline.spec import Pipeline, StepSpec
from rlaif.pipeline.store import InputSlices, StepStore, input_slices, quarantine_rows
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
    failed_step: str | None = None  # the step whose every record was quarantined; the steps after it did not run
    stopped: BudgetStop | None = None  # the budget the run reached (rlaif.pipeline.budget); later steps did not run


def run_steps(
    pipeline: Pipeline,
    run_dir: Path,
    *,
    limit: int | None = None,
    runtime: EngineRuntime | None = None,
    reporter: Reporter | None = None,
    retry_all: bool = False,
    executor: Executor | None = None,
) -> RunResult:
    """Run (or reuse from cache) every step; ``limit`` caps what each source reads (dry runs).

    A step is reused when it finished with nothing left to retry and its upstream steps still hold what it was built
    from. Otherwise it runs again, keeping every batch whose input is unchanged and retrying, in those batches, the
    records quarantined for a transient reason (``retry_all``: every quarantined record). The run stops after a step
    whose every input record was quarantined (a failed step; it is never cached as complete). ``executor`` runs the
    batches (default: a ``LocalExecutor``, in this process; whoever made it closes it)."""
    runtime = runtime or EngineRuntime(pipeline.models, pipeline.seed)
    executor = executor or LocalExecutor()
    reporter = reporter or Reporter(enabled=False)
    result = RunResult(run_dir)
    budget = BudgetTracker(getattr(pipeline, "budgets", None))  # the spend counts cached batches too
    try:
        for name, spec in pipeline.steps.items():
            fingerprint = step_fingerprint(pipeline, spec, [result.fingerprints[u] for u in spec.upstream])
            store = StepStore(run_dir / "steps" / name, fingerprint)
            result.fingerprints[name], result.stores[name] = fingerprint, store
            upstream = {u: result.stats[u]["content"] for u in spec.upstream}
            if store.complete(upstream) and not (retry_all and sum(store.stats()["quarantined"].values())):
                stats = {**store.stats(), "cached": True}
                if "content" not in stats:  # stats.json from before content tokens
                    stats["content"] = store.content()
                stats = budget.priced(stats)
                reporter.cached(name, stats)
            else:
                inputs = [result.stores[u] for u in spec.upstream]
                total = sum(result.stats[u]["records_out"] for u in spec.upstream) if inputs else None
                run = _StepRun(spec, store, runtime, reporter, retry_all, budget, executor=executor)
                stats = run.run(inputs, total, limit, upstream)
            result.stats[name] = stats
            budget.settle(stats)
            if stats.get("failed"):
                result.failed_step = name
                break
            if stats.get("budget_stop"):  # the step kept its finished batches; raising the budget continues it
                result.stopped = BudgetStop.from_dict(stats["budget_stop"])
                break
    finally:
        runtime.close()
    return result


@dataclass
class _StepRun:
    """One step's pass: new batches processed, unchanged ones kept, quarantined records of kept ones retried."""

    spec: StepSpec
    store: StepStore
    runtime: EngineRuntime
    reporter: Reporter
    retry_all: bool
    budget: BudgetTracker = field(default_factory=BudgetTracker)
    stop: BudgetStop | None = None  # a budget this step reached: no batch starts after it
    executor: Executor = field(default_factory=lambda: LocalExecutor())  # where batches run (run_job)
    total: int | None = None  # records the step reads in all (its upstreams' output), set by run; None for a source

    def context(self, index: int = 0) -> StepContext:
        """The context of this step's hooks for batch ``index``."""
        return self.runtime.context(self.spec.name, index, self.total)

    def run(self, inputs: list[StepStore], total: int | None, limit: int | None, upstream: dict[str, str]) -> dict:
        spec, store, step = self.spec, self.store, self.spec.step
        self.total = total
        done = store.done_batches()
        previous = store.previous_stats() or {}
        if done and (step.stateful or previous.get("failed")):
            # A stateful step's batches depend on the ones before; a step that failed entirely kept nothing worth
            # keeping (and may fail for a reason since fixed, e.g. a plugin's code): both start over.
            log.info("step %s: redoing it from its first batch", spec.name)
            store.reset()
            done = {}
        servers = self.runtime.server_stats(step.model_names())  # each server's counters before this step
        self.budget.begin_step(done)  # batches kept from earlier passes count toward the budgets
        # A step whose model has spent its budget starts nothing, not even its setup (a judge check calls the model).
        self.stop, report, setup_usage = self.budget.check(step.model_names()), {}, {}
        if self.stop is None:
            before = self.runtime.meter.snapshot()
            if self.executor.start(self):  # the batches run in this process: set the step up here
                step.setup(self.context())
            report = self.executor.setup_report(self)  # measured in setup (a judge check): for the stats and card
            setup_usage = self.runtime.meter.since(before)
            self.budget.add_setup(setup_usage)
        retry = not (step.stateful or step.is_source)
        started = time.perf_counter()
        seen, retried = set(), 0
        with self.reporter.step(spec.name, total) as advance:
            # An executor whose workers read their own input (Ray tasks) gets each batch as shard slices, or, from a
            # source that prepares, as raw chunks the workers parse.
            remote = getattr(self.executor, "reads_inputs", False)
            ctx = self.context()
            batches: Iterable[list[Record] | BatchResult | InputSlices | SourceChunk]
            if remote and not step.is_source:
                batches = input_slices(inputs, spec.batch_size)
            elif remote and step.prepares and limit is None:
                batches = (SourceChunk(chunk) for chunk in step.read_chunks(ctx))
            else:
                batches = _batches(step, ctx, inputs, spec.batch_size, limit)
            for index, batch in enumerate(batches if self.stop is None else ()):
                seen.add(index)
                if index in done and isinstance(batch, InputSlices):
                    batch = batch.read()  # a kept batch: is its input unchanged?
                # Hashed here only for a kept batch (is its input unchanged?); a new one where it runs (run_job).
                digest = None if not isinstance(batch, list) or index not in done else _digest(batch)
                if index in done and done[index].get("input_digest", digest) == digest:
                    if retry and _retryable(done[index], self.retry_all):
                        self.stop = self.budget.check(step.model_names())
                        if self.stop:
                            break  # a retry calls the model too: none starts past a budget
                        job = BatchJob(index, stats=done[index])
                        retried += self._finished(self.executor.submit(job), done, advance)
                    if self.stop:
                        break
                    advance(done[index]["records_in"])
                    continue
                self.stop = self.budget.check(step.model_names())
                if self.stop:
                    break  # between batches: the batch that reached the limit finished, no other starts
                retried += self._finished(self.executor.submit(BatchJob(index, batch, digest)), done, advance)
            retried += self._finished(self.executor.drain(), done, advance)
        step.teardown()  # every batch is done: a stateful step's index (dedup's) need not outlive them
        for stale in set(done) - seen if self.stop is None else ():  # the upstream now yields fewer batches
            store.forget(stale)
            del done[stale]
        if retried:
            self.reporter.note(f"{spec.name}: retried {retried} quarantined records")
        stats = _step_stats(spec, done.values(), time.perf_counter() - started)
        if models := add_usage(usage_of(done.values()), setup_usage):
            stats["models"] = models  # per model name, the setup's judge check included
        stats = self.budget.priced(stats)
        if used := usage_since(servers, self.runtime.server_stats(step.model_names())):
            stats["servers"] = used  # per server of an openai pool: requests, failures, tokens, seconds, taken out
            for line in failure_lines(spec.name, used):
                self.reporter.note(line)
        if report:
            stats["setup"] = report
        _check_accounting(spec.name, "step", stats)
        stats["failed"] = stats["records_in"] > 0 and sum(stats["quarantined"].values()) == stats["records_in"]
        if self.stop:
            stats["budget_stop"] = self.stop.as_dict()
            self.reporter.note(f"{spec.name}: stopped, {self.stop.message()}; kept {len(done)} finished batches")
        complete = not (stats["failed"] or stats["transient"] or self.stop)
        return store.finish(stats, upstream, complete=complete)

    def _finished(self, results: Iterable[BatchDone], done: dict[int, Any], advance: Callable[[int], None]) -> int:
        """Take in the batches an executor finished (in any order); returns how many records were retried. A retried
        batch was counted in the progress when it was found in the cache."""
        retried = 0
        for out in results:
            done[out.index] = out.stats
            self.budget.set_batch(out.index, out.stats)
            retried += out.retried
            if out.first:
                advance(out.stats["records_in"])
        return retried

    def _first_pass(
        self, index: int, batch: list[Record] | BatchResult, digest: str | None, decided: Any = None
    ) -> dict[str, Any]:
        step, ctx = self.spec.step, self.context(index)
        batch_started = time.perf_counter()
        before = self.runtime.meter.snapshot()
        if isinstance(batch, BatchResult):
            outcome = batch
        elif decided is not None:  # the step's state decided elsewhere (an executor's driver): only the records' part
            outcome = step.finish(batch, decided)
        else:
            outcome = _process(step, batch, ctx)
        _classify(outcome, step.is_source)
        records_in = _count(outcome) if isinstance(batch, BatchResult) else len(batch)
        stats = _batch_stats(records_in, outcome, time.perf_counter() - batch_started)
        if models := self.runtime.meter.since(before):
            stats["models"] = models  # tokens per model name: what budgets count, cached with the batch
        if digest is not None:
            stats["input_digest"] = digest
        _check_accounting(self.spec.name, f"batch {index}", stats)
        self.store.write_batch(index, outcome, stats)
        return stats

    def _retry(self, index: int, done: dict[int, dict[str, Any]]) -> int:
        """Retry batch ``index``'s transient quarantined records (all of them with ``retry_all``); merge the result
        into the batch. Returns how many records were retried."""
        stats = done[index]
        if not (stats.get("transient") or (self.retry_all and sum(stats["quarantined"].values()))):
            return 0
        rows = self.store.batch_quarantine(index, stats)
        chosen = [row for row in rows if self.retry_all or row.get("transient")]
        if not chosen:
            return 0
        kept = [row for row in rows if not (self.retry_all or row.get("transient"))]
        started = time.perf_counter()
        records = [json.loads(row["record"]) for row in chosen]
        before = self.runtime.meter.snapshot()
        outcome = _process(self.spec.step, records, self.context(index))
        _classify(outcome, False)
        again = _batch_stats(len(records), outcome, time.perf_counter() - started)
        again["models"] = self.runtime.meter.since(before)
        _check_accounting(self.spec.name, f"batch {index} retry", again)
        merged = _merge_retry(stats, chosen, kept, again)
        _check_accounting(self.spec.name, f"batch {index}", merged)
        self.store.write_retry(index, outcome, kept + quarantine_rows(outcome), merged)
        done[index] = merged
        self.budget.set_batch(index, merged)
        return len(chosen)


@dataclass(frozen=True)
class SourceChunk:
    """A source's batch before its ``prepare`` (raw JSONL lines): parsed where the batch runs."""

    raw: Any


@dataclass
class BatchJob:
    """One unit of a step's work: batch ``index``'s first pass (``batch``: its input records, or a source's
    ``BatchResult``; ``digest``: of that input, taken where the job runs when None) or, given the batch's ``stats``,
    a retry of its quarantined records."""

    index: int
    batch: list[Record] | BatchResult | InputSlices | SourceChunk | None = None
    digest: str | None = None
    stats: dict[str, Any] | None = None
    decided: Any = None  # what the step's ``decide`` made of the batch elsewhere (Ray's driver): ``finish`` it


@dataclass
class BatchDone:
    """A finished job: the batch's stats as its completion marker now holds them, how many records were retried,
    whether it was a first pass, and what the step's setup measured where it ran (remote executors report it)."""

    index: int
    stats: dict[str, Any]
    retried: int = 0
    first: bool = True
    setup: dict[str, Any] = field(default_factory=dict)


def run_job(run: _StepRun, job: BatchJob) -> BatchDone:
    """The per-batch work, the same for every executor wherever it runs (this process, a Ray task, an engine actor):
    the step's hook, quarantine, accounting, then the batch's shards and its completion marker written to the step's
    store. ``run`` is the step's pass with a runtime of the process that runs the job, its step set up there."""
    if job.stats is not None:
        done = {job.index: job.stats}
        retried = run._retry(job.index, done)
        return BatchDone(job.index, done[job.index], retried, first=False)
    assert job.batch is not None
    batch = job.batch
    if isinstance(batch, InputSlices):
        batch = batch.read()
    elif isinstance(batch, SourceChunk):
        batch = run.spec.step.prepare(batch.raw)
    digest = job.digest
    # A stateful step redoes every batch on a re-run (its state spans them): no digest is ever compared.
    if digest is None and not isinstance(batch, BatchResult) and not run.spec.step.stateful:
        digest = _digest(batch)
    return BatchDone(job.index, run._first_pass(job.index, batch, digest, job.decided))


class Executor(Protocol):
    """Runs a step's batches through ``run_job``. ``start`` is called once per step pass, before its jobs, and says
    whether they run in this process (the runner then sets the step up here); ``submit`` takes a job and returns the
    jobs finished meanwhile, ``drain`` the rest; ``setup_report`` is what the step's setup measured."""

    def start(self, run: _StepRun) -> bool: ...

    def submit(self, job: BatchJob) -> Iterable[BatchDone]: ...

    def drain(self) -> Iterable[BatchDone]: ...

    def setup_report(self, run: _StepRun) -> dict[str, Any]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """The default executor: every batch in this process, in order, as it is submitted."""

    def __init__(self) -> None:
        self._run: _StepRun | None = None

    @property
    def run(self) -> _StepRun:
        assert self._run is not None, "start() first"
        return self._run

    def start(self, run: _StepRun) -> bool:
        self._run = run
        return True

    def submit(self, job: BatchJob) -> Iterable[BatchDone]:
        return [run_job(self.run, job)]

    def drain(self) -> Iterable[BatchDone]:
        return []

    def setup_report(self, run: _StepRun) -> dict[str, Any]:
        return run.spec.step.setup_report()

    def close(self) -> None:
        pass


def _retryable(stats: dict[str, Any], retry_all: bool) -> bool:
    """Whether a kept batch has quarantined records to retry (transient ones; any with ``retry_all``)."""
    return bool(stats.get("transient") or (retry_all and sum(stats["quarantined"].values())))


def _merge_retry(
    stats: dict[str, Any], chosen: list[dict[str, Any]], kept: list[dict[str, Any]], again: dict[str, Any]
) -> dict[str, Any]:
    """A batch's stats after a retry: the retried records leave the quarantine counts, what became of them joins."""
    quarantined = Counter(stats["quarantined"])
    quarantined.subtract(Counter(row["reason"] for row in chosen))
    quarantined.update(again["quarantined"])
    merged = dict(stats)
    for key in ("records_out", "inputs_emitted", "tokens_in", "tokens_out", "wall_s"):
        merged[key] = stats[key] + again[key]
    merged.update(
        dropped=dict(Counter(stats["dropped"]) + Counter(again["dropped"])),
        quarantined={reason: n for reason, n in quarantined.items() if n > 0},
        transient=sum(1 for row in kept if row.get("transient")) + again["transient"],
        retries=stats.get("retries", 0) + 1,
        retried=stats.get("retried", 0) + len(chosen),
    )
    if models := add_usage(usage_of([stats]), again.get("models")):
        merged["models"] = models
    return merged


def _digest(batch: list[Record]) -> str:
    """What a batch's input was: a kept batch is reused only while its upstream still gives it the same records.
    Pickle is 3x faster than JSON here (records read back from Parquet are plain values); a digest that differs for
    equal records would only redo a batch, never reuse a wrong one."""
    try:
        data = pickle.dumps(batch, protocol=5)
    except Exception:  # noqa: BLE001 - an unpicklable value from a user step: the slower, total route
        data = json.dumps(batch, sort_keys=True, default=str).encode()
    return hashlib.blake2b(data, digest_size=10).hexdigest()


def _classify(outcome: BatchResult, is_source: bool) -> None:
    """Settle each quarantined record's ``transient``: the step's own word, else a backend's mark in the detail.
    A source's input is never retried: whatever it could not read, it cannot read again."""
    for i, q in enumerate(outcome.quarantined):
        transient = is_transient_reason(q.detail) if q.transient is None else q.transient
        outcome.quarantined[i] = replace(q, transient=transient and not is_source)


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
            reason = f"step raised {type(exc).__name__}"
            merged.quarantined.append(Quarantined(record, reason, str(exc), transient=is_transient_exception(exc)))
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
        "transient": sum(1 for q in outcome.quarantined if q.transient),
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
        "transient": 0,
        "retried": 0,
    }
    dropped: Counter[str] = Counter()
    quarantined: Counter[str] = Counter()
    for stats in batches:
        for key in ("records_in", "records_out", "inputs_emitted", "tokens_in", "tokens_out", "transient", "retried"):
            totals[key] += stats.get(key, 0)
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
