"""``rlaif report RUN_DIR``: one self-contained HTML page (inline SVG, no script, no network) of a pipeline run, a
training output or a loop output, read from the files they leave on disk. See docs/reports.md.

Layer: a reader of files beside the backends (tests/test_imports.py): it imports only the floor (rates, config), so
``rlaif train`` (rlaif.train.cli) can write its report too. Importing this package is light (``rlaif --help`` builds
the command); pyarrow and the page code load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REPORT_NAME", "ReportError", "detect", "render", "report_after", "write_report"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rlaif.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'rlaif.report' has no attribute {name!r}")
