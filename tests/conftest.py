"""Shared fixtures. Tests are offline and CPU-only; one real vLLM engine serves the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from engine_names import BUILTIN, TEST_MAX_MODEL_LEN

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Fixtures that load or build a model, and the marker a test using one (directly or through another fixture:
# item.fixturenames is the transitive closure) must carry, so `-m "not model and not engine and not slow"` (make
# test-fast) really skips them. Module fixtures that build models belong here too. A test that loads a model by name
# (BUILTIN) or trains in a subprocess is invisible to this check: mark it by hand (model, slow).
NEEDS_MARKER = {
    "engine": {"vllm_backend"},
    "model": {
        "builtin_model_path",
        "tiny_model_dir",
        "eos_model_dir",
        "reward_dirs",
        "random_lora",
        "lora_dir",
        "tiny",
    },
    "slow": {"vllm_server"},  # test_openai_backend: a real `vllm serve` (~35 s to ready)
}
MARKER_PROBLEM = pytest.StashKey[str]()


def _marker_problem(item: pytest.Item) -> str | None:
    marks = {mark.name for mark in item.iter_markers()}
    used = set(getattr(item, "fixturenames", ()))
    missing = [
        f"@pytest.mark.{mark} (it uses {', '.join(sorted(used & fixtures))})"
        for mark, fixtures in NEEDS_MARKER.items()
        if used & fixtures and mark not in marks
    ]
    return f"{item.nodeid} needs " + " and ".join(missing) if missing else None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: an unmarked model test must not slip into the fast tier
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = []
    for item in items:
        if item.get_closest_marker("engine"):  # the engine loads the builtin model: engine implies model
            item.add_marker(pytest.mark.model)
        if problem := _marker_problem(item):
            item.stash[MARKER_PROBLEM] = problem
            problems.append(problem)
    if problems and config.option.collectonly:
        raise pytest.UsageError("tests without the markers their fixtures require:\n" + "\n".join(problems))


@pytest.hookimpl(tryfirst=True)  # fails before any fixture loads a model
def pytest_runtest_setup(item: pytest.Item) -> None:
    if problem := item.stash.get(MARKER_PROBLEM, None):
        pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def builtin_model_path() -> str:
    """The builtin model converted to safetensors (done by `make setup`; converted here if missing)."""
    from rlaif.models import resolve_model

    return resolve_model(BUILTIN)


@pytest.fixture(scope="session")
def vllm_backend(builtin_model_path):
    """THE shared real vLLM engine on the builtin model, with LoRA enabled (engine start costs ~20-50 s on CPU)."""
    from rlaif.backends.vllm_backend import VllmBackend

    backend = VllmBackend(BUILTIN, max_model_len=TEST_MAX_MODEL_LEN, enable_lora=True, max_lora_rank=8, seed=0)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, builtin_model_path) -> Path:
    """A tiny random-init Llama (2 layers, hidden 64) with the builtin model's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(builtin_model_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Training test modules run torch on one thread (``pytestmark = pytest.mark.usefixtures(...)``). Tiny models gain
    nothing from intra-op threads, and on a shared 2-core machine OpenMP's spin-waiting made each small matmul ~30x
    slower (measured: 6.5 ms vs 0.24 ms for a 480x64 @ 64x64 linear) while another process ran."""
    from rlaif.backends.vllm_backend import torch_threads

    with torch_threads(1):
        yield
