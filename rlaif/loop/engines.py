"""The loop's generation engines: one ``EnginePool`` (rlaif.pipeline.engines, the pool every pipeline run uses)
built once, shared by every round's pipelines, and handed off around training (``release`` / ``reacquire``)."""

from __future__ import annotations

from rlaif.pipeline.engines import EnginePool, SharedEngine, engine_key

__all__ = ["EnginePool", "SharedEngine", "engine_key"]
