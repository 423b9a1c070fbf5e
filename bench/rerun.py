"""Cache reuse on a real generation pipeline: an unchanged re-run against the first run, on the builtin model.

    .venv/bin/python bench/rerun.py [--prompts 16]

Runs pipelines/generate_responses.yaml (vLLM, builtin model) into a fresh run directory, then again unchanged:
1. in-process (``run_pipeline`` twice; the second run must load no model),
2. as the CLI (``rlaif run`` twice in new processes: includes interpreter start and imports).
Target (from the issue): the unchanged re-run takes <= 5% of the first run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PIPELINE = REPO / "pipelines" / "generate_responses.yaml"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    args = parser.parse_args()
    from rlaif.pipeline.run import run_pipeline
    from rlaif.pipeline.spec import load_pipeline

    overrides = [f"steps.seeds.limit={args.prompts}"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "inproc"
        first = timed(lambda: run_pipeline(load_pipeline(PIPELINE, overrides), run_dir=run_dir))
        again = timed(lambda: run_pipeline(load_pipeline(PIPELINE, overrides), run_dir=run_dir))
        rows.append(("in-process", first, again))
        cli = [
            sys.executable,
            "-m",
            "rlaif.cli",
            "run",
            str(PIPELINE),
            *overrides,
            "--no-progress",
            "--run-dir",
            str(Path(tmp) / "cli"),
        ]
        first = timed(lambda: subprocess.run(cli, check=True, capture_output=True))
        again = timed(lambda: subprocess.run(cli, check=True, capture_output=True))
        rows.append(("CLI", first, again))
    print(f"\n{'run':<12}{'first s':>10}{'re-run s':>10}{'re-run / first':>16}")
    for label, first, again in rows:
        print(f"{label:<12}{first:>10.1f}{again:>10.2f}{again / first:>15.1%}")


if __name__ == "__main__":
    main()
