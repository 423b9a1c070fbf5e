"""The Step contract. A step declares its input and output columns and implements one hook; the engine owns the
batch loop, caching, accounting and quarantine.

- Sources implement ``read()`` and yield ``BatchResult``s (records, plus any input they had to quarantine).
- Transforms implement ``process(records) -> BatchResult``: every record that enters leaves as an output, is
  dropped with a reason, or is quarantined with a reason (and the raw model output when there is one).

Planning hooks (``required_columns``, ``output_columns``, ``files``, ``model_names``) are cheap and never load
models: ``rlaif validate`` calls them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict

from rlaif.backends.base import Backend
from rlaif.schema import GenerationParams

Record = dict[str, Any]


class StepParams(BaseModel):
    """Base of every step's typed parameters: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Quarantined:
    """A record that failed. ``reason`` is a short stable label (stats count by it); ``detail`` says exactly why."""

    record: Record
    reason: str
    detail: str = ""
    raw_output: str | None = None


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


class Runtime(Protocol):
    """What the engine injects into steps at run time (never at planning time)."""

    pipeline_seed: int

    def backend(self, model_name: str) -> Backend: ...

    def sampling(self, model_name: str, **overrides: Any) -> GenerationParams: ...

    def model_reference(self, model_name: str) -> str: ...


class Step:
    """Base class: one level of inheritance only. Subclasses set ``Params``, ``inputs``, ``outputs`` and a hook."""

    Params: ClassVar[type[StepParams]] = StepParams
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    is_source: ClassVar[bool] = False
    default_batch_size: ClassVar[int] = 1000
    # A stateful step's output for a batch depends on the batches before it (dedup's index of kept records), so
    # a run resumed after a kill redoes such a step from its first batch instead of continuing mid-way.
    stateful: ClassVar[bool] = False

    def __init__(self, name: str, params: StepParams, base_dir: Path) -> None:
        self.name = name
        self.params = params
        self.base_dir = base_dir  # relative paths in params resolve against the pipeline file's directory
        self.runtime: Runtime | None = None

    # -- planning (cheap) -------------------------------------------------------------------------------------
    def required_columns(self) -> set[str]:
        return set(self.inputs)

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
    def setup(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def read(self) -> Iterator[BatchResult]:
        raise NotImplementedError(f"{type(self).__name__} is not a source")

    def process(self, records: list[Record]) -> BatchResult:
        raise NotImplementedError(f"{type(self).__name__} does not process records")
