"""Progress bars per step (with ETA when the input size is known) and the summary table at the end.

Bars and notes are status (stderr by default); the summary is a result (the console given, stdout in the CLI). The
summary fits 80 columns: counts in the table, each drop and quarantine reason as a line under it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text


class Reporter:
    """``enabled=False`` is silent (library use); ``bars=False`` keeps the summary but drops the live bars;
    ``notes=False`` drops the notes (cached steps, retries) too. ``status`` takes bars and notes (default: stderr),
    ``console`` the summary (default: the status console)."""

    def __init__(
        self,
        enabled: bool = True,
        console: Console | None = None,
        bars: bool = True,
        status: Console | None = None,
        notes: bool = True,
    ) -> None:
        self.enabled = enabled
        self.bars = bars
        self.notes = notes
        self.status = status or console or Console(stderr=True)
        self.console = console or self.status

    @contextmanager
    def step(self, name: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if not (self.enabled and self.bars):
            yield lambda _count: None
            return
        columns = [
            TextColumn(f"[bold]{name:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.status, transient=False) as progress:
            task = progress.add_task(name, total=total)
            yield lambda count: progress.advance(task, count)

    def cached(self, name: str, stats: dict[str, Any]) -> None:
        if self.enabled and self.notes:
            self.status.print(f"[bold]{name:<20}[/bold] cached ({records(stats['records_out'])})")

    def note(self, text: str) -> None:
        if self.enabled and self.notes:
            self.status.print(text, highlight=False, markup=False, soft_wrap=True)

    def summary(self, stats: dict[str, dict[str, Any]]) -> None:
        if self.enabled:
            self.console.print(summary_view(stats))


def records(count: int) -> str:
    return f"{count} record{'' if count == 1 else 's'}"


def summary_table(stats: dict[str, dict[str, Any]]) -> Table:
    """Counts per step (records, tokens in thousands above 10k); a cached step shows ``cached`` for its time."""
    table = Table(title="run summary", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0))
    for header in ("step", "in", "out", "dropped", "quarantined", "tokens in/out", "s", "rec/s"):
        step = header == "step"
        table.add_column(
            header,
            justify="left" if step else "right",
            overflow="fold",
            no_wrap=not step,
            min_width=12 if step else None,
        )
    for name, s in stats.items():
        table.add_row(
            name,
            str(s["records_in"]),
            str(s["records_out"]),
            str(sum(s["dropped"].values())),
            str(sum(s["quarantined"].values())),
            f"{_tokens(s['tokens_in'])}/{_tokens(s['tokens_out'])}",
            "cached" if s.get("cached") else f"{s['wall_s']:.1f}",
            str(s.get("records_per_s") or "-"),
        )
    return table


def _tokens(count: int) -> str:
    if count < 10_000:
        return str(count)
    return f"{count / 1e6:.1f}M" if count >= 1_000_000 else f"{count // 1000}k"


def reason_lines(stats: dict[str, dict[str, Any]]) -> list[str]:
    """One line per step and reason: ``dropped by judged: length ratio: 4 records``."""
    lines = []
    for kind in ("dropped", "quarantined"):
        for name, s in stats.items():
            lines += [f"{kind} by {name}: {reason}: {records(n)}" for reason, n in s[kind].items()]
    return lines


def summary_view(stats: dict[str, dict[str, Any]]) -> Group:
    """The table, then the reasons as a list (a reason is free text: in a cell it wraps into tall rows)."""
    return Group(summary_table(stats), *(Text(line) for line in reason_lines(stats)))
