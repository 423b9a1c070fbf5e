"""The DAG: topological order, cycle detection and the static column check, all before anything runs."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

from rlaif.config import Problem
from rlaif.steps.base import Step


def topological_order(upstream: Mapping[str, Sequence[str]]) -> tuple[list[str], list[str]]:
    """(order, names on a cycle). Ties keep file order, so runs and `rlaif show` are stable."""
    names = list(upstream)
    pending = {name: {u for u in upstream[name] if u in upstream} for name in names}
    order: list[str] = []
    while True:
        ready = [n for n in names if n in pending and not pending[n]]
        if not ready:
            break
        for name in ready:
            order.append(name)
            del pending[name]
        for deps in pending.values():
            deps.difference_update(ready)
    return order, [n for n in names if n in pending]


def check_columns(
    order: list[str],
    steps: Mapping[str, Step],
    upstream: Mapping[str, Sequence[str]],
    problem: Callable[[str, str], Problem],
    unknown_input: Collection[str] = (),
) -> tuple[dict[str, set[str] | None], list[Problem]]:
    """Columns available after each step; a problem for each step whose inputs no upstream provides.

    A join (several ``from``) sees the columns all its upstreams share. ``None`` means unknown (a Hub dataset):
    checks downstream of it are skipped, not guessed. Steps in ``unknown_input`` (fed by a step that could not be
    built) see unknown columns too, so a broken step gets one error, not one per step below it.
    """
    available: dict[str, set[str] | None] = {}
    problems = []
    for name in order:
        step = steps[name]
        columns: set[str] | None = None
        if upstream[name] or name in unknown_input:
            upstream_columns = [available.get(u) for u in upstream[name]]
            if name not in unknown_input and all(c is not None for c in upstream_columns):
                columns = set.intersection(*upstream_columns)  # type: ignore[arg-type]
            missing = step.required_columns() - columns if columns is not None else set()
            if missing:
                have = ", ".join(sorted(columns or [])) or "nothing"
                problems.append(
                    problem(
                        name,
                        f"step {name!r} needs column(s) {sorted(missing)}, but "
                        f"{', '.join(map(repr, upstream[name]))} produce(s) only: {have}",
                    )
                )
        try:
            available[name] = step.output_columns(columns if upstream[name] or name in unknown_input else set())
        except (OSError, ValueError) as exc:
            problems.append(problem(name, f"step {name!r}: {exc}"))
            available[name] = None
    return available, problems
