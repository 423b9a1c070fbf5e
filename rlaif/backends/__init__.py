"""Backend registry: name -> "module:Class". Modules import their heavy dependencies only when constructed."""

from __future__ import annotations

import importlib
from typing import Any

from rlaif.backends.base import Backend

BACKENDS: dict[str, str] = {
    "vllm": "rlaif.backends.vllm_backend:VllmBackend",
    "hf": "rlaif.backends.hf_backend:HFBackend",
    "openai": "rlaif.backends.openai_backend:OpenAIBackend",
}


def backend_class(name: str) -> type:
    """The class registered under ``name``, or a dotted ``pkg.module.Class`` path for user backends."""
    target = BACKENDS.get(name)
    if target is None:
        if "." not in name:
            raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
        module_name, _, attr = name.rpartition(".")
        target = f"{module_name}:{attr}"
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def load_backend(name: str, model: str, **options: Any) -> Backend:
    """Build a backend by registry name; ``options`` are the backend constructor's keyword arguments."""
    return backend_class(name)(model, **options)


__all__ = ["BACKENDS", "Backend", "backend_class", "load_backend"]
