"""Hand-written YAML, read safely, with the line of every key kept for error messages; ``key=value`` overrides."""

from __future__ import annotations

import difflib
import types
import typing
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
    # The path each ``key=value`` override set (list items by index), so a problem there names the override, not
    # a line of the file that never held the value.
    overrides: dict[PathKey, str] = field(default_factory=dict)

    def line(self, path: Sequence[str | int]) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one (an override has no line)."""
        path = tuple(path)
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def override_at(self, path: Sequence[str | int]) -> str | None:
        """The override that set ``path`` or one of its ancestors, or created ``path`` (a key the file does not
        have, made by ``models.polcy.temperature=1``), if any."""
        path = tuple(path)
        for end in range(len(path), 0, -1):
            if path[:end] in self.overrides:
                return self.overrides[path[:end]]
        if path and path not in self.lines:
            return next((text for key, text in self.overrides.items() if key[: len(path)] == path), None)
        return None

    def problem(self, path: Sequence[str | int], message: str) -> Problem:
        if (override := self.override_at(path)) is not None:
            return Problem(self.file, None, f"override {override!r}: {message}")
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
    duplicates: list[Problem] = []
    located.data = _to_python(node, (), located.lines, duplicates) if node is not None else {}
    if duplicates:
        raise ConfigError([Problem(str(path), d.line, d.message) for d in duplicates])
    return located


def _to_python(node: yaml.Node, path: PathKey, lines: dict[PathKey, int], duplicates: list[Problem]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            line = key_node.start_mark.line + 1
            if key in out:  # PyYAML keeps the last silently; a repeated key is almost always an edit gone wrong
                label = ".".join(map(str, (*path, key)))
                first = lines[(*path, key)]
                duplicates.append(Problem(None, line, f"duplicate key {label!r} (first at line {first}): keep one"))
                continue
            lines[(*path, key)] = line
            out[key] = _to_python(value_node, (*path, key), lines, duplicates)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, (*path, i), lines, duplicates) for i, item in enumerate(node.value)]
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
            located.overrides[_set(located.data, key.split("."), parse_value(value))] = override.strip()
        except (KeyError, TypeError) as exc:
            problems.append(Problem(COMMAND_LINE, None, f"override {override!r}: {exc.args[0]}"))
    if problems:
        raise ConfigError(problems)


def _set(data: Any, keys: list[str], value: Any) -> PathKey:
    """Set the value; return the path it now has in ``data`` (a list item addressed by name becomes its index)."""
    target = data
    path: list[str | int] = []
    for depth, key in enumerate(keys[:-1]):
        if isinstance(target, list):
            index = _item_by_name(target, key, ".".join(keys[: depth + 1]))
            target = target[index]
            path.append(index)
            continue
        if not isinstance(target, dict):
            raise TypeError(f"{'.'.join(keys[:depth])} is not a mapping")
        if target.get(key) is None:
            target[key] = {}
        target = target[key]
        path.append(key)
    if not isinstance(target, dict):
        raise TypeError(f"{'.'.join(keys[:-1])} is not a mapping")
    target[keys[-1]] = value
    return (*path, keys[-1])


def _item_by_name(items: list[Any], name: str, where: str) -> int:
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == name:
            return index
    names = [str(i.get("name")) for i in items if isinstance(i, dict)]
    raise KeyError(f"no item named {name!r} at {where}{closest(name, names)}; names: {names}")


def closest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the nearest of ``choices``, or an empty string when none is near."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def validation_problems(
    located: Located, errors: Iterable[Mapping[str, Any]], model: type | None = None
) -> list[Problem]:
    """Pydantic's ``ValidationError.errors()`` as problems: the line of each error's key path (or the override that
    set it), the dotted path, what was expected and the value given. An unknown key suggests the closest key of
    ``model`` (the pydantic class validated) at that place; the branches of a union become one problem."""
    merged: dict[PathKey, list[Mapping[str, Any]]] = {}
    for error in errors:
        loc = tuple(part for part in error["loc"] if not _union_branch(part))
        merged.setdefault(loc, []).append(error)
    problems = []
    for loc, group in merged.items():
        label = ".".join(map(str, loc))
        message = _error_message(loc, group, model)
        # An override that set exactly this key already names it: `override 'train.bogus=1': unknown key 'bogus'`.
        labelled = f"{label}: {message}" if label and loc not in located.overrides else message
        problems.append(located.problem(loc, labelled))
    return problems


def _union_branch(part: Any) -> bool:
    # Pydantic names the branch of a union in the location: ('lora', 'target_modules', 'list[str]').
    return isinstance(part, str) and ("[" in part or part in _TYPE_NAMES)


_TYPE_NAMES = frozenset({"int", "float", "str", "bool", "none", "list", "dict", "tuple"})


def _error_message(loc: PathKey, group: list[Mapping[str, Any]], model: type | None) -> str:
    first = group[0]
    got = f"got {first['input']!r}" if "input" in first else ""
    if first["type"] == "extra_forbidden":
        keys = _keys_at(model, loc[:-1]) if model is not None else []
        hint = closest(str(loc[-1]), keys)
        listing = f"; expected one of: {', '.join(keys)}" if keys and not hint else ""
        return f"unknown key {loc[-1]!r}{hint}{listing}"
    if first["type"] == "missing":
        return "required, missing"
    if len(group) > 1:  # a union: each branch said what it wanted
        wanted = " or ".join(dict.fromkeys(e["msg"].removeprefix("Input should be ") for e in group))
        return f"expected {wanted}; {got}" if got else f"expected {wanted}"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] != "value_error" and got and not isinstance(first.get("input"), dict | list):
        message = f"{message} ({got})"
    return message


def _keys_at(model: Any, loc: PathKey) -> list[str]:
    """The field names of the pydantic model found at ``loc`` under ``model`` ([] when it is not a model)."""
    annotation: Any = model
    for part in loc:
        annotation = _inner(annotation, part)
        if annotation is None:
            return []
    found = _inner(annotation, None)
    return list(getattr(found, "model_fields", {}) or [])


def _inner(annotation: Any, part: str | int | None) -> Any:
    """Step into ``annotation`` by ``part`` (a field, a list index, a dict key); ``None`` unwraps unions only."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None) and (inner := _inner(arg, part)) is not None:
                return inner
        return None
    if part is None:  # the model itself, or the model of a list's items (a one-item list written as a mapping)
        if origin is list and typing.get_args(annotation):
            return _inner(typing.get_args(annotation)[0], None)
        return annotation if hasattr(annotation, "model_fields") else None
    fields = getattr(annotation, "model_fields", None)
    if isinstance(fields, dict):
        info = fields.get(part)
        return info.annotation if info is not None else None
    args = typing.get_args(annotation)
    if origin in (list, tuple) and isinstance(part, int) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def bool_slips(located: Located, model: Any) -> list[Problem]:
    """Booleans where ``model`` (a pydantic class) wants a number: pydantic reads ``rounds: true`` as 1, so a
    misplaced ``true`` would pass silently. One problem per such value, at its line (or override)."""
    problems: list[Problem] = []
    _walk_bools(located, located.data, model, (), problems)
    return problems


def _walk_bools(located: Located, data: Any, annotation: Any, path: PathKey, problems: list[Problem]) -> None:
    if isinstance(data, bool):
        if _wants_number(annotation):
            label = ".".join(map(str, path))
            problems.append(located.problem(path, f"{label}: expected a number, got {str(data).lower()}"))
        return
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        inner = _inner(annotation, key)
        if inner is not None:
            _walk_bools(located, value, inner, (*path, key), problems)


def _wants_number(annotation: Any) -> bool:
    kinds = (
        set(typing.get_args(annotation))
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else {annotation}
    )
    return bool(kinds & {int, float}) and bool not in kinds and Any not in kinds
