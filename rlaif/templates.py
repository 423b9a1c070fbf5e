"""Prompt templates: Jinja files under ``prompts/``, overridable per step by path. Rendering is sandboxed.

A step names its default template by file name (``pairwise_judge.jinja``); a ``template:`` parameter given by the
user is a path, relative to the pipeline file. The template's bytes go into the step's cache key (``files()``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, Template
from jinja2.sandbox import SandboxedEnvironment

# What a judge scores against when no rubric is given: the pipeline's judge steps and PPO's judge reward alike.
DEFAULT_RUBRIC = "A good answer is helpful, relevant, accurate, clear and appropriately detailed."

# prompts/ and constitutions/ live at the top of the repository, beside the package (editable installs).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROMPTS_DIR = PROJECT_ROOT / "prompts"
CONSTITUTIONS_DIR = PROJECT_ROOT / "constitutions"

# Sandboxed: templates may come from users; StrictUndefined: a misspelled placeholder is an error, not "".
_ENV = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False, autoescape=False)


def template_path(default_name: str, override: str | None, base_dir: Path) -> Path:
    """The user's template (a path relative to the pipeline file) or the shipped default."""
    if override is None:
        return PROMPTS_DIR / default_name
    path = Path(override).expanduser()
    return path if path.is_absolute() else base_dir / path


def render(path: Path, **variables: Any) -> str:
    return _compiled(path.read_text()).render(**variables).strip()


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> Template:
    # Steps render once per record; parse each template text once.
    return _ENV.from_string(source)
