"""Reading a training config file: located YAML, ``key=value`` overrides, ``--cpu``, then the typed config. Every
problem names the file and the line of the key (an override names the line of its nearest key in the file).

Module import stays light (yaml only): the pydantic configs load when a file is read. Validation runs twice: a light
pass first, which checks everything but the names of TRL pass-through options (``train.trl``), so a wrong value
(``lora.r=0``) is reported before torch loads; then the full pass, which imports TRL's config class to check those.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rlaif.config import (
    ConfigError,
    Located,
    apply_overrides,
    bool_slips,
    check_kind,
    closest,
    load_yaml,
    validation_problems,
)
from rlaif.config.output_dir import training_output_dir
from rlaif.secrets import check_no_secrets

if TYPE_CHECKING:
    from rlaif.train.config import RecipeConfig


def load_config(path: str | Path, recipe: str, overrides: list[str] | None = None, cpu: bool = False) -> RecipeConfig:
    """Read a recipe YAML (safe loader), apply overrides and ``--cpu``, validate; raise ``ConfigError`` listing
    every problem with its file and line."""
    located = load_yaml(path)
    check_kind(located, "train")
    return _from_yaml(located, recipe, overrides, cpu)


def load_any_config(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """A training config validated as the recipe its own ``recipe:`` names (``rlaif validate``)."""
    located = load_yaml(path)
    check_kind(located, "train")
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
    training_output_dir(located)  # top-level output_dir -> train.output_dir (its deprecated alias, warned)
    if cpu:
        data["cpu"] = True
    check_no_secrets(located)  # credentials come from the environment only
    return validate_config(located, recipe)


def validate_config(located: Located, recipe: str) -> RecipeConfig:
    """The typed config of ``recipe`` from already-read (and overridden) YAML."""
    from pydantic import ValidationError

    from rlaif.models import hub_problem
    from rlaif.train.config import RECIPE_CONFIGS

    if recipe not in RECIPE_CONFIGS:
        choices = ", ".join(RECIPE_CONFIGS)
        message = f"unknown recipe {recipe!r}{closest(recipe, RECIPE_CONFIGS)}; choices: {choices}"
        raise ConfigError([located.problem(("recipe",), message)])
    model = RECIPE_CONFIGS[recipe]
    if slips := bool_slips(located, model):
        raise ConfigError(slips)
    for context in ({"light": True}, None):  # light: no TRL (torch) import; its errors come before any heavy one
        try:
            cfg = model.model_validate(located.data, context=context)
        except ValidationError as exc:
            raise ConfigError(validation_problems(located, exc.errors(), model)) from None
        if context and (problem := hub_problem(cfg.model.name)):
            raise ConfigError([located.problem(("model", "name"), problem)])
    cfg._source = located.file
    return cfg
