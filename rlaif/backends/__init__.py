"""Backend registry: name -> "module:Class" (kept in rlaif.backends.base beside the protocol). Modules import their
heavy dependencies only when constructed."""

from __future__ import annotations

from rlaif.backends.base import BACKENDS, Backend, backend_class, load_backend

__all__ = ["BACKENDS", "Backend", "backend_class", "load_backend"]
