"""Reading a training config file: located YAML, ``key=value`` overrides, ``--cpu``, then the typed config. Every
problem names the file and the line of the key (an override names the line of its nearest key in the file).

Module import stays light (yaml only): the pydantic configs and TRL's config classes load when a file is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rlaif.config import ConfigError, Located, apply_overrides, load_yaml, validation_problems

if TYPE_CHECKING:
    from rlaif.train.config import RecipeConfig


def load_config(path: str | Path, recipe: str, overrides: list[str] | None = None, cpu: bool = False) -> RecipeConfig:
    """Read a recipe YAML (safe loader), apply overrides and ``--cpu``, validate; raise ``ConfigError`` listing
    every problem with its file and line."""
    return _from_yaml(load_yaml(path), recipe, overrides, cpu)


def load_any_config(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """A training config validated as the recipe its own ``recipe:`` names (``rlaif validate``)."""
    located = load_yaml(path)
    recipe = located.data.get("recipe") if isinstance(located.data, dict) else None
    if not isinstance(recipe, str):
        raise ConfigError([located.problem(("recipe",), "`recipe:` names the trainer: sft, rm, dpo, kto or ppo")])
    return _from_yaml(located, recipe, overrides, cpu=False)


def _from_yaml(located: Located, recipe: str, overrides: list[str] | None, cpu: bool) -> RecipeConfig:
    data = located.data
    if not isinstance(data, dict):
        raise ConfigError([located.problem((), "a training config is a mapping (recipe, model, lora, data, train)")])
    if data.get("recipe", recipe) != recipe:
        message = f"recipe: {data['recipe']} cannot run as `rlaif train {recipe}`"
        raise ConfigError([located.problem(("recipe",), message)])
    apply_overrides(located, overrides or [])
    if cpu:
        data["cpu"] = True
    return validate_config(located, recipe)


def validate_config(located: Located, recipe: str) -> RecipeConfig:
    """The typed config of ``recipe`` from already-read (and overridden) YAML."""
    from pydantic import ValidationError

    from rlaif.train.config import RECIPE_CONFIGS

    if recipe not in RECIPE_CONFIGS:
        choices = ", ".join(RECIPE_CONFIGS)
        raise ConfigError([located.problem(("recipe",), f"unknown recipe {recipe!r}; choices: {choices}")])
    try:
        cfg = RECIPE_CONFIGS[recipe].model_validate(located.data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(located, exc.errors())) from None
    cfg._source = located.file
    return cfg
