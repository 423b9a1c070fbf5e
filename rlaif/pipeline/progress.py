"""Progress bars per step (with ETA when the input size is known) and the summary table at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class Reporter:
    """``enabled=False`` is silent (library use); ``bars=False`` keeps the summary but drops the live bars."""

    def __init__(self, enabled: bool = True, console: Console | None = None, bars: bool = True) -> None:
        self.enabled = enabled
        self.bars = bars
        self.console = console or Console(stderr=True)

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
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task(name, total=total)
            yield lambda count: progress.advance(task, count)

    def cached(self, name: str, stats: dict[str, Any]) -> None:
        if self.enabled:
            self.console.print(f"[bold]{name:<20}[/bold] cached ({stats['records_out']} records)")

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def summary(self, stats: dict[str, dict[str, Any]]) -> None:
        if self.enabled:
            self.console.print(summary_table(stats))


def summary_table(stats: dict[str, dict[str, Any]]) -> Table:
    table = Table("step", "in", "out", "dropped", "quarantined", "tokens in/out", "s", "rec/s", title="run summary")
    for name, s in stats.items():
        table.add_row(
            name + (" (cached)" if s.get("cached") else ""),
            str(s["records_in"]),
            str(s["records_out"]),
            _reasons(s["dropped"]),
            _reasons(s["quarantined"]),
            f"{s['tokens_in']}/{s['tokens_out']}",
            f"{s['wall_s']:.1f}",
            str(s.get("records_per_s") or "-"),
        )
    return table


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in counts.items()) or "0"
