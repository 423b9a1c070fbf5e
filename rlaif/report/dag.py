"""The step DAG as an SVG: one row per depth (longest path from a source), top to bottom, each box with the step's
name, type and record counts (in → out, dropped, quarantined)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from rlaif.report.svg import AXIS, INK

BOX_W, BOX_H, GAP_X, GAP_Y = 200, 46, 24, 26


def depths(edges: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Depth of each step: 0 for a source, else 1 + the deepest upstream. Unknown upstream names count as sources;
    a cycle (never in a run that validated) is cut rather than looped on."""
    found: dict[str, int] = {}

    def depth(name: str, seen: frozenset[str]) -> int:
        if name in found:
            return found[name]
        ups = [u for u in edges.get(name, ()) if u in edges and u not in seen]
        found[name] = 1 + max((depth(u, seen | {name}) for u in ups), default=-1)
        return found[name]

    for name in edges:
        depth(name, frozenset())
    return found


def dag_svg(
    edges: Mapping[str, Sequence[str]], types: Mapping[str, str], stats: Mapping[str, Mapping[str, Any]]
) -> str:
    """``edges``: step -> its upstream steps, in pipeline order."""
    level = depths(edges)
    rows: dict[int, list[str]] = {}
    for name in edges:
        rows.setdefault(level[name], []).append(name)
    widest = max((len(r) for r in rows.values()), default=1)
    width = widest * (BOX_W + GAP_X) + GAP_X
    height = len(rows) * (BOX_H + GAP_Y) + GAP_Y
    where: dict[str, tuple[float, float]] = {}
    for d, names in rows.items():
        offset = (width - len(names) * (BOX_W + GAP_X) + GAP_X) / 2
        for i, name in enumerate(names):
            where[name] = (offset + i * (BOX_W + GAP_X), GAP_Y / 2 + d * (BOX_H + GAP_Y))
    body = []
    for name, ups in edges.items():
        x, y = where[name]
        for up in ups:
            if up in where:
                ux, uy = where[up]
                body.append(
                    f'<path d="M{ux + BOX_W / 2:.0f},{uy + BOX_H} C{ux + BOX_W / 2:.0f},{uy + BOX_H + GAP_Y / 2} '
                    f'{x + BOX_W / 2:.0f},{y - GAP_Y / 2} {x + BOX_W / 2:.0f},{y}" fill="none" stroke="{AXIS}" '
                    f'marker-end="url(#arrow)"/>'
                )
    for name in edges:
        body.append(_box(name, types.get(name, "?"), stats.get(name, {}), *where[name]))
    defs = (
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
        f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{AXIS}"/></marker></defs>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" '
        f'height="{height:.0f}" role="img" aria-label="step DAG" font-family="system-ui,sans-serif" font-size="11">'
        f"<title>step DAG</title>{defs}{''.join(body)}</svg>"
    )


def _box(name: str, step_type: str, stats: Mapping[str, Any], x: float, y: float) -> str:
    dropped = sum((stats.get("dropped") or {}).values())
    quarantined = sum((stats.get("quarantined") or {}).values())
    fill = "#fef2f2" if quarantined else "#fff7ed" if dropped else "#eff6ff"
    counts = f"{stats.get('records_in', '?')} → {stats.get('records_out', '?')}"
    extra = (f"  −{dropped} dropped" if dropped else "") + (f"  ⚠{quarantined} quar." if quarantined else "")
    cached = " (cached)" if stats.get("cached") else ""
    return (
        f"<g><title>{escape(name)} ({escape(step_type)}){escape(cached)}</title>"
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="5" fill="{fill}" stroke="{AXIS}"/>'
        f'<text x="{x + 8:.0f}" y="{y + 15:.0f}" font-weight="600" fill="{INK}">{escape(name[:24])}'
        f'<tspan font-weight="400" fill="{AXIS}"> {escape(step_type[:22])}</tspan></text>'
        f'<text x="{x + 8:.0f}" y="{y + 31:.0f}" fill="{INK}">{escape(counts)}{escape(extra)}</text></g>'
    )
