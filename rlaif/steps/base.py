"""The Step contract. A step declares its input and output columns, its loop phase, and implements one hook; the
engine owns the batch loop, caching, accounting and quarantine.

- Sources implement ``read(ctx)`` and yield ``BatchResult``s (records, plus any input they had to quarantine).
- Transforms implement ``process(records, ctx) -> BatchResult``: every record that enters leaves as an output, is
  dropped with a reason, or is quarantined with a reason (and the raw model output when there is one).
- Per-record filters write ``verdict(record)`` (None keeps the record, a string drops it with that reason, raising
  ``Quarantine`` quarantines it) and return ``filter_records(records, self.verdict)`` from ``process``.

``ctx`` is a ``StepContext``: what the engine injects at run time (engine access, the step's name, the batch index
and its seed), passed explicitly, never stored on the step. ``setup(ctx)`` is for one-time work (an index, a model).

Columns are declared once: ``inputs`` lists column names, or ``ParamColumn("param")`` for the column(s) a parameter
names; a step whose inputs follow a rule (a check that is on or off) computes them in ``required_columns()``
instead and declares no ``inputs``. Planning hooks (``required_columns``, ``output_columns``, ``files``,
``model_names``) are cheap and never load models: ``rlaif validate`` calls them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from rlaif.backends.base import Backend
from rlaif.schema import GenerationParams

Record = dict[str, Any]
Phase = Literal["generate", "label", "filter"]


class StepParams(BaseModel):
    """Base of every step's typed parameters: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Quarantined:
    """A record that failed. ``reason`` is a short stable label (stats count by it); ``detail`` says exactly why.

    ``transient``: whether the failure may pass on its own (a backend, HTTP or engine error, a timeout), so a re-run
    retries the record; None lets the engine decide from the detail (a backend's reason marked with
    ``rlaif.backends.base.transient``). A bad record or an unparseable answer is permanent."""

    record: Record
    reason: str
    detail: str = ""
    raw_output: str | None = None
    transient: bool | None = None


@dataclass
class BatchResult:
    """What became of a batch. 1:1 steps leave ``inputs_emitted`` as None. Steps that turn one input into several
    rows (all pairs, best-of-n) or several inputs into one set it to the number of inputs that produced output, so
    the engine can still check: inputs = inputs_emitted + dropped + quarantined."""

    records: list[Record] = field(default_factory=list)
    dropped: list[tuple[Record, str]] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    inputs_emitted: int | None = None

    @property
    def emitted(self) -> int:
        return len(self.records) if self.inputs_emitted is None else self.inputs_emitted


# -- the runtime context -----------------------------------------------------------------------------------------
def batch_seed(pipeline_seed: int, model_seed: int | None, step_name: str, batch_index: int) -> int:
    """The sampling seed of one batch of one step: a batch redone after a kill samples exactly what the interrupted
    one would have, whatever ran before it. A 31-bit non-negative int (what every backend accepts)."""
    key = f"{pipeline_seed}/{model_seed}/{step_name}/{batch_index}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF


def record_digest(*parts: object) -> bytes:
    """The seed material of a per-record draw (which principles, which in-context examples, which evolution):
    keyed by the record's content and the step's ``seed``, never by its batch, so a record draws the same whatever
    batch it lands in."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()


def sampling_overrides(params: StepParams, keys: tuple[str, ...], **fixed: Any) -> dict[str, Any]:
    """The sampling values among ``keys`` that a step's parameters set (None: the model's own value stands), plus
    the ones the step fixes: what a step passes to ``ctx.sampling``."""
    return {**{k: getattr(params, k) for k in keys if getattr(params, k, None) is not None}, **fixed}


class Engines(Protocol):
    """Engine access by model name (the pipeline's ``models:``): shared backends and each model's sampling values."""

    def backend(self, model_name: str) -> Backend: ...

    def sampling(self, model_name: str, **overrides: Any) -> GenerationParams: ...

    def model_reference(self, model_name: str) -> str: ...


class NoEngines(RuntimeError):
    """A step asked for a model through a context that has no engines (a unit test of a model-free step)."""


@dataclass(frozen=True)
class StepContext:
    """What one call of a step's hook may use besides its records. Built by the engine per batch; a step never
    keeps it. ``StepContext()`` alone serves steps that use no model (filters, pairing, sources)."""

    step_name: str = ""
    batch_index: int = 0
    pipeline_seed: int = 0
    engines: Engines | None = None
    # How many records the step reads in all, when the runner knows (its upstreams' output; None for a source): a
    # stateful step may size its state for them up front (dedup's Bloom filters) instead of growing it.
    records_total: int | None = None

    @property
    def seed(self) -> int:
        """This batch's seed for a model without a seed of its own (what ``sampling`` gives such a model)."""
        return batch_seed(self.pipeline_seed, None, self.step_name, self.batch_index)

    def backend(self, model_name: str) -> Backend:
        return self._engines().backend(model_name)

    def sampling(self, model_name: str, **overrides: Any) -> GenerationParams:
        """The model's sampling values with ``overrides``, seeded for this batch by ``batch_seed``."""
        params = self._engines().sampling(model_name, **overrides)
        return replace(params, seed=batch_seed(self.pipeline_seed, params.seed, self.step_name, self.batch_index))

    def model_reference(self, model_name: str) -> str:
        return self._engines().model_reference(model_name)

    def _engines(self) -> Engines:
        if self.engines is None:
            raise NoEngines(f"step {self.step_name!r} needs a model, but its context has no engines")
        return self.engines


# -- steps -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamColumn:
    """In ``inputs``: the column(s) a parameter names (a name, a list of names, or None for none)."""

    param: str


class Step:
    """Base class: one level of inheritance only. Subclasses set ``Params``, ``inputs``, ``outputs``, ``phase`` and
    a hook."""

    Params: ClassVar[type[StepParams]] = StepParams
    inputs: ClassVar[tuple[str | ParamColumn, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    # Where the loop's report counts this step's time (and, for "generate", the records it made).
    phase: ClassVar[Phase] = "filter"
    is_source: ClassVar[bool] = False
    default_batch_size: ClassVar[int] = 1000
    # A stateful step's output for a batch depends on the batches before it (dedup's index of kept records), so
    # a run resumed after a kill redoes such a step from its first batch instead of continuing mid-way.
    stateful: ClassVar[bool] = False
    # A stateful step whose per-record work needs no state (dedup's hashing and MinHash; writing its outputs) sets
    # this and splits a batch's work in three: ``prepare`` (no state), ``decide`` (the state, batches in order),
    # ``finish`` (no state). An executor may run the first and last in other processes; ``process`` runs all three.
    # A source that sets it reads raw chunks (``read_chunks``) that ``prepare`` parses.
    prepares: ClassVar[bool] = False

    def __init__(self, name: str, params: StepParams, base_dir: Path) -> None:
        self.name = name
        self.params = params
        self.base_dir = base_dir  # relative paths in params resolve against the pipeline file's directory

    # -- planning (cheap) -------------------------------------------------------------------------------------
    def required_columns(self) -> set[str]:
        """The declared ``inputs``, with each ``ParamColumn`` replaced by the column(s) its parameter names."""
        columns: set[str] = set()
        for entry in self.inputs:
            value = getattr(self.params, entry.param) if isinstance(entry, ParamColumn) else entry
            columns |= {value} if isinstance(value, str) else set(value or ())
        return columns

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        """Columns after this step; ``None`` means unknown until run time (e.g. a Hub dataset), so checks relax."""
        return None if available is None else available | set(self.outputs)

    def files(self) -> list[Path]:
        """Files this step reads (data, templates, constitutions): checked before a run, hashed into its cache key."""
        return []

    def model_names(self) -> list[str]:
        model = getattr(self.params, "model", None)
        return [model] if isinstance(model, str) else list(model or [])

    def resolve(self, path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    # -- running ----------------------------------------------------------------------------------------------
    def setup(self, ctx: StepContext) -> None:
        """One-time work before the first batch of a run (load a model, build an index); the default does nothing."""

    def teardown(self) -> None:
        """Free what ``setup`` and the batches built (an index, a lookup table) once the step's last batch is done:
        the runner calls it before the next step starts, so a step's state does not add to the next one's memory. The
        default does nothing; a step must still work if ``process`` is called again after it."""

    def setup_report(self) -> dict[str, Any]:
        """Figures ``setup`` measured (a judge's check against human labels, ``{"judge_check": {...}}``): the runner
        records them in the step's stats under "setup", and the dataset card prints them. The default: none."""
        return {}

    def read(self, ctx: StepContext) -> Iterator[BatchResult]:
        raise NotImplementedError(f"{type(self).__name__} is not a source")

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        raise NotImplementedError(f"{type(self).__name__} does not process records")

    def prepare(self, records: list[Record]) -> Any:
        """For a step that ``prepares``: the work on ``records`` that needs no state, as a picklable value for
        ``decide``. Maybe in another process, batches in any order; it must give the same value wherever it runs
        (the step may not be set up there). A source that ``prepares`` turns each chunk of its ``read_chunks`` into
        a ``BatchResult`` here (``read`` is the two in a row)."""
        raise NotImplementedError(f"{type(self).__name__} does not prepare batches")

    def decide(self, prepared: Any, ctx: StepContext) -> Any:
        """For a stateful step that ``prepares``: the part that needs the state, from ``prepare``'s value alone (no
        records), in batch order, on the instance that was set up; a picklable value for ``finish``."""
        raise NotImplementedError(f"{type(self).__name__} does not decide batches")

    def finish(self, records: list[Record], decided: Any) -> BatchResult:
        """For a stateful step that ``prepares``: the batch's result from its records and ``decide``'s value, with no
        state (maybe in another process)."""
        raise NotImplementedError(f"{type(self).__name__} does not finish batches")

    def read_chunks(self, ctx: StepContext) -> Iterator[Any]:
        """For a source that ``prepares``: its batches before ``prepare`` (raw lines), cheap to read and ship."""
        raise NotImplementedError(f"{type(self).__name__} does not read chunks")


# -- per-record filters ------------------------------------------------------------------------------------------
class Quarantine(Exception):  # noqa: N818 - raised to quarantine a record, like StopIteration stops one
    """Raised by a filter's verdict (``filter_records``): the record can be neither kept nor dropped as it is."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason, self.detail = reason, detail


def filter_records(records: list[Record], verdict: Callable[[Record], str | None]) -> BatchResult:
    """A per-record filter's batch: ``verdict(record)`` returns None to keep it, a reason to drop it, or raises
    ``Quarantine(reason, detail)``. Filters call it from ``process``; this function owns the bookkeeping."""
    result = BatchResult()
    for record in records:
        try:
            reason = verdict(record)
        except Quarantine as exc:
            result.quarantined.append(Quarantined(record, exc.reason, exc.detail))
            continue
        if reason is None:
            result.records.append(record)
        else:
            result.dropped.append((record, reason))
    return result
