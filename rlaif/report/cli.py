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
    except Exception as exc:  # noqa: BLE001 - a file of an unexpected shape: say which run, no traceback
        typer.echo(f"error: {run_dir}: cannot draw the report: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"report: {path} ({path.stat().st_size / 1024:.0f} KiB)")


def report_line(root: Path) -> Path | None:
    """The end of ``rlaif run|train|loop``: write ``root/report.html`` and print where. Drawing it can never fail the
    run it describes: any error is a warning on stderr (and in the log), and the run's exit code stays its own."""
    import logging

    try:
        from rlaif.report.build import write_report

        path = write_report(Path(root))
    except Exception as exc:  # noqa: BLE001 - a broken report must not turn a finished run into a failed one
        logging.getLogger("rlaif.report").warning("report not written for %s: %s: %s", root, type(exc).__name__, exc)
        typer.echo(f"warning: report not written: {type(exc).__name__}: {exc}", err=True)
        return None
    typer.echo(f"report: {path}")
    return path
