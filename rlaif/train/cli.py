"""``rlaif train sft|rm|dpo|kto|ppo CONFIG.yaml [k=v ...] [--cpu] [--resume]``, and reading those config files.

Module import stays light (typer, yaml): ``rlaif --help`` builds this sub-app; pydantic configs load when a file is
read, torch/transformers when a recipe runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml

if TYPE_CHECKING:
    from rlaif.train.config import RecipeConfig

train_app = typer.Typer(no_args_is_help=True, help="QLoRA training: sft, rm, dpo (+ variants), kto on TRL; ppo.")

ConfigArg = Annotated[Path, typer.Argument(help="Training YAML, e.g. pipelines/train/dpo.yaml.")]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. train.max_steps=10.")]
CpuOpt = Annotated[bool, typer.Option("--cpu", help="CPU profile: use_cpu, fp32, adamw_torch, small batches.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue from the last complete checkpoint.")]


def _run(recipe: str, config: Path, overrides: list[str] | None, cpu: bool, resume: bool) -> None:
    from rich.console import Console

    from rlaif.train.config import ConfigError
    from rlaif.train.data import DataFormatError
    from rlaif.train.model import ChatTemplateError

    console = Console(soft_wrap=True)  # paths and messages stay on one line (copy-pasteable, greppable)
    try:
        cfg = load_config(config, recipe, overrides or [], cpu=cpu)
        from rlaif.train.recipes import run_recipe

        result = run_recipe(cfg, resume=resume)
    except (ConfigError, DataFormatError, ChatTemplateError) as exc:
        # markup off for the message: paths and YAML keys may contain [brackets]
        console.print("[red]error:[/red] ", end="")
        console.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(2) from exc
    if result.resumed_from:
        console.print(f"resumed from {result.resumed_from}", highlight=False)
    console.print(f"adapter: {result.adapter_dir}", highlight=False)
    if result.merged_dir:
        console.print(f"merged model: {result.merged_dir}", highlight=False)
    for key, value in result.metrics.items():
        console.print(f"  {key}: {value:.4f}", highlight=False)


@train_app.command()
def sft(config: ConfigArg, overrides: OverridesArg = None, cpu: CpuOpt = False, resume: ResumeOpt = False) -> None:
    """Supervised fine-tuning (messages, prompt/completion or text rows)."""
    _run("sft", config, overrides, cpu, resume)


@train_app.command()
def rm(config: ConfigArg, overrides: OverridesArg = None, cpu: CpuOpt = False, resume: ResumeOpt = False) -> None:
    """Reward model on preference pairs; reports pairwise accuracy."""
    _run("rm", config, overrides, cpu, resume)


@train_app.command()
def dpo(config: ConfigArg, overrides: OverridesArg = None, cpu: CpuOpt = False, resume: ResumeOpt = False) -> None:
    """DPO and its loss family (ipo, robust, ..., orpo, simpo) on preference pairs; reports reward margins."""
    _run("dpo", config, overrides, cpu, resume)


@train_app.command()
def ppo(config: ConfigArg, overrides: OverridesArg = None, cpu: CpuOpt = False, resume: ResumeOpt = False) -> None:
    """PPO on prompts with a rule, RM-adapter, reward-model or LLM-judge reward; one shared quantized base."""
    _run("ppo", config, overrides, cpu, resume)


@train_app.command()
def kto(config: ConfigArg, overrides: OverridesArg = None, cpu: CpuOpt = False, resume: ResumeOpt = False) -> None:
    """KTO on unpaired good/bad completions (paired rows are unpaired first)."""
    _run("kto", config, overrides, cpu, resume)


# -- config files ------------------------------------------------------------------------------------------------
def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    from rlaif.train.config import ConfigError

    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part!r} is not a mapping")
        node = child
    node[leaf] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """``a.b.c=value`` in place; the value is typed as YAML would type it (``0`` int, ``null``, ``[a, b]``)."""
    from rlaif.train.config import ConfigError

    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {override!r} is not key=value (e.g. train.max_steps=10)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        _set_dotted(data, key.strip(), value)


def load_config(path: str | Path, recipe: str, overrides: list[str] | None = None, cpu: bool = False) -> RecipeConfig:
    """Read a recipe YAML (safe loader), apply overrides and ``--cpu``, validate; errors name file and key path."""
    from pydantic import ValidationError

    from rlaif.train.config import RECIPE_CONFIGS, ConfigError

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config is a mapping (recipe, model, lora, data, train)")
    if data.get("recipe", recipe) != recipe:
        raise ConfigError(f"{path}: recipe: {data['recipe']} cannot run as `rlaif train {recipe}`")
    apply_overrides(data, overrides or [])
    if cpu:
        data["cpu"] = True
    try:
        cfg = RECIPE_CONFIGS[recipe].model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(path, exc)) from None
    cfg._source = str(path)
    return cfg


def format_errors(path: Path, exc: Any) -> str:
    """A pydantic ValidationError as one line per problem: the dotted key path, then the message."""
    lines = [f"{path}: {exc.error_count()} problem(s)"]
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)
