"""Hand-written YAML, read safely, with the line of every key kept for error messages; ``key=value`` overrides."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlaif.config.errors import ConfigError, Problem

PathKey = tuple[str | int, ...]
COMMAND_LINE = "<command line>"


@dataclass
class Located:
    """Plain Python data from a YAML file plus the 1-based line where each key or item starts."""

    data: Any
    file: str
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one (an override has no line)."""
        path = tuple(path)
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def problem(self, path: Sequence[str | int], message: str) -> Problem:
        return Problem(self.file, self.line(path), message)


def load_yaml(path: str | Path, text: str | None = None) -> Located:
    """Parse with PyYAML's safe constructors only; a syntax error or an unreadable file names the file (and line)."""
    path = Path(path)
    if text is None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError.one(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        raise ConfigError([Problem(str(path), line, f"invalid YAML: {getattr(exc, 'problem', exc)}")]) from None
    located = Located(data=None, file=str(path))
    located.data = _to_python(node, (), located.lines) if node is not None else {}
    return located


def _to_python(node: yaml.Node, path: PathKey, lines: dict[PathKey, int]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, (*path, key), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    # Resolve tags (int, float, bool, null...) exactly as safe_load would, one scalar at a time.
    return yaml.SafeLoader("").construct_object(node, deep=True)


def parse_value(text: str) -> Any:
    """A command-line override value, typed the way YAML would type it (``0`` int, ``true`` bool, ``[a]`` list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(located: Located, overrides: Iterable[str]) -> None:
    """Apply ``a.b.c=value`` in place (``train.max_steps=10``, ``rounds=3``). In a list of named items (a pipeline's
    ``steps``), an item is addressed by its name: ``steps.judge.model=x``. A missing or null parent becomes a mapping.
    """
    problems = []
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.strip()
        if not sep or not key:
            message = f"override {override!r} is not key=value (e.g. train.max_steps=10, steps.judge.temperature=0)"
            problems.append(Problem(COMMAND_LINE, None, message))
            continue
        try:
            _set(located.data, key.split("."), parse_value(value))
        except (KeyError, TypeError) as exc:
            problems.append(Problem(COMMAND_LINE, None, f"override {override!r}: {exc.args[0]}"))
    if problems:
        raise ConfigError(problems)


def _set(data: Any, keys: list[str], value: Any) -> None:
    target = data
    for depth, key in enumerate(keys[:-1]):
        if isinstance(target, list):
            target = _item_by_name(target, key, ".".join(keys[: depth + 1]))
            continue
        if not isinstance(target, dict):
            raise TypeError(f"{'.'.join(keys[:depth])} is not a mapping")
        if target.get(key) is None:
            target[key] = {}
        target = target[key]
    if not isinstance(target, dict):
        raise TypeError(f"{'.'.join(keys[:-1])} is not a mapping")
    target[keys[-1]] = value


def _item_by_name(items: list[Any], name: str, where: str) -> Any:
    for item in items:
        if isinstance(item, dict) and item.get("name") == name:
            return item
    names = [i.get("name") for i in items if isinstance(i, dict)]
    raise KeyError(f"no item named {name!r} at {where}; names: {names}")


def validation_problems(located: Located, errors: Iterable[Mapping[str, Any]]) -> list[Problem]:
    """Pydantic's ``ValidationError.errors()`` as problems: the line of each error's key path, the dotted path, the
    message (a validator's ``Value error,`` prefix dropped). Errors of a whole section name the section's line."""
    problems = []
    for error in errors:
        loc = tuple(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        label = ".".join(map(str, loc))
        problems.append(located.problem(loc, f"{label}: {message}" if label else message))
    return problems
