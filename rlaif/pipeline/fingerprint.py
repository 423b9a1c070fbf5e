"""Content-addressed cache keys: a step's key covers everything that could change its output."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from rlaif import __version__
from rlaif.backends.base import backend_class
from rlaif.pipeline.spec import Pipeline, StepSpec


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def adapter_digest(path: str | Path) -> str:
    """Content hash of a PEFT adapter directory (its config and weight files at the top level)."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).expanduser().iterdir()):
        if file.is_file() and (file.name.startswith("adapter_") or file.suffix == ".safetensors"):
            digest.update(file.name.encode())
            digest.update(file_digest(file).encode())
    return digest.hexdigest()


def step_fingerprint(pipeline: Pipeline, spec: StepSpec, upstream: list[str]) -> str:
    """Config, the bytes of the files it reads (data, templates, constitutions), the models it uses, upstream keys,
    batch size (batch boundaries decide sampling seeds), the pipeline seed and the rlaif version."""
    step = spec.step
    files = {_portable(p, pipeline.file.parent): file_digest(p) for p in step.files() if p.is_file()}
    payload = {
        "type": f"{type(step).__module__}.{type(step).__qualname__}",
        "params": step.params.model_dump(mode="json"),
        "batch_size": spec.batch_size,
        "files": files,
        "models": {m: _model_key(pipeline, m) for m in step.model_names() if m in pipeline.models},
        "upstream": upstream,
        "seed": pipeline.seed,
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _model_key(pipeline: Pipeline, name: str) -> dict:
    key = asdict(pipeline.models[name])
    # Where and how requests travel (an openai pool's servers, timeouts, retries) never changes what the model
    # answers: a pool that grows, shrinks or moves keeps every finished step.
    transport = getattr(backend_class(key["backend"]), "transport_options", ())
    key["options"] = {k: v for k, v in key["options"].items() if k not in transport}
    if adapter := key["sampling"].get("lora"):
        # The adapter's content, not its path: a retrained adapter in the same place invalidates, a moved one not.
        key["sampling"]["lora"] = adapter_digest(adapter)
    return key


def _portable(path: Path, base: Path) -> str:
    # Keys must not depend on where the checkout lives: relative paths where possible.
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return path.name
