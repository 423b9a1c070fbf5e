"""Which kind of rlaif YAML a file is, from its top-level keys: a loop, a training config or a pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from rlaif.config.errors import ConfigError

if TYPE_CHECKING:
    from rlaif.config.yamlio import Located

Kind = Literal["pipeline", "train", "loop"]

# What each kind holds (said when a file reaches the wrong command) and the command that takes it.
_HOLDS: dict[str, str] = {
    "pipeline": "name, models, steps, output",
    "train": "recipe, model, lora, data, train",
    "loop": "name, rounds, prompts, pipeline, train",
}
_LABEL: dict[str, str] = {"pipeline": "a pipeline file", "train": "a training config", "loop": "a loop file"}


def config_kind(data: Any) -> Kind:
    """``rounds:`` makes a loop file, ``recipe:`` a training config; anything else is read as a pipeline."""
    if isinstance(data, dict):
        if "rounds" in data:
            return "loop"
        if "recipe" in data:
            return "train"
    return "pipeline"


def _evident_kind(data: Any) -> Kind | None:
    # Only a key that belongs to one kind decides; a file with none of them is left to its validator to explain.
    if not isinstance(data, dict):
        return None
    if "rounds" in data:
        return "loop"
    if "recipe" in data:
        return "train"
    if "steps" in data or "models" in data:
        return "pipeline"
    return None


def _command(kind: str, file: str, data: dict[str, Any]) -> str:
    if kind == "train":
        recipe = data.get("recipe")
        return f"rlaif train {recipe if isinstance(recipe, str) else 'RECIPE'} {file}"
    return f"rlaif {'loop' if kind == 'loop' else 'run'} {file}"


def check_kind(located: Located, wanted: Kind) -> None:
    """Raise one clear ``ConfigError`` when ``located`` is evidently another kind of file than ``wanted`` (a pipeline
    given to ``rlaif loop``), instead of a screen of field errors. Call it before applying overrides."""
    kind = _evident_kind(located.data)
    if kind is None or kind == wanted:
        return
    sign = next(f"{key}:" for key in ("rounds", "recipe", "steps", "models") if key in located.data)
    message = (
        f"this is {_LABEL[kind]} (it has {sign}), not {_LABEL[wanted]} ({_HOLDS[wanted]}); "
        f"run it with `{_command(kind, located.file, located.data)}`"
    )
    raise ConfigError([located.problem((), message)])
