"""Name-or-dotted-path component lookup shared by every registry (backends, steps, ...).

Registries are plain dicts of ``name -> "module:attr"``; nothing is imported until asked for (DESIGN.md principle 5).
"""

from __future__ import annotations

import importlib
from typing import Any


class UnknownComponent(LookupError):
    pass


def resolve_component(registry: dict[str, str], name: str, kind: str) -> Any:
    """The object registered as ``name``, or the one at a dotted path ``pkg.module.Attr`` (a user plugin)."""
    target = registry.get(name)
    if target is None:
        if "." not in name:
            raise UnknownComponent(f"unknown {kind} {name!r}; known: {', '.join(sorted(registry))}")
        module_name, _, attr = name.rpartition(".")
        target = f"{module_name}:{attr}"
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownComponent(f"cannot import {kind} {name!r}: {exc}") from exc
