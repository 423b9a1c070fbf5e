"""A pipeline's engines: the run's engine pool (rlaif.pipeline.engines: one engine per distinct model) and each
model's sampling values. Steps reach them through their ``StepContext`` (rlaif.steps.base), which seeds each batch's
sampling with ``batch_seed``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlaif.backends import Backend
from rlaif.backends.server_pool import sum_stats
from rlaif.pipeline.budget import Meter, MeteredEngines
from rlaif.pipeline.engines import EnginePool
from rlaif.pipeline.fingerprint import adapter_digest
from rlaif.pipeline.spec import ModelSpec
from rlaif.schema import GenerationParams, LoraAdapter
from rlaif.steps.base import StepContext


def lora_adapter(path: str) -> LoraAdapter:
    """The adapter at ``path``, named by its content: a retrained adapter is never served from an engine's cache."""
    resolved = Path(path).expanduser().resolve()
    return LoraAdapter(name=f"lora-{adapter_digest(resolved)[:12]}", path=str(resolved))


class EngineRuntime:
    """Backends are built lazily, on the first batch that needs them, so a fully cached run loads no model.

    Two model names with the same backend, model and options share one engine (the pool's). ``provided`` backends
    (by model name) are used as they are and left open: their owner (a test session, the loop's pool) closes them.
    """

    def __init__(
        self, models: dict[str, ModelSpec], pipeline_seed: int = 0, provided: dict[str, Backend] | None = None
    ) -> None:
        self.models = models
        self.pipeline_seed = pipeline_seed
        self._pool = EnginePool(provided)
        self._adapters: dict[str, LoraAdapter] = {}  # by path: an adapter is hashed once per run, not per batch
        self.meter = Meter()  # tokens per model name, for the run's stats and budgets (rlaif.pipeline.budget)
        self._metered = MeteredEngines(self, self.meter)  # what step contexts get: every generate call counted

    def context(self, step_name: str, batch_index: int = 0, records_total: int | None = None) -> StepContext:
        """What a step's hook gets for one batch: these engines, the step's name, the batch index and its seed, and
        how many records the step reads in all when known."""
        return StepContext(step_name, batch_index, self.pipeline_seed, self._metered, records_total)

    def backend(self, model_name: str) -> Backend:
        return self._pool.engine(model_name, self.models[model_name])

    def sampling(self, model_name: str, **overrides: Any) -> GenerationParams:
        """The model's sampling values with ``overrides``; ``seed`` is the model's (or step's) own: the step's
        context derives each batch's seed from it (``StepContext.sampling``)."""
        values = {**self.models[model_name].sampling, **overrides}
        if "stop" in values:
            values["stop"] = tuple(values["stop"] or ())
        if values.get("lora"):
            path = values["lora"]
            if path not in self._adapters:
                self._adapters[path] = lora_adapter(path)
            values["lora"] = self._adapters[path]
        return GenerationParams(**values)

    def model_reference(self, model_name: str) -> str:
        return self.models[model_name].model

    def server_stats(self, model_names: list[str]) -> dict[str, dict[str, float]]:
        """Cumulative per-server counters (rlaif.backends.server_pool) of the engines behind ``model_names``, each
        engine once; empty for backends without servers. A runner diffs two of these to get a step's share."""
        engines = {id(e): e for e in (self._pool.engine(n, self.models[n]) for n in model_names if n in self.models)}
        return sum_stats(stats() for e in engines.values() if (stats := getattr(e, "server_stats", None)))

    def close(self) -> None:
        """Close the engines this run started (never the provided ones)."""
        self._pool.close()
