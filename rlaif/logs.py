"""Where output goes, so that stdout carries only results (tables, generated text, paths).

- rlaif's own warnings and errors go to stderr (``-q``: errors only).
- Library logs (vLLM, transformers, datasets, bitsandbytes, torch) and Python warnings go to a log file in the run
  directory when there is one (``attach_log_file``), and to stderr only with ``-v``; ``-vv`` also shows the
  known-harmless CPU warnings listed in ``HARMLESS`` and debug records.
- vLLM's engine runs in a spawned process that configures its own logging: it reads the same routing from a JSON
  logging config named by ``VLLM_LOGGING_CONFIG_PATH`` (vLLM's own default handler writes to *stdout*).
- Library progress bars (tqdm: weight loading, datasets) and C++ warnings (torch's c10 logging) are switched off
  by environment variables unless ``-v``; children inherit them.

Light on purpose (logging, json, os): the CLI calls ``setup`` before any heavy import.
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.machinery
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

# Warnings every CPU run prints and no user can act on, each with why it is harmless. Matched as substrings of
# the message; hidden from stderr at -v (shown at -vv), always kept in the log file.
HARMLESS: tuple[tuple[str, str], ...] = (
    ("Triton is not installed", "vLLM's CPU backend runs without Triton"),
    ("doesn't include CPU backend. Disabling Triton", "vLLM's CPU backend runs without Triton"),
    ("Model Runner V2 requires Triton", "the V1 model runner is vLLM's CPU path"),
    ("Enforce eager set", "rlaif runs vLLM eager on CPU (no CUDA graphs to capture)"),
    ("Inductor compilation was disabled", "follows from eager mode"),
    ("Reset SSM cache type", "applies to Mamba models only"),
    ("The global random seed is set to", "rlaif seeds the engine on purpose"),
    ("VLLM_CPU_NUM_OF_RESERVED_CPU", "a tuning hint for many-core servers"),
    ("is not found in LD_PRELOAD", "tcmalloc / Intel OpenMP preloading is a speed tweak, not needed"),
    ("is set; leaving Torch threads at", "rlaif sets the thread count itself"),
    ("NUMA binding", "memory binding notice on one-socket machines"),
    ("Failed to load CPU gemm_4bit_forward", "bitsandbytes' optional `kernels` package; its own CPU path is used"),
    ("torch.distributed.reduce_op` is deprecated", "a torch FutureWarning raised inside vLLM's import"),
)
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(processName)s]: %(message)s"
QUIET, DEFAULT, VERBOSE, DEBUG = -1, 0, 1, 2
_CONFIG_ENV = "VLLM_LOGGING_CONFIG_PATH"


def harmless(message: str) -> str | None:
    """Why ``message`` is a known harmless CPU warning, or None."""
    return next((why for pattern, why in HARMLESS if pattern in message), None)


class StderrFilter(logging.Filter):
    """What reaches stderr at a verbosity: rlaif's own warnings (errors at -q); libraries only from -v."""

    def __init__(self, verbosity: int = DEFAULT) -> None:
        super().__init__()
        self.verbosity = verbosity

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbosity >= DEBUG:
            return True
        if self.verbosity >= VERBOSE:
            return harmless(record.getMessage()) is None
        own = record.name == "rlaif" or record.name.startswith("rlaif.")
        return own and record.levelno >= (logging.ERROR if self.verbosity <= QUIET else logging.WARNING)


class StderrFormatter(logging.Formatter):
    """rlaif's own records read ``warning: ...`` (like the CLI's ``error: ...``); a library's name its logger."""

    def format(self, record: logging.LogRecord) -> str:
        own = record.name == "rlaif" or record.name.startswith("rlaif.")
        self._style._fmt = (
            "%(levelname)s %(name)s: %(message)s" if not own else f"{record.levelname.lower()}: %(message)s"
        )
        return super().format(record)


class StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (not the one at creation: test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(StderrFormatter())

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # logging.StreamHandler.__init__ assigns it
        pass


class LogFileHandler(logging.FileHandler):
    """The run directory's log file (appended: a resumed run adds to it)."""


def _level(verbosity: int) -> int:
    return logging.DEBUG if verbosity >= DEBUG else logging.INFO


def setup(verbosity: int = DEFAULT, log_file: Path | None = None, bars: bool = True) -> None:
    """Route logs for a CLI command: this process's root logger, vLLM's (and its engine process's) logging config,
    Python warnings, and the environment variables libraries read at import. ``bars=False`` also silences tqdm
    bars (commands whose own progress display covers them). Idempotent: a later call replaces an earlier one."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler | LogFileHandler)]:
        root.removeHandler(handler)
        handler.close()
    stderr = StderrHandler()
    stderr.addFilter(StderrFilter(verbosity))
    root.addHandler(stderr)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = LogFileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(file_handler)
    root.setLevel(_level(verbosity))
    logging.captureWarnings(True)  # warnings.warn -> logger py.warnings -> the handlers above
    _write_vllm_config(verbosity, log_file)
    if verbosity < VERBOSE:
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10 warnings print from C++ straight to fd 2
        os.environ.setdefault("PYTHONWARNINGS", "ignore")  # spawned engine processes (this one: captureWarnings)
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if not bars:
            os.environ.setdefault("TQDM_DISABLE", "1")  # vLLM's weight-loading bars, in its engine process
    _adopt_library_loggers()


def attach_log_file(log_file: Path, verbosity: int = DEFAULT, bars: bool = True) -> Path:
    """Start writing library logs to ``log_file`` (a run directory is known once its config is read)."""
    setup(verbosity, log_file, bars)
    return log_file


def _write_vllm_config(verbosity: int, log_file: Path | None) -> None:
    """vLLM applies this dictConfig in every process it starts (and in this one when first imported)."""
    handlers: dict[str, Any] = {
        "stderr": {
            "()": "rlaif.logs.StderrHandler",
            "filters": ["stderr"],
        }
    }
    if log_file is not None:
        handlers["file"] = {
            "()": "rlaif.logs.LogFileHandler",
            "filename": str(log_file),
            "encoding": "utf-8",
            "formatter": "full",
        }
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"stderr": {"()": "rlaif.logs.StderrFilter", "verbosity": verbosity}},
        "formatters": {"full": {"format": FORMAT}},
        "handlers": handlers,
        "loggers": {"vllm": {"handlers": [], "level": logging.getLevelName(_level(verbosity)), "propagate": True}},
        "root": {"handlers": list(handlers), "level": logging.getLevelName(_level(verbosity))},
    }
    path = Path(tempfile.gettempdir()) / f"rlaif-logging-{os.getpid()}.json"
    if not path.exists():
        atexit.register(path.unlink, missing_ok=True)
    path.write_text(json.dumps(config))
    os.environ["VLLM_CONFIGURE_LOGGING"] = "1"
    os.environ[_CONFIG_ENV] = str(path)
    vllm_logger = logging.getLogger("vllm")  # already configured by an earlier import: route it like the above
    if "vllm.logger" in sys.modules:
        for handler in list(vllm_logger.handlers):
            vllm_logger.removeHandler(handler)
        vllm_logger.propagate = True


# transformers and datasets add their own stderr handler to their root logger on import (transformers also stops
# propagation): after they load, hand their records to the root logger's routing instead.
def _adopt_transformers(module: Any) -> None:
    module.disable_default_handler()
    module.enable_propagation()


def _adopt_datasets(module: Any) -> None:
    library = logging.getLogger("datasets")
    for handler in [h for h in library.handlers if type(h) is logging.StreamHandler]:
        library.removeHandler(handler)


_ADOPT = {"transformers.utils.logging": _adopt_transformers, "datasets.utils.logging": _adopt_datasets}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``_ADOPT[name]`` right after module ``name`` executes (the modules are too heavy to import here)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name not in _ADOPT:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        loader, hook = spec.loader, _ADOPT[name]

        class _Loader(importlib.abc.Loader):
            def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
                return loader.create_module(spec)

            def exec_module(self, module: Any) -> None:
                loader.exec_module(module)
                hook(module)

        spec.loader = _Loader()
        return spec


def _adopt_library_loggers() -> None:
    for name, hook in _ADOPT.items():
        if name in sys.modules:
            hook(sys.modules[name])
    if not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
