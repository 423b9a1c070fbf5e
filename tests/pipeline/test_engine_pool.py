"""One engine pool for pipeline runs and the loop: engines keyed by backend, model and options, started lazily,
released and reacquired around training, closed once; the caller's own backends are never closed."""

from __future__ import annotations

from rlaif.loop.engines import EnginePool as LoopPool
from rlaif.pipeline.engines import EnginePool, SharedEngine
from rlaif.pipeline.runtime import EngineRuntime
from rlaif.pipeline.spec import ModelSpec
from rlaif.schema import GenerationParams

STARTED: list[str] = []


class Counted:
    """A backend loaded by dotted path that records starts and closes (no sleep mode: released means closed)."""

    name = "counted"

    def __init__(self, model: str, **options: object) -> None:
        self.model, self.closed = model, False
        STARTED.append(model)

    def generate(self, prompts, params):
        from rlaif.schema import Completion, GenerationResult

        return [
            GenerationResult(completions=[Completion(text="ok", completion_tokens=1, finish_reason="stop")])
            for _ in prompts
        ]

    def close(self) -> None:
        self.closed = True


def _spec(name: str, model: str = "m", **options: object) -> ModelSpec:
    return ModelSpec(name, "test_engine_pool.Counted", model, sampling={}, options=dict(options))


def test_the_loop_uses_the_pipeline_pool():
    assert LoopPool is EnginePool


def test_names_of_one_engine_share_it_and_nothing_starts_before_use():
    STARTED.clear()
    models = {"policy": _spec("policy"), "judge": _spec("judge"), "other": _spec("other", "m2")}
    runtime = EngineRuntime(models)
    assert runtime.backend("policy") is runtime.backend("judge")
    assert runtime.backend("other") is not runtime.backend("policy")
    assert STARTED == []  # engines start on the first generation, so a cached run loads no model
    runtime.backend("judge").generate(["hi"], GenerationParams())
    assert STARTED == ["m"]
    runtime.close()


def test_provided_backends_are_used_and_never_closed():
    mine = Counted("caller")
    runtime = EngineRuntime({"policy": _spec("policy")}, provided={"policy": mine})
    assert runtime.backend("policy") is mine
    runtime.close()
    assert not mine.closed


def test_release_closes_what_cannot_sleep_and_reacquire_starts_it_again():
    STARTED.clear()
    pool = EnginePool()
    engines = pool.backends_for({"policy": _spec("policy"), "judge": _spec("judge")})
    assert engines["policy"] is engines["judge"] and isinstance(engines["policy"], SharedEngine)
    assert pool.release() == []  # nothing started, nothing to hand off
    engines["policy"].generate(["hi"], GenerationParams())
    assert pool.release() == ["m: close"] and not engines["policy"].started
    pool.reacquire(["m: close"])
    assert engines["policy"].started and STARTED == ["m", "m"]
    pool.close()
    assert not engines["policy"].started
