"""Which kind of output a directory is, and the page for it.

pipeline run   stats.json + steps/          (rlaif run)
training       metrics.jsonl                (rlaif train; round-K/train of a loop)
loop           summary.json (+ round-K/)    (rlaif loop)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Literal

from rlaif.report.loop import loop_sections
from rlaif.report.page import render_page
from rlaif.report.pipeline import pipeline_sections
from rlaif.report.runfiles import RunFiles
from rlaif.report.training import training_sections

log = logging.getLogger(__name__)
Kind = Literal["pipeline", "training", "loop"]
REPORT_NAME = "report.html"


class ReportError(Exception):
    """The directory is not an output rlaif can report on, or one of its files cannot be read."""


def detect(root: Path) -> Kind:
    if not root.exists():
        raise ReportError(f"{root}: no such directory")
    if not root.is_dir():
        raise ReportError(f"{root}: not a directory (name a run, training output or loop directory)")
    if (root / "summary.json").is_file():
        return "loop"
    if (root / "stats.json").is_file() and (root / "steps").is_dir():
        return "pipeline"
    if (root / "metrics.jsonl").is_file():
        return "training"
    raise ReportError(
        f"{root}: not an rlaif output; expected a pipeline run (stats.json and steps/), a training output "
        "(metrics.jsonl) or a loop output (summary.json)"
    )


def render(root: Path) -> str:
    """The report page of ``root`` as HTML text."""
    kind = detect(root)
    if kind == "pipeline":
        run = _files(root)
        return render_page(f"Pipeline run: {run.name}", str(root), pipeline_sections(run))
    if kind == "training":
        return render_page(f"Training: {root.name}", str(root), training_sections(root))
    rows = _json(root / "summary.json")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ReportError(f"{root / 'summary.json'}: expected a JSON list of round objects")
    return render_page(f"Loop: {root.name}", str(root), loop_sections(root, rows))


def write_report(root: Path, out: Path | None = None) -> Path:
    """Write the report of ``root`` to ``out`` (default ``root/report.html``), atomically; returns the path."""
    html = render(root)
    target = out or root / REPORT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, target)
    return target


def report_after(root: Path | None) -> Path | None:
    """For the end of ``rlaif run|train|loop``: write ``root/report.html``; any failure is a logged warning, never
    an error, so a report can never fail the run it describes."""
    if root is None:
        return None
    try:
        return write_report(Path(root))
    except Exception as exc:  # noqa: BLE001 - a broken report must not turn a finished run into a failed one
        log.warning("report: could not write %s/%s: %s: %s", root, REPORT_NAME, type(exc).__name__, exc)
        return None


def _files(root: Path) -> RunFiles:
    try:
        run = RunFiles(root)
    except (OSError, ValueError) as exc:
        raise ReportError(f"{root / 'stats.json'}: cannot read: {exc}") from exc
    if not isinstance(run.stats, dict) or not all(isinstance(s, dict) for s in run.stats.values()):
        raise ReportError(f"{root / 'stats.json'}: expected a JSON object of steps, each an object of totals")
    return run


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: cannot read as JSON: {exc}") from exc
