"""Which kind of rlaif YAML a file is, from its top-level keys: a loop, a training config or a pipeline."""

from __future__ import annotations

from typing import Any, Literal

Kind = Literal["pipeline", "train", "loop"]


def config_kind(data: Any) -> Kind:
    """``rounds:`` makes a loop file, ``recipe:`` a training config; anything else is read as a pipeline."""
    if isinstance(data, dict):
        if "rounds" in data:
            return "loop"
        if "recipe" in data:
            return "train"
    return "pipeline"
