"""The report's plotting choice, measured: a training output of 10,000 logged steps (8 metrics) drawn three ways,
each page's size and the time headless Chromium takes to open it and take a screenshot (the blank-page time
subtracted; median of 5), as ratios to our page.

    ours       inline SVG from rlaif.report (min/max decimation to <= 1,200 points per series), no script
    svg-full   the same SVG with every point (no decimation)
    uplot      uPlot (a 51 KB canvas charting library) inlined with the data as JSON: one <script> per page

    .venv/bin/python bench/report_render.py [--uplot PATH/uPlot.iife.min.js] [--steps 10000]

uPlot is not a dependency: pass the file from its npm package (``npm pack uplot``) to include it; without it or
without ``chromium`` on PATH those rows are skipped and say so.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from rlaif.report import svg
from rlaif.report.build import render

METRICS = ("loss", "rewards/margins", "rewards/accuracies", "reward", "kl", "entropy", "learning_rate", "grad_norm")


def write_metrics(root: Path, steps: int) -> dict[str, list[float]]:
    root.mkdir(parents=True)
    series: dict[str, list[float]] = {m: [] for m in METRICS}
    with (root / "metrics.jsonl").open("w") as handle:
        for step in range(1, steps + 1):
            row = {m: math.sin(step / (40 + 7 * i)) + 0.3 * math.sin(step * 1.7 + i) for i, m in enumerate(METRICS)}
            for m, v in row.items():
                series[m].append(v)
            handle.write(json.dumps({"step": step, **row}) + "\n")
    return series


def uplot_page(library: str, series: dict[str, list[float]]) -> str:
    steps = list(range(1, len(next(iter(series.values()))) + 1))
    charts = "".join(
        f"new uPlot({{title:{json.dumps(m)},width:580,height:230,series:[{{}},{{stroke:'#2563eb'}}]}},"
        f"[D.x,D[{json.dumps(m)}]],document.getElementById('c{i}'));"
        for i, m in enumerate(series)
    )
    divs = "".join(f'<div id="c{i}"></div>' for i in range(len(series)))
    data = json.dumps({"x": steps, **{m: [round(v, 5) for v in vs] for m, vs in series.items()}})
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><script>{library}</script></head><body>{divs}"
        f"<script>const D={data};{charts}</script></body></html>"
    )


def open_seconds(chromium: str, page: Path, work: Path) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={work / 'profile'}",
             f"--screenshot={work / 'shot.png'}", "--window-size=1280,2000", page.resolve().as_uri()],
            capture_output=True, check=True, timeout=300,
        )  # fmt: skip
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--uplot", type=Path, help="uPlot.iife.min.js from the uplot npm package")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        series = write_metrics(work / "out", args.steps)
        pages: dict[str, tuple[Path, float]] = {}
        for name, build_page in (("ours", render), ("svg-full", _render_full)):
            start = time.perf_counter()
            html = build_page(work / "out")
            pages[name] = (work / f"{name}.html", time.perf_counter() - start)
            pages[name][0].write_text(html)
        if args.uplot:
            start = time.perf_counter()
            html = uplot_page(args.uplot.read_text(), series)
            pages["uplot"] = (work / "uplot.html", time.perf_counter() - start)
            pages["uplot"][0].write_text(html)
        blank = work / "blank.html"
        blank.write_text("<!DOCTYPE html><html><body></body></html>")
        base = open_seconds(chromium, blank, work) if chromium else None
        ours_size = pages["ours"][0].stat().st_size
        opened = (
            {n: open_seconds(chromium, p, work) - base for n, (p, _) in pages.items()} if chromium and base else {}
        )
        print(f"{args.steps:,} steps x {len(METRICS)} metrics; chromium: {'yes' if chromium else 'not on PATH'}")
        print(f"{'page':9} {'bytes':>10} {'size ratio':>10} {'build s':>8} {'open s':>7} {'open ratio':>10}")
        for name, (path, build) in pages.items():
            size = path.stat().st_size
            seconds = f"{opened[name]:7.2f}" if name in opened else f"{'-':>7}"
            ratio = f"{opened[name] / opened['ours']:10.2f}" if name in opened else f"{'-':>10}"
            print(f"{name:9} {size:10,} {size / ours_size:10.2f} {build:8.2f} {seconds} {ratio}")
        if not args.uplot:
            print("uplot: skipped (pass --uplot PATH/uPlot.iife.min.js)")


def _render_full(root: Path) -> str:
    """The page with decimation off: every logged point in the polylines."""
    original = svg.decimate
    svg.decimate = lambda xs, ys, limit=0: (list(xs), list(ys))  # type: ignore[assignment]
    try:
        return render(root)
    finally:
        svg.decimate = original


if __name__ == "__main__":
    main()
