"""Backend registry: name -> "module:Class". Modules import their heavy dependencies only when constructed."""

from __future__ import annotations

from typing import Any

from rlaif.backends.base import Backend
from rlaif.registry import resolve_component

BACKENDS: dict[str, str] = {
    "vllm": "rlaif.backends.vllm_backend:VllmBackend",
    "hf": "rlaif.backends.hf_backend:HFBackend",
    "openai": "rlaif.backends.openai_backend:OpenAIBackend",
}


def backend_class(name: str) -> type:
    """The class registered under ``name``, or a dotted ``pkg.module.Class`` path for user backends."""
    return resolve_component(BACKENDS, name, "backend")


def load_backend(name: str, model: str, **options: Any) -> Backend:
    """Build a backend by registry name; ``options`` are the backend constructor's keyword arguments."""
    return backend_class(name)(model, **options)


__all__ = ["BACKENDS", "Backend", "backend_class", "load_backend"]
