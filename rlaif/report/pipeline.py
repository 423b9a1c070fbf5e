"""A pipeline run's sections: steps and the funnel, why records left, tokens and time, samples, then the panels of
the steps that have one (judges, verifiers, pairs, scores: rlaif.report.panels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from rlaif.report import panels
from rlaif.report.dag import dag_svg
from rlaif.report.page import Section, esc, grid, note, record_block, table
from rlaif.report.runfiles import RunFiles
from rlaif.report.svg import bar_chart

SAMPLES = 3  # records shown per step (outputs, drops, quarantine)


def pipeline_sections(run: RunFiles, prefix: str = "") -> list[Section]:
    """Every section of a pipeline run; ``prefix`` keeps anchors unique when several runs share a page."""
    sections = [
        Section(f"{prefix}steps", "Steps and funnel", _steps(run)),
        Section(f"{prefix}reasons", "Dropped and quarantined", _reasons(run)),
        Section(f"{prefix}cost", "Tokens and time", _cost(run)),
        Section(f"{prefix}samples", "Sample records", _samples(run)),
    ]
    optional = [
        (f"{prefix}judges", "Judges", panels.judge_panels(run)),
        (f"{prefix}verifiers", "Verifiers", panels.verifier_panels(run)),
        (f"{prefix}pairs", "Pairs: length bias", panels.length_panels(run)),
        (f"{prefix}scores", "Scores and ratings", panels.score_panels(run)),
    ]
    return sections + [Section(sid, title, body) for sid, title, body in optional if body]


def funnel_rows(stats: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """One row per step: name, type, in, out, dropped, quarantined, tokens in, tokens out, seconds, cached."""
    rows = []
    for name, s in stats.items():
        rows.append(
            [
                name,
                s.get("type", "?"),
                s.get("records_in", 0),
                s.get("records_out", 0),
                sum((s.get("dropped") or {}).values()),
                sum((s.get("quarantined") or {}).values()),
                s.get("tokens_in", 0),
                s.get("tokens_out", 0),
                float(s.get("wall_s", 0.0)),
                "yes" if s.get("cached") else "",
            ]
        )
    return rows


def _steps(run: RunFiles) -> str:
    rows = funnel_rows(run.stats)
    names = [r[0] for r in rows]
    funnel = bar_chart(
        "records per step: kept / dropped / quarantined",
        names,
        [("kept", [r[3] for r in rows]), ("dropped", [r[4] for r in rows]), ("quarantined", [r[5] for r in rows])],
    )
    headers = ["step", "type", "in", "out", "dropped", "quarantined", "tokens in", "tokens out", "seconds", "cached"]
    types = {r[0]: r[1] for r in rows}
    saved = _saved_rows(run.root)
    saved_text = "; ".join(f"{path}: {n:,} rows" for path, n in saved.items()) or "no dataset in the run directory"
    return (
        table(headers, rows, numeric=range(2, 9))
        + note(f"saved: {saved_text}")
        + f'<div class="grid"><div>{dag_svg(run.edges(), types, run.stats)}</div>'
        + f"<div>{funnel}</div></div>"
    )


def _saved_rows(root: Path) -> dict[str, int]:
    found = {}
    for data in sorted((root / "dataset").glob("**/data")):
        files = list(data.glob("*.parquet"))
        if files:
            rel = str(data.parent.relative_to(root))
            found[rel] = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return found


def _reasons(run: RunFiles) -> str:
    rows = []
    for name, s in run.stats.items():
        rows += [[name, "dropped", reason, n] for reason, n in (s.get("dropped") or {}).items()]
        rows += [[name, "quarantined", reason, n] for reason, n in (s.get("quarantined") or {}).items()]
    if not rows:
        return note("Every record that entered a step left it: nothing dropped, nothing quarantined.")
    rows.sort(key=lambda r: -r[3])
    labels = [f"{r[0]}: {r[2]}" for r in rows[:15]]
    chart = bar_chart("records lost, by step and reason", labels, [("records", [r[3] for r in rows[:15]])])
    parts = [table(["step", "kind", "reason", "records"], rows, numeric=[3]), grid([chart])]
    for name, s in run.stats.items():
        if sum((s.get("quarantined") or {}).values()):
            examples = run.quarantine_examples(name, SAMPLES)
            blocks = "".join(record_block(e, f"{e.get('reason')}: {e.get('detail') or ''}") for e in examples)
            parts.append(f"<details><summary>{esc(name)}: quarantined examples</summary>{blocks}</details>")
        if sum((s.get("dropped") or {}).values()):
            examples = run.dropped_examples(name, SAMPLES)
            blocks = "".join(record_block(e["record"], str(e["reason"])) for e in examples)
            parts.append(f"<details><summary>{esc(name)}: dropped examples</summary>{blocks}</details>")
    return "".join(parts)


def _cost(run: RunFiles) -> str:
    rows = funnel_rows(run.stats)
    names = [r[0] for r in rows]
    charts = [bar_chart("seconds per step (cached steps: 0)", names, [("seconds", [r[8] for r in rows])])]
    if any(r[6] or r[7] for r in rows):
        charts.append(
            bar_chart(
                "tokens per step: prompt / generated",
                names,
                [("in", [r[6] for r in rows]), ("out", [r[7] for r in rows])],
            )
        )
    total_s = sum(r[8] for r in rows)
    totals = (
        f"total: {sum(r[6] for r in rows):,} prompt tokens, {sum(r[7] for r in rows):,} generated, {total_s:.1f} s"
    )
    return grid(charts) + note(totals) + _usage(run.stats)


def _usage(stats: dict[str, dict[str, Any]]) -> str:
    """Tokens and cost per model and step (the ``models`` of each step's stats, rlaif.pipeline.budget), a total per
    model, and the budget that stopped the run, if one did."""
    rows: list[list[Any]] = []
    totals: dict[str, list[Any]] = {}
    for name, s in stats.items():
        models = s.get("models")
        for model, e in models.items() if isinstance(models, dict) else ():
            if not isinstance(e, dict):
                continue
            cost = e.get("cost_usd")
            rows.append([name, model, int(e.get("tokens_in", 0)), int(e.get("tokens_out", 0)), cost])
            total = totals.setdefault(model, ["all steps", model, 0, 0, None])
            total[2], total[3] = total[2] + rows[-1][2], total[3] + rows[-1][3]
            if isinstance(cost, int | float):
                total[4] = (total[4] or 0.0) + cost
    if not rows:
        return ""
    shown = [[*r[:4], _usd(r[4])] for r in [*rows, *totals.values()]]
    parts = [table(["step", "model", "tokens in", "tokens out", "cost (USD)"], shown, numeric=[2, 3, 4])]
    for name, s in stats.items():
        stop = s.get("budget_stop")
        if isinstance(stop, dict):
            parts.append(
                note(
                    f"stopped at a budget in step {name}: model {stop.get('model')} reached {stop.get('kind')} "
                    f"{stop.get('limit')} (spent {stop.get('spent')}); the steps after it did not run",
                    "warn",
                )
            )
    return "".join(parts)


def _samples(run: RunFiles) -> str:
    parts = []
    for name in run.stats:
        records = run.first_rows(name, SAMPLES)
        if records:
            blocks = "".join(record_block(r, f"record {i + 1}") for i, r in enumerate(records))
            parts.append(f"<details><summary>{esc(name)}: first {len(records)} records</summary>{blocks}</details>")
    return "".join(parts) or note("No step has output records.")


def _usd(amount: Any) -> str:
    # As rlaif.pipeline.budget.usd (this layer reads files and imports no pipeline code).
    if not isinstance(amount, int | float):
        return "-"
    return f"{amount:,.2f}" if amount >= 1 else f"{amount:.6f}"
