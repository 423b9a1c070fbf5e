"""The HTML page: one file, styles inline, no script, no network. A Content-Security-Policy that allows no script
and no fetch backs up the escaping: a record's ``<script>`` is shown as text, and would not run even if some text
escaped unescaped."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

from rlaif import __version__

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#111827;margin:0;background:#f9fafb}
header{background:#111827;color:#f9fafb;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#d1d5db;font-size:13px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #e5e7eb;padding:6px 24px;z-index:1}
nav a{margin-right:14px;color:#2563eb;text-decoration:none;font-size:13px}
main{max-width:1220px;margin:0 auto;padding:8px 24px 40px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:6px;margin:16px 0;padding:12px 16px}
section h2{margin:2px 0 8px;font-size:17px}section h3{margin:14px 0 6px;font-size:14px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(580px,1fr));gap:8px 16px}
.grid svg,section svg{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #e5e7eb;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f3f4f6;padding:6px 8px;border-radius:4px;white-space:pre-wrap;word-break:break-word;
max-height:220px;overflow:auto;font-size:12px;margin:4px 0}
details{margin:4px 0}summary{cursor:pointer;color:#374151}
.note{color:#6b7280;font-size:12px}.warn{color:#b45309}.bad{color:#b91c1c}
"""
SAMPLE_CHARS = 1500  # a sample record's JSON is cut here: the page stays readable and small


@dataclass
class Section:
    id: str
    title: str
    body: str


def esc(value: Any) -> str:
    return escape(str(value), quote=True)


def num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value if value is not None else "-")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3g}"
    return esc(value)


def rate_text(value: float | None, ci: Sequence[float] | None, n: int | None = None) -> str:
    """``0.700 [0.397-0.892] (n=10)``: every sampled rate with its interval and sample size (DESIGN.md §5)."""
    if value is None:
        return f"n/a (n={n or 0})"
    interval = f" [{ci[0]:.3f}-{ci[1]:.3f}]" if ci else ""
    return f"{value:.3f}{interval}" + (f" (n={n})" if n is not None else "")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """A table; cells are escaped (numbers formatted); ``numeric`` columns align right."""
    head = "".join(f'<th class="{"n" if i in numeric else ""}">{esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"n" if i in numeric else ""}">{num(cell) if i in numeric else esc(cell)}</td>'
            for i, cell in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def record_block(record: Any, label: str = "") -> str:
    """A record as indented JSON in a <pre>, escaped and cut at ``SAMPLE_CHARS``."""
    text = json.dumps(record, indent=1, ensure_ascii=False, default=str)
    if len(text) > SAMPLE_CHARS:
        text = text[:SAMPLE_CHARS] + f"\n… ({len(text) - SAMPLE_CHARS:,} more characters)"
    caption = f'<div class="note">{esc(label)}</div>' if label else ""
    return f"{caption}<pre>{esc(text)}</pre>"


def grid(charts: Sequence[str]) -> str:
    return f'<div class="grid">{"".join(f"<div>{c}</div>" for c in charts)}</div>' if charts else ""


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)} · rlaif {esc(__version__)} · {made}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )
