"""The three report pages opened in a real headless browser (Debian's ``chromium``): no console message (a script
error or a blocked load would print one), every section in the DOM, the hostile record text as text, and a
screenshot that is not blank. Skipped where ``chromium`` is not on PATH (``apt-get install -y chromium``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image
from report_pages import parse
from test_training_loop_report import VERIFIER_ROWS, write_metrics

from rlaif.report import write_report

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not on PATH: `apt-get install -y chromium` (see docs/reports.md)"
    ),
]


def browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",  # tests run as root in CI
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def check_screenshot(png: Path) -> None:
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 2000)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, lines and bars, not a flat page
    background = max(colours)[0]
    drawn = image.width * image.height - background
    assert drawn / (image.width * image.height) > 0.05, "the page is (nearly) blank"


def open_page(out: Path, tmp_path: Path) -> str:
    png = tmp_path / "shot.png"
    shot = browse(out, tmp_path, f"--screenshot={png}", "--window-size=1280,2000")
    assert not console_lines(shot.stderr), console_lines(shot.stderr)
    check_screenshot(png)
    dom = browse(out, tmp_path, "--dump-dom")
    assert not console_lines(dom.stderr), console_lines(dom.stderr)
    return dom.stdout


def test_pipeline_page_in_chromium(pipeline_run, tmp_path):
    dom = open_page(write_report(pipeline_run, tmp_path / "pipeline.html"), tmp_path)
    parsed = parse(dom)
    assert parsed.sections == ["steps", "reasons", "cost", "samples", "judges", "verifiers", "pairs", "scores"]
    assert parsed.scripts == 0  # the hostile <script> stayed text: the browser built no script element
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


def test_training_page_in_chromium(tmp_path):
    write_metrics(tmp_path / "out")
    dom = open_page(write_report(tmp_path / "out", tmp_path / "training.html"), tmp_path)
    assert parse(dom).sections == ["curves", "eval"] and dom.count("<svg") >= 10


def test_loop_page_in_chromium(tmp_path):
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "summary.json").write_text(json.dumps(VERIFIER_ROWS))
    write_metrics(tmp_path / "loop" / "round-1" / "train")
    dom = open_page(write_report(tmp_path / "loop", tmp_path / "loop.html"), tmp_path)
    assert parse(dom).sections == ["rounds", "round-training", "round-data"]
    assert "0.729 [0.590-0.834] (n=48)" in dom
