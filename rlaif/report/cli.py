"""``rlaif report RUN_DIR [-o report.html]`` (registered by rlaif/cli.py). Imports only typer at module level."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

RunDirArg = Annotated[
    Path, typer.Argument(help="A pipeline run (runs/NAME), a training output_dir, or a loop run directory.")
]
OutOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Where to write the page (default RUN_DIR/report.html).")
]


def report_command(run_dir: RunDirArg, output: OutOpt = None) -> None:
    """Write one self-contained HTML page (inline SVG, no script, opens offline) of a pipeline run, a training
    output or a loop output; which one is detected from the files in RUN_DIR."""
    from rlaif.report.build import ReportError, write_report

    try:
        path = write_report(run_dir, output)
    except ReportError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except OSError as exc:  # an unwritable output path, a file that vanished mid-read
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"report: {path} ({path.stat().st_size / 1024:.0f} KiB)")
