"""SIGKILL a training subprocess mid-run: the kill -> --resume tests of every recipe share this."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from rlaif.train.outputs import complete_checkpoints


def run_and_kill(command: list[str], cwd: Path, out: Path, loss_key: str | None = None, timeout: float = 300) -> Path:
    """Run ``command`` (one OpenMP thread) and SIGKILL it once a checkpoint in ``out`` is complete and, with
    ``loss_key``, the step after it is logged in metrics.jsonl (so the kill lands mid-step, not between saves).
    Returns the last complete checkpoint; fails if the run ended or saved nothing in ``timeout`` seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not _ready(out, loss_key):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, f"no checkpoint within {timeout} s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "adapter").exists(), "the run finished before it was killed"
    return complete_checkpoints(out)[-1]


def _ready(out: Path, loss_key: str | None) -> bool:
    done = complete_checkpoints(out) if out.is_dir() else []
    if not done or loss_key is None:
        return bool(done)
    metrics = out / "metrics.jsonl"
    if not metrics.is_file():
        return False
    last = int(done[-1].name.split("-")[1])
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return any(row.get("step") == last + 1 and loss_key in row for row in rows)
