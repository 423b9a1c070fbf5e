"""Where a pipeline's batches run: the ``executor:`` of a pipeline file (or ``rlaif run --executor``), validated like
every other key, and the run directory as a local path or a ``file://`` URL.

    executor: local                        # the default: every batch in this process
    executor: ray                          # Ray: RAY_ADDRESS's cluster, else a local one started for the run
    executor: {type: ray, address: auto, workers: 4, replicas: 2, num_gpus: 1}

Under Ray (rlaif.pipeline.ray_executor): sources and stateful steps run in the driver, model-free steps as Ray
tasks (at most ``workers`` batches at once), steps that use a model on a pool of ``replicas`` actors per engine, each
actor owning one engine (``num_gpus``/``num_cpus`` each). Nothing here imports ray.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlaif.config import closest

EXECUTORS = ("local", "ray")
EXECUTOR_KEYS = ("type", "address", "workers", "replicas", "num_gpus", "num_cpus", "max_retries")
# auto (a running cluster found through RAY_ADDRESS or this node's session), a Ray Client URL, or the GCS host:port.
_ADDRESS = re.compile(r"auto|local|ray://[^\s/]+(:\d+)?/?|[\w.\-\[\]:]+:\d+")


class ExecutorError(RuntimeError):
    """The executor cannot start: ray missing, a cluster that cannot be reached, a run directory nodes cannot see."""


class BatchLost(RuntimeError):
    """A batch whose worker died more often than Ray retries it. The finished batches are kept: a re-run resumes."""


@dataclass(frozen=True)
class ExecutorSpec:
    """``workers``: model-free batches in flight at once (None: the cluster's CPUs). ``replicas``: engine actors per
    distinct engine. ``max_retries``: how often Ray reruns a batch whose worker died."""

    type: str = "local"
    address: str | None = None
    workers: int | None = None
    replicas: int = 1
    num_gpus: float = 0
    num_cpus: float = 1
    max_retries: int = 3


def executor_problems(raw: Any) -> tuple[ExecutorSpec, list[tuple[tuple[str, ...], str]]]:
    """The ``executor:`` value as a spec, and ``(key path, message)`` for each problem (spec.py places them)."""
    if raw is None:
        return ExecutorSpec(), []
    where: tuple[str, ...] = ("executor",)
    if isinstance(raw, str):
        raw = {"type": raw}
        where_type = where
    elif isinstance(raw, dict):
        where_type = (*where, "type")
    else:
        return ExecutorSpec(), [(where, f"executor must be one of {EXECUTORS} or a mapping with {EXECUTOR_KEYS}")]
    problems = []
    for key in raw:
        if key not in EXECUTOR_KEYS:
            problems.append(
                (
                    (*where, key),
                    f"unknown executor key {key!r}{closest(str(key), EXECUTOR_KEYS)}; expected one of {EXECUTOR_KEYS}",
                )
            )
    kind = raw.get("type", "local")
    if kind not in EXECUTORS:
        problems.append(
            (where_type, f"unknown executor {kind!r}{closest(str(kind), EXECUTORS)}; expected one of {EXECUTORS}")
        )
    values: dict[str, Any] = {"type": kind}
    for key, (check, expected) in _CHECKS.items():
        if key in raw:
            value = raw[key]
            if not check(value):
                problems.append(((*where, key), f"executor.{key} must be {expected}, got {value!r}"))
            else:
                values[key] = value
    if kind == "local" and set(raw) - {"type"}:
        extra = sorted(set(raw) - {"type"})
        problems.append((where, f"executor options {extra} apply to type: ray only"))
    return (ExecutorSpec(**values) if not problems else ExecutorSpec()), problems


def _count(minimum: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v >= 0


_CHECKS = {
    "address": (lambda v: isinstance(v, str) and bool(_ADDRESS.fullmatch(v)), "auto, ray://HOST:PORT or HOST:PORT"),
    "workers": (lambda v: v is None or _count(1)(v), "an integer >= 1 (batches in flight) or null"),
    "replicas": (_count(1), "an integer >= 1 (engine actors per model)"),
    "num_gpus": (_number, "a number >= 0 (GPUs per engine actor)"),
    "num_cpus": (_number, "a number >= 0 (CPUs per engine actor)"),
    "max_retries": (_count(0), "an integer >= 0"),
}


def choose_executor(file_spec: ExecutorSpec, executor: str | None, address: str | None) -> ExecutorSpec:
    """The command line over the file: ``--executor`` names the type, ``--address`` (which implies ray) the cluster.
    Raises ``ExecutorError`` for a choice that cannot be right."""
    if executor is not None and executor not in EXECUTORS:
        raise ExecutorError(
            f"unknown executor {executor!r}{closest(executor, EXECUTORS)}; expected one of {EXECUTORS}"
        )
    if address is not None and not _ADDRESS.fullmatch(address):
        raise ExecutorError(f"--address must be auto, ray://HOST:PORT or HOST:PORT, got {address!r}")
    kind = executor or ("ray" if address is not None else file_spec.type)
    if kind == "local" and address is not None:
        raise ExecutorError("--address names a Ray cluster: use it with --executor ray")
    values = {**file_spec.__dict__, "type": kind}
    if address is not None:
        values["address"] = address
    return ExecutorSpec(**values)


def local_run_dir(value: str | Path) -> Path:
    """The run directory as a local path: a path, or a ``file://`` URL (fsspec's local filesystem). Every node of a
    Ray cluster must see it at the same path (a shared mount); object stores (s3://, gs://) are refused: the
    completion markers rely on atomic renames, which they do not have."""
    text = str(value)
    # A URL, also as Path() leaves it ("s3://b/x" -> "s3:/b/x"); a one-letter scheme is a Windows drive.
    found = re.match(r"([A-Za-z][\w+.-]+):/", text)
    if found is None:
        return Path(text)
    scheme = found.group(1)
    if scheme != "file":
        raise ExecutorError(
            f"run directory {text!r}: {scheme}:// is not supported; give a local path or a file:// URL on a "
            "filesystem every node mounts at the same path (markers need atomic renames)"
        )
    from fsspec.core import url_to_fs

    local = "/" + text[len("file:") :].lstrip("/")  # file:///x, and file:/x as Path() leaves it
    _, path = url_to_fs("file://" + local)
    return Path(path)
