"""Value checks of a pipeline file that need no step or model built: backend options typed against their
constructors and range-checked, plain values typed, bools where a step parameter wants a number, and the closest
registry name for a typo. Each returns ``(key path, message)`` pairs; ``spec`` places them at file:line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from pydantic import BaseModel, TypeAdapter, ValidationError

from rlaif.backends.server_pool import display_url
from rlaif.config import closest

# Ranges of backend options (their types come from the backend constructor's annotations).
OPTION_BOUNDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "gpu_memory_utilization": (lambda v: 0 < v <= 1, "a fraction in (0, 1] of the device memory"),
    # vLLM's CPU build reads VLLM_CPU_KVCACHE_SPACE with int(): 0.25 passed here and failed inside the engine.
    "kv_cache_gib": (lambda v: v >= 1 and float(v).is_integer(), "a whole number of GiB >= 1 (vLLM's CPU build)"),
    "max_model_len": (lambda v: v >= 1, ">= 1 (tokens)"),
    "max_lora_rank": (lambda v: v >= 1, ">= 1"),
    "max_loras": (lambda v: v >= 1, ">= 1"),
    "max_restarts": (lambda v: v >= 0, ">= 0"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "max_concurrency": (lambda v: v >= 1, ">= 1"),
    "max_retries": (lambda v: v >= 1, ">= 1 (attempts per record, the first included)"),
    "timeout_s": (lambda v: v > 0, "> 0 (seconds)"),
    "backoff_base_s": (lambda v: v >= 0, ">= 0 (seconds)"),
    "backoff_max_s": (lambda v: v >= 0, ">= 0 (seconds)"),
    "max_failures": (lambda v: v >= 1, ">= 1 (failed requests in a row that take a server out)"),
    "cooldown_s": (lambda v: v >= 0, ">= 0 (seconds)"),
}
# The plain values of a pipeline file and what each must be (sections, steps and models check their own).
VALUE_TYPES: dict[tuple[str, ...], tuple[tuple[type, ...], str]] = {
    ("seed",): ((int,), "an integer"),
    ("description",): ((str, type(None)), "a string"),
    ("output", "save"): ((str, type(None)), "a directory path or null"),
    ("output", "jsonl"): ((bool,), "true or false"),
    ("output", "steps"): ((list, type(None)), "a list of step names"),
    ("output", "push_to_hub", "private"): ((bool,), "true or false"),
    ("output", "push_to_hub", "split"): ((str,), "a split name (e.g. train)"),
}


def with_hint(message: str, name: Any, registry: dict[str, str]) -> str:
    """A registry's "unknown NAME; known: ..." with the closest known name after NAME (not for dotted plugin paths)."""
    if not isinstance(name, str) or name in registry or "." in name:
        return message
    return message.replace(f"{name!r};", f"{name!r}{closest(name, list(registry))};", 1)


def _admits_bool(annotation: Any) -> bool:
    args = get_args(annotation)
    if args and get_origin(annotation) is not Literal:
        return any(_admits_bool(arg) for arg in args)
    return annotation in (bool, Any) or get_origin(annotation) is Literal and any(isinstance(a, bool) for a in args)


def _type_name(hint: Any) -> str:
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint).replace("typing.", ""))


def _constructor_hints(cls: type) -> dict[str, Any]:
    try:
        return get_type_hints(cls.__init__)
    except (NameError, TypeError):  # an annotation that names a type only imported for type checking: skip typing
        return {}


def option_problems(cls: type, options: dict[str, Any]) -> list[tuple[str, str]]:
    """Each backend option typed against its constructor's annotation, and counts and fractions in range."""
    hints = _constructor_hints(cls)
    problems = []
    for key, value in options.items():
        if key not in hints:
            continue
        try:
            TypeAdapter(hints[key]).validate_python(value, strict=True)
        except ValidationError:
            problems.append((key, f"{key} must be {_expected(hints[key])}, got {value!r}"))
            continue
        bound = OPTION_BOUNDS.get(key)
        if bound is not None and value is not None and not bound[0](value):
            problems.append((key, f"{key} must be {bound[1]}, got {value!r}"))
    if "base_url" in hints and "base_url" not in {key for key, _ in problems}:  # the openai backend: a URL or a pool
        problems += server_problems(options)
    return problems


def server_problems(options: dict[str, Any]) -> list[tuple[str, str]]:
    """``base_url``: an http(s) URL, or a non-empty list of distinct ones (a pool of servers of one model). Items
    that are not strings are left to the type check; the message names the item of a list by its index."""
    value = options.get("base_url")
    if isinstance(value, list) and not value:
        return [("base_url", "base_url is an empty list; give a server URL or a list of them")]
    urls = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    problems, seen = [], {}
    for i, url in enumerate(urls):
        if not isinstance(url, str):
            continue
        label, key = "base_url" if isinstance(value, str) else f"base_url[{i}]", url.rstrip("/")
        if problem := _url_problem(url):
            problems.append(("base_url", f"{label}: {problem}"))
        elif key in seen:
            problems.append(("base_url", f"{label}: {display_url(url)!r} is listed twice (as base_url[{seen[key]}])"))
        seen.setdefault(key, i)
    return problems


def _url_problem(url: str) -> str | None:
    expected = "expected an http:// or https:// server URL such as http://127.0.0.1:8000/v1"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError as exc:
        return f"{display_url(url)!r} is not a URL ({exc}); {expected}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"got {display_url(url)!r}; {expected}"
    return None


def bool_problems(params: type[BaseModel], values: dict[str, Any]) -> list[tuple[str, str]]:
    """``n: true`` is a YAML slip pydantic would take as 1: a bool where the field takes no bool is an error."""
    problems = []
    for key, value in values.items():
        info = params.model_fields.get(key)
        if isinstance(value, bool) and info is not None and not _admits_bool(info.annotation):
            problems.append((key, f"{key}: expected {_expected(info.annotation)}, got {value!r}"))
    return problems


def value_problems(data: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """The plain values of ``VALUE_TYPES`` that are present and of the wrong type (a bool is not an integer)."""
    problems = []
    for path, (kinds, expected) in VALUE_TYPES.items():
        value: Any = data
        for key in path:
            value = value.get(key, ...) if isinstance(value, dict) else ...
        wrong = isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds)
        if value is not ... and wrong:
            problems.append((path, f"{'.'.join(path)} must be {expected}, got {value!r}"))
    return problems


def _expected(annotation: Any) -> str:
    return " or ".join(_type_name(a) for a in (get_args(annotation) or (annotation,)))
