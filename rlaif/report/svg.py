"""Charts as inline SVG strings, drawn in Python: the page needs no script, no network and no plotting package.

Every text that reaches a chart (titles, labels, legend names) is escaped here. Long series are thinned to at most
``MAX_POINTS`` per series by keeping, per x bucket, the first, lowest, highest and last point (min/max decimation):
spikes survive, and a 10k-step run costs the page the same as a 1k-step one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#dc2626", "#7c3aed", "#0891b2", "#ca8a04", "#db2777", "#4b5563")
GRID, AXIS, INK = "#e5e7eb", "#9ca3af", "#111827"
MAX_POINTS = 1200  # per series, after decimation: about two per horizontal pixel of a chart
WIDTH, HEIGHT = 580, 230
PAD_L, PAD_R, PAD_T, PAD_B = 56, 12, 26, 36


@dataclass(frozen=True)
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def fmt(value: float) -> str:
    """A tick or value label: short, and exact for small integers."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.2g}"
    if float(value).is_integer():
        return f"{int(value)}"
    return f"{value:.3g}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round-numbered ticks covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(1, count)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= m * step)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def decimate(xs: Sequence[float], ys: Sequence[float], limit: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """At most ~``limit`` points: per bucket of x, its first, min, max and last point in x order."""
    if len(xs) <= limit:
        return list(xs), list(ys)
    buckets = max(1, limit // 4)
    lo, hi = xs[0], xs[-1]
    width = (hi - lo) / buckets or 1.0
    out: list[tuple[float, float]] = []
    start = 0
    for b in range(buckets):
        end = start
        edge = lo + (b + 1) * width
        while end < len(xs) and (xs[end] <= edge or b == buckets - 1):
            end += 1
        if end > start:
            chunk = list(range(start, end))
            keep = sorted({chunk[0], chunk[-1], min(chunk, key=lambda i: ys[i]), max(chunk, key=lambda i: ys[i])})
            out += [(xs[i], ys[i]) for i in keep]
        start = end
    return [x for x, _ in out], [y for _, y in out]


def _frame(title: str, width: int, height: int, body: list[str]) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}" font-family="system-ui,sans-serif" font-size="11">'
        f"<title>{escape(title)}</title>"
        f'<text x="{PAD_L}" y="15" font-size="13" font-weight="600" fill="{INK}">{escape(title)}</text>'
    )
    return head + "".join(body) + "</svg>"


def _axes(xt: list[float], yt: list[float], sx, sy, width: int, height: int, x_label: str, y_label: str) -> list[str]:
    out = []
    for t in yt:
        y = sy(t)
        out.append(f'<line x1="{PAD_L}" x2="{width - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
        out.append(f'<text x="{PAD_L - 4}" y="{y + 3:.1f}" text-anchor="end" fill="{AXIS}">{escape(fmt(t))}</text>')
    for t in xt:
        x = sx(t)
        out.append(
            f'<text x="{x:.1f}" y="{height - PAD_B + 13}" text-anchor="middle" fill="{AXIS}">{escape(fmt(t))}</text>'
        )
    out.append(
        f'<line x1="{PAD_L}" x2="{width - PAD_R}" y1="{height - PAD_B}" y2="{height - PAD_B}" stroke="{AXIS}"/>'
    )
    if x_label:
        out.append(
            f'<text x="{(PAD_L + width - PAD_R) / 2:.0f}" y="{height - 6}" text-anchor="middle" '
            f'fill="{AXIS}">{escape(x_label)}</text>'
        )
    if y_label:
        out.append(
            f'<text x="12" y="{(PAD_T + height - PAD_B) / 2:.0f}" text-anchor="middle" fill="{AXIS}" '
            f'transform="rotate(-90 12 {(PAD_T + height - PAD_B) / 2:.0f})">{escape(y_label)}</text>'
        )
    return out


def _legend(names: list[str], y: float = 28) -> list[str]:
    """Coloured keys in one row under the title (never over it)."""
    out, x = [], float(PAD_L)
    for i, name in enumerate(names):
        label = name[:40]
        out.append(f'<rect x="{x:.0f}" y="{y - 9:.0f}" width="10" height="10" fill="{colour(i)}"/>')
        out.append(f'<text x="{x + 13:.0f}" y="{y:.0f}" fill="{INK}">{escape(label)}</text>')
        x += 6.5 * len(label) + 26
    return out


def compact(value: float) -> str:
    """A bar's value label: 24.5k, 1.2M, 0.013."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g}k"
    return fmt(value)


def _scale(lo: float, hi: float, a: float, b: float):
    span = (hi - lo) or 1.0
    return lambda v: a + (v - lo) * (b - a) / span


def line_chart(
    title: str,
    series: Sequence[Series],
    x_label: str = "step",
    y_label: str = "",
    marks: Sequence[float] = (),
    y_range: tuple[float, float] | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """Lines over x (a single point is drawn as a dot). ``marks``: dashed vertical lines (a resumed run's start)."""
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys, strict=True) if math.isfinite(y)]
    if not points:
        return _frame(title, width, 60, [f'<text x="{PAD_L}" y="40" fill="{AXIS}">no values</text>'])
    xt = nice_ticks(min(p[0] for p in points), max(p[0] for p in points))
    yt = nice_ticks(*(y_range or (min(p[1] for p in points), max(p[1] for p in points))))
    top = PAD_T + (12 if len(series) > 1 else 0)  # room for the legend row
    sx = _scale(xt[0], xt[-1], PAD_L, width - PAD_R)
    sy = _scale(yt[0], yt[-1], height - PAD_B, top)
    body = _axes(xt, yt, sx, sy, width, height, x_label, y_label)
    for mark in marks:
        body.append(
            f'<line x1="{sx(mark):.1f}" x2="{sx(mark):.1f}" y1="{top}" y2="{height - PAD_B}" stroke="{AXIS}" '
            f'stroke-dasharray="4 3"/>'
        )
    for i, s in enumerate(series):
        pairs = [(x, y) for x, y in zip(s.xs, s.ys, strict=True) if math.isfinite(y)]
        xs, ys = decimate([p[0] for p in pairs], [p[1] for p in pairs])
        if len(xs) == 1:
            body.append(f'<circle cx="{sx(xs[0]):.1f}" cy="{sy(ys[0]):.1f}" r="3" fill="{colour(i)}"/>')
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True))
        body.append(f'<polyline points="{path}" fill="none" stroke="{colour(i)}" stroke-width="1.5"/>')
    if len(series) > 1:
        body += _legend([s.name for s in series])
    return _frame(title, width, height, body)


def bar_chart(
    title: str,
    labels: Sequence[str],
    segments: Sequence[tuple[str, Sequence[float]]],
    value_fmt=compact,
    width: int = WIDTH,
) -> str:
    """Horizontal bars, one row per label; several ``segments`` (name, values) stack left to right."""
    row, label_w = 22, min(200, 7 * max((len(label) for label in labels), default=4) + 10)
    height = PAD_T + 14 + row * max(1, len(labels)) + 8
    totals = [sum(values[i] for _, values in segments) for i in range(len(labels))]
    top = max(totals, default=0) or 1.0
    left, right = label_w + 8, width - PAD_R - 96
    body = []
    for i, label in enumerate(labels):
        y = PAD_T + 14 + i * row
        body.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end" fill="{INK}">{escape(label[:32])}</text>')
        x = float(left)
        for j, (name, values) in enumerate(segments):
            w = (right - left) * values[i] / top
            if w > 0:
                tip = f"{name}: {value_fmt(values[i])}"
                body.append(
                    f'<rect x="{x:.1f}" y="{y + 2}" width="{max(w, 0.8):.1f}" height="{row - 6}" '
                    f'fill="{colour(j)}"><title>{escape(label)} {escape(tip)}</title></rect>'
                )
                x += w
        parts = [value_fmt(values[i]) for _, values in segments]
        text = " / ".join(parts) if len(parts) <= 3 else f"total {value_fmt(totals[i])}"
        body.append(f'<text x="{x + 4:.1f}" y="{y + 13}" fill="{INK}">{escape(text)}</text>')
    if len(segments) > 1:
        body += _legend([name for name, _ in segments])
    return _frame(title, width, height, body)


def histogram(
    title: str,
    groups: Sequence[tuple[str, Sequence[float]]],
    bins: int = 20,
    x_label: str = "",
    value_range: tuple[float, float] | None = None,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """Overlaid histograms (outlined bars, same bins) of each group's values; counts on y."""
    values = [v for _, vs in groups for v in vs if math.isfinite(v)]
    if not values:
        return _frame(title, width, 60, [f'<text x="{PAD_L}" y="40" fill="{AXIS}">no values</text>'])
    lo, hi = value_range or (min(values), max(values))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    step = (hi - lo) / bins
    counts = []
    for _, vs in groups:
        c = [0] * bins
        for v in vs:
            if math.isfinite(v) and lo <= v <= hi:
                c[min(bins - 1, int((v - lo) / step))] += 1
        counts.append(c)
    yt = nice_ticks(0, max(max(c) for c in counts))
    xt = nice_ticks(lo, hi)
    sx = _scale(lo, hi, PAD_L, width - PAD_R)
    sy = _scale(0, yt[-1], height - PAD_B, PAD_T + (12 if len(groups) > 1 else 0))
    body = _axes([t for t in xt if lo <= t <= hi], yt, sx, sy, width, height, x_label, "count")
    opacity = 0.75 if len(groups) == 1 else 0.45
    for g, c in enumerate(counts):
        for b, n in enumerate(c):
            if n:
                x0, x1 = sx(lo + b * step), sx(lo + (b + 1) * step)
                body.append(
                    f'<rect x="{x0:.1f}" y="{sy(n):.1f}" width="{max(0.8, x1 - x0 - 1):.1f}" '
                    f'height="{sy(0) - sy(n):.1f}" fill="{colour(g)}" fill-opacity="{opacity}"'
                    f' stroke="{colour(g)}"><title>{escape(groups[g][0])}: {n}</title></rect>'
                )
    if len(groups) > 1:
        body += _legend([name for name, _ in groups])
    return _frame(title, width, height, body)


def interval_chart(
    title: str,
    labels: Sequence[str],
    points: Sequence[tuple[float | None, tuple[float, float] | None]],
    y_label: str = "",
    y_range: tuple[float, float] = (0.0, 1.0),
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """One value per label with its 95% interval as an error bar; a missing value leaves its slot empty."""
    yt = nice_ticks(*y_range)
    slot = (width - PAD_L - PAD_R) / max(1, len(labels))
    sy = _scale(yt[0], yt[-1], height - PAD_B, PAD_T)
    body = _axes([], yt, lambda v: v, sy, width, height, "", y_label)
    for i, (label, (value, ci)) in enumerate(zip(labels, points, strict=True)):
        x = PAD_L + slot * (i + 0.5)
        body.append(
            f'<text x="{x:.1f}" y="{height - PAD_B + 13}" text-anchor="middle" fill="{INK}">{escape(label)}</text>'
        )
        if value is None:
            continue
        if ci:
            low, high = sy(ci[0]), sy(ci[1])
            body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{low:.1f}" y2="{high:.1f}" stroke="{colour(0)}"/>')
            for y in (low, high):
                body.append(
                    f'<line x1="{x - 6:.1f}" x2="{x + 6:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{colour(0)}"/>'
                )
        body.append(f'<circle cx="{x:.1f}" cy="{sy(value):.1f}" r="4" fill="{colour(0)}"/>')
        body.append(f'<text x="{x + 8:.1f}" y="{sy(value) - 4:.1f}" fill="{INK}">{escape(f"{value:.3f}")}</text>')
    return _frame(title, width, height, body)
