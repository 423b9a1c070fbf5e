"""The ``ifeval`` verifier: each completion against its row's ``constraints`` (IFEval-family specs, see
rlaif.verifiers.constraints). Score = the fraction of constraints held; passed = all held; details = one
``{"type", "passed"}`` per constraint. A row whose specs are malformed (not a list, unknown type, bad arguments) is
unverifiable with reason "malformed constraints: ..."; a row with no constraints is unverifiable ("no
constraints")."""

from __future__ import annotations

from typing import Any

from rlaif.verifiers import Verdict
from rlaif.verifiers.constraints import parse, parse_constraints


def check_constraints(completion: str, constraints: Any) -> Verdict:
    """One completion against one row's constraints."""
    try:
        parsed = [parse(spec) for spec in parse_constraints(constraints)] if constraints is not None else []
    except ValueError as exc:
        return Verdict(None, None, f"malformed constraints: {exc}")
    if not parsed:
        return Verdict(None, None, "no constraints")
    text = completion or ""
    results = tuple({"type": c.type, "passed": c.check(text)} for c in parsed)
    held = sum(r["passed"] for r in results)
    return Verdict(held / len(results), held == len(results), None, results)


def verify_ifeval(prompts: list, completions: list[str], columns: dict[str, list]) -> list[Verdict]:
    """The ``ifeval`` verifier: each completion against its row's ``constraints``."""
    constraints = columns.get("constraints")
    if constraints is None:
        return [Verdict(None, None, "no constraints column") for _ in completions]
    return [check_constraints(c, spec) for c, spec in zip(completions, constraints, strict=True)]
