"""The one engine pool: engines keyed by (backend, model, engine options), started lazily, shared by every model name
and every pipeline that names the same engine, handed off around training, closed once.

Used by a pipeline run (``EngineRuntime`` owns a pool for the run) and by the loop (one pool across every round's
data and eval pipelines, passed to them as their ``backends``).

Hand-off: the generation engine and the trainer never hold the accelerator (on CPU, the bulk of memory) at the same
time. Before training, an engine that can sleep (vLLM with ``enable_sleep_mode`` on a GPU: weights offloaded, KV
cache freed) sleeps; any other engine is closed (for vLLM: its engine-core process exits). After training, the
engines come back: woken, or started again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from rlaif.backends import Backend, load_backend
from rlaif.pipeline.spec import ModelSpec
from rlaif.schema import GenerationParams, GenerationResult, Prompt

log = logging.getLogger(__name__)


def engine_key(spec: ModelSpec) -> str:
    """Model specs with equal keys share one engine: same backend, model and engine options (sampling may differ)."""
    return repr((spec.backend, spec.model, sorted(spec.options.items())))


class SharedEngine:
    """One backend, started on first use (a fully cached run starts nothing). Implements the Backend protocol."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.name = spec.backend
        self.model = spec.model
        self._backend: Backend | None = None
        self._asleep = False

    @property
    def started(self) -> bool:
        return self._backend is not None

    def backend(self) -> Backend:
        if self._backend is None:
            log.info("starting %s engine for %s", self.spec.backend, self.spec.model)
            self._backend = load_backend(self.spec.backend, self.spec.model, **self.spec.options)
        if self._asleep:
            self._backend.wake_up()  # type: ignore[attr-defined]
            self._asleep = False
        return self._backend

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[GenerationResult]:
        return self.backend().generate(prompts, params)

    def server_stats(self) -> dict[str, dict[str, float]]:
        """Per-server counters of a started backend that keeps them (``openai``: one per server of its pool), else
        nothing; never starts an engine."""
        stats = getattr(self._backend, "server_stats", None)
        return stats() if stats is not None else {}

    def release(self) -> str | None:
        """Free the accelerator for training: sleep when the engine can, else close. What was done, or None."""
        if self._backend is None or self._asleep:
            return None
        if getattr(self._backend, "can_sleep", False):
            self._backend.sleep(level=1)  # type: ignore[attr-defined]
            self._asleep = True
            return "sleep"
        self._backend.close()
        self._backend = None
        return "close"

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        self._asleep = False

    def __enter__(self) -> SharedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EnginePool:
    """Engines by ``engine_key``: a pipeline's policy and judge, or the loop's data and eval pipelines, share one
    engine when they name one model. ``provided`` backends (by model name) are the caller's: used as they are,
    never released or closed."""

    def __init__(self, provided: dict[str, Backend] | None = None) -> None:
        self.provided = dict(provided or {})
        self._engines: dict[str, SharedEngine] = {}

    def engine(self, name: str, spec: ModelSpec) -> Any:
        """The backend for model ``name``: the caller's own, or the shared engine of its key (not started yet)."""
        if name in self.provided:
            return self.provided[name]
        key = engine_key(spec)
        if key not in self._engines:
            self._engines[key] = SharedEngine(spec)
        return self._engines[key]

    def backends_for(self, models: dict[str, ModelSpec]) -> dict[str, Any]:
        return {name: self.engine(name, spec) for name, spec in models.items()}

    def release(self) -> list[str]:
        """Hand the accelerator to the trainer; returns which engines were released and how."""
        return [f"{engine.spec.model}: {how}" for engine in self._engines.values() if (how := engine.release())]

    def reacquire(self, released: list[str]) -> None:
        """Bring back the engines released before training, so the next phase finds them ready."""
        if released:
            for engine in self._engines.values():
                engine.backend()

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
