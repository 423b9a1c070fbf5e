"""Where output goes (rlaif.logs): library logs to the run's log file, to stderr only with -v; the known-harmless
CPU warnings only at -vv; vLLM's engine process and transformers routed the same way; stdout untouched."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif import logs


@pytest.fixture(autouse=True)
def _restore():
    before = dict(os.environ)
    yield
    for key in set(os.environ) - set(before):
        del os.environ[key]
    os.environ.update(before)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logs.StderrHandler | logs.LogFileHandler)]:
        root.removeHandler(handler)
        handler.close()
    logging.captureWarnings(False)


HARMLESS = "libtcmalloc is not found in LD_PRELOAD. For best performance..."


def _emit() -> None:
    logging.getLogger("vllm.engine").warning("a library warning")
    logging.getLogger("vllm.platforms.cpu").warning(HARMLESS)
    logging.getLogger("rlaif.pipeline.run").warning("an rlaif warning")
    logging.getLogger("rlaif.pipeline.run").info("an rlaif note")


@pytest.mark.parametrize(
    ("verbosity", "shown", "hidden"),
    [
        (logs.QUIET, [], ["a library warning", HARMLESS, "an rlaif warning", "an rlaif note"]),
        (logs.DEFAULT, ["warning: an rlaif warning"], ["a library warning", HARMLESS, "an rlaif note"]),
        (logs.VERBOSE, ["WARNING vllm.engine: a library warning", "an rlaif note"], [HARMLESS]),
        (logs.DEBUG, ["a library warning", HARMLESS], []),
    ],
)
def test_stderr_shows_by_verbosity_and_the_log_file_keeps_everything(tmp_path, capsys, verbosity, shown, hidden):
    log_file = tmp_path / "run" / "library.log"
    logs.setup(verbosity, log_file)
    _emit()
    out, err = capsys.readouterr()
    assert out == ""
    assert all(text in err for text in shown), err
    assert not any(text in err for text in hidden), err
    kept = log_file.read_text()
    assert all(text in kept for text in ("a library warning", HARMLESS, "an rlaif warning", "an rlaif note"))


def test_python_warnings_go_to_the_log_file(tmp_path):
    code = (
        "import warnings\n"
        "from pathlib import Path\n"
        "from rlaif import logs\n"
        f"logs.setup(logs.DEFAULT, Path({str(tmp_path / 'library.log')!r}))\n"
        "warnings.warn('`torch.distributed.reduce_op` is deprecated', FutureWarning, stacklevel=1)\n"
    )
    child = _child(code, dict(os.environ))
    assert child.returncode == 0 and child.stdout == "" and child.stderr == "", child.stderr
    assert "reduce_op` is deprecated" in (tmp_path / "library.log").read_text()


def test_every_harmless_pattern_says_why():
    assert all(pattern and len(why) > 10 for pattern, why in logs.HARMLESS)
    assert logs.harmless("INFO Triton is not installed. triton-cpu is expected on x86 CPUs.")
    assert logs.harmless("the engine died") is None


def _child(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in env.items() if k != "PYTHONWARNINGS"}  # an earlier CLI test in this process may set it
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_a_spawned_engine_process_reads_the_same_routing(tmp_path):
    """vLLM's engine process applies the dictConfig named by VLLM_LOGGING_CONFIG_PATH (vLLM's default handler would
    write to stdout); a child here applies it the same way."""
    logs.setup(logs.DEFAULT, tmp_path / "library.log")
    path = os.environ["VLLM_LOGGING_CONFIG_PATH"]
    assert json.loads(Path(path).read_text())["handlers"]["file"]["filename"] == str(tmp_path / "library.log")
    code = (
        "import json, logging.config, os\n"
        "logging.config.dictConfig(json.load(open(os.environ['VLLM_LOGGING_CONFIG_PATH'])))\n"
        "logging.getLogger('vllm.worker').warning('from the engine process')\n"
        "logging.getLogger('vllm.worker').warning('libiomp is not found in LD_PRELOAD')\n"
    )
    child = _child(code, dict(os.environ))
    assert child.returncode == 0, child.stderr
    assert child.stdout == "" and child.stderr == ""
    assert "from the engine process" in (tmp_path / "library.log").read_text()
    logs.setup(logs.VERBOSE, tmp_path / "library.log")
    child = _child(code, dict(os.environ))
    assert "from the engine process" in child.stderr and "libiomp" not in child.stderr and child.stdout == ""


def test_transformers_logs_are_routed_once_it_loads(tmp_path):
    """transformers adds its own stderr handler on import; the import hook hands its records to the routing."""
    code = (
        "from pathlib import Path\n"
        "from rlaif import logs\n"
        f"logs.setup(logs.DEFAULT, Path({str(tmp_path / 'library.log')!r}))\n"
        "from transformers.utils import logging as tlog\n"
        "tlog.get_logger('transformers.modeling_utils').warning('from transformers')\n"
    )
    child = _child(code, dict(os.environ))
    assert child.returncode == 0, child.stderr
    assert "from transformers" not in child.stderr and child.stdout == ""
    assert "from transformers" in (tmp_path / "library.log").read_text()
