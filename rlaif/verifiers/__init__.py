"""Verifiers: checkable rewards, pure Python (no torch, no transformers) — IFEval-family constraints, math final
answers, exact and regex matches, and user verifiers by dotted path. Used by pipeline steps (verify, pairs) and by
trainers (PPO's ``reward: {verifier: NAME}``) alike.

Two conventions:

- :func:`verify` returns one :class:`Verdict` per completion (score, passed, why it could not be checked, and the
  per-constraint results for ``ifeval``);
- :func:`reward_function` returns the same verifier in the PPO reward-function convention
  ``fn(prompts, completions, **columns) -> list[float | None]`` (None: unverifiable).

Builtins read these columns: ``ifeval`` reads ``constraints`` (a list of specs ``{"type": ..., **args}`` or a JSON
string of that list), ``math`` and ``exact`` read ``answer``, ``regex`` reads ``pattern``. A caller maps its own
column names onto these before calling.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from math import isfinite  # not `import math`: the submodule rlaif.verifiers.math takes that name here
from typing import Any

__all__ = ["VERIFIERS", "Verdict", "reward_function", "verifier_problem", "verify"]


@dataclass(frozen=True)
class Verdict:
    """One completion's grade. ``score`` in [0, 1], or None when the completion cannot be checked (``reason`` says
    why, e.g. "no final answer", "malformed constraints"); ``passed`` is None when unverifiable or when the score is
    not a pass/fail. ``details``: per-constraint results ``{"type": ..., "passed": bool}`` (ifeval)."""

    score: float | None
    passed: bool | None
    reason: str | None = None
    details: tuple[dict, ...] = ()


# Builtin verifiers: name -> "module:function", each function ``fn(prompts, completions, columns) -> list[Verdict]``.
VERIFIERS: dict[str, str] = {
    "ifeval": "rlaif.verifiers.ifeval:verify_ifeval",
    "math": "rlaif.verifiers.math:verify_math",
    "exact": "rlaif.verifiers.match:verify_exact",
    "regex": "rlaif.verifiers.match:verify_regex",
}
# The column each builtin verifier reads (callers map their own column names onto these).
READS: dict[str, str] = {"ifeval": "constraints", "math": "answer", "exact": "answer", "regex": "pattern"}


def _did_you_mean(name: str) -> str:
    match = difflib.get_close_matches(name, list(VERIFIERS), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _user_function(name: str) -> Callable[..., Any]:
    module_name, _, attr = name.rpartition(".")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise TypeError(f"{name} is not callable")
    return fn


def verifier_problem(name: str) -> str | None:
    """Why ``name`` names no verifier (an unknown builtin, with a did-you-mean; an unimportable dotted path), or
    None when it resolves. Imports the user's module, never calls it."""
    if name in VERIFIERS:
        return None
    if "." not in name:
        return f"unknown verifier {name!r}{_did_you_mean(name)}; known: {', '.join(sorted(VERIFIERS))}"
    try:
        _user_function(name)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        return f"cannot import verifier {name!r}: {exc}"
    return None


def _builtin(name: str) -> Callable[[list, list[str], dict[str, list]], list[Verdict]]:
    module_name, _, attr = VERIFIERS[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _wrap_scores(name: str, scores: Any, n: int) -> list[Verdict]:
    values = list(scores)
    if len(values) != n:
        raise ValueError(f"verifier {name} returned {len(values)} scores for {n} completions")
    if bad := [v for v in values if v is not None and not (isinstance(v, int | float) and isfinite(v))]:
        raise ValueError(f"verifier {name} returned {bad[0]!r}: expected a finite number or None per completion")
    binary = all(v is None or v in (0, 1) for v in values)
    verdicts = []
    for value in values:
        if value is None:
            verdicts.append(Verdict(None, None, "unverifiable"))
        else:
            score = float(value)
            verdicts.append(Verdict(score, (score == 1.0) if binary else None))
    return verdicts


def verify(name: str, prompts: list, completions: list[str], columns: dict[str, list]) -> list[Verdict]:
    """One :class:`Verdict` per completion from the builtin verifier ``name`` or the user function at the dotted path
    ``name`` (called as ``fn(prompts, completions, **columns) -> list[float | None]``; its scores are wrapped, with
    ``passed`` set only when every score is 0 or 1). ``columns``: per-completion lists, aligned with ``completions``.
    """
    if problem := verifier_problem(name):
        raise ValueError(problem)
    if name in VERIFIERS:
        return _builtin(name)(list(prompts), list(completions), dict(columns))
    scores = _user_function(name)(list(prompts), list(completions), **columns)
    return _wrap_scores(name, scores, len(completions))


def reward_function(name: str) -> Callable[..., list[float | None]]:
    """The verifier ``name`` in the PPO reward-function convention: ``fn(prompts, completions, **columns) ->
    list[float | None]`` (the verdicts' scores; None = unverifiable, the trainer decides what that is worth)."""
    if problem := verifier_problem(name):
        raise ValueError(problem)

    def reward(prompts: list, completions: list[str], **columns: Any) -> list[float | None]:
        return [v.score for v in verify(name, prompts, completions, columns)]

    reward.__name__ = f"verifier_{name.rpartition('.')[2]}"
    reward.__doc__ = f"The {name!r} verifier as a reward function (None: unverifiable)."
    return reward
