"""HFBackend on real models: a tiny random-init Llama for mechanics, the builtin model for real text."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.backends import load_backend
from rlaif.backends.base import tokenize_prompt
from rlaif.backends.hf_backend import HFBackend
from rlaif.schema import GenerationParams, LoraAdapter

HELLO = [{"role": "user", "content": "Say hello."}]
SHORT = [{"role": "user", "content": "Hi"}]
LONG = [{"role": "user", "content": "Tell me everything about the history of the Roman empire. " * 6}]

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    backend = HFBackend(str(tiny_model_dir), batch_size=2)
    yield backend
    backend.close()


def chat_tokens(backend: HFBackend, conversation) -> int:
    return len(tokenize_prompt(backend._tokenizer, conversation))


def texts(result) -> list[str]:
    return [c.text for c in result.completions]


# -- construction ---------------------------------------------------------------------------------------------
def test_registry_builds_hf_backend_on_cpu_in_float32(tiny_model_dir):
    with load_backend("hf", str(tiny_model_dir), batch_size=3) as backend:
        assert isinstance(backend, HFBackend)
        assert backend.device.type == "cpu"
        assert backend._model.dtype == torch.float32
        assert backend.max_model_len == 512  # from the config and the tokenizer
    assert backend._model is None
    backend.close()  # a second close is harmless
    with pytest.raises(RuntimeError, match="closed"):
        backend.generate([HELLO], GenerationParams(max_tokens=2))


def test_unknown_dtype_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="dtype"):
        HFBackend(str(tiny_model_dir), dtype="int8")


# -- sampling -------------------------------------------------------------------------------------------------
def test_one_result_per_prompt_with_n_completions(tiny):
    params = GenerationParams(n=2, temperature=1.0, max_tokens=16, seed=0)
    results = tiny.generate([HELLO, SHORT, LONG], params)
    assert len(results) == 3
    for result in results:
        assert result.ok
        assert len(result.completions) == 2
        for completion in result.completions:
            assert 0 < completion.completion_tokens <= 16
            assert completion.finish_reason in {"stop", "length"}
            assert completion.logprobs is None
    assert results[0].prompt_tokens == chat_tokens(tiny, HELLO)


def test_n_samples_differ_and_seed_reproduces(tiny):
    first = tiny.generate([HELLO], GenerationParams(n=2, temperature=1.0, max_tokens=16, seed=7))[0]
    again = tiny.generate([HELLO], GenerationParams(n=2, temperature=1.0, max_tokens=16, seed=7))[0]
    other = tiny.generate([HELLO], GenerationParams(n=2, temperature=1.0, max_tokens=16, seed=8))[0]
    assert texts(first)[0] != texts(first)[1]
    assert texts(first) == texts(again)
    assert texts(first) != texts(other)


def test_seed_leaves_global_rng_alone(tiny):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.generate([HELLO], GenerationParams(temperature=1.0, max_tokens=4, seed=1))
    assert torch.equal(torch.rand(3), expected)


def test_greedy_is_deterministic(tiny):
    params = GenerationParams(n=2, temperature=0.0, max_tokens=12)
    first = tiny.generate([HELLO, LONG], params)
    second = tiny.generate([HELLO, LONG], params)
    assert [texts(r) for r in first] == [texts(r) for r in second]
    assert texts(first[0])[0] == texts(first[0])[1]


def test_logprobs_one_per_token_with_top_k(tiny):
    params = GenerationParams(n=2, temperature=1.0, max_tokens=10, seed=3, logprobs=3)
    for result in tiny.generate([HELLO, LONG], params):
        for completion in result.completions:
            assert len(completion.logprobs) == completion.completion_tokens
            for token in completion.logprobs:
                assert math.isfinite(token.logprob) and token.logprob <= 0
                assert len(token.top) == 3
                assert all(math.isfinite(v) and v <= 0 for v in token.top.values())
                assert token.logprob <= max(token.top.values()) + 1e-5


def test_greedy_logprobs_belong_to_the_generated_tokens(tiny):
    # Greedy takes the argmax, so each token's logprob must be the best of its top alternatives.
    result = tiny.generate([HELLO], GenerationParams(temperature=0.0, max_tokens=8, logprobs=2))[0]
    for token in result.completions[0].logprobs:
        assert token.logprob == pytest.approx(max(token.top.values()), abs=1e-5)
    zero = tiny.generate([HELLO], GenerationParams(temperature=0.0, max_tokens=4, logprobs=0))[0]
    assert all(token.top == {} for token in zero.completions[0].logprobs)


def test_raw_prompt_mode_sends_text_without_template(tiny):
    text = "Once upon a time"
    result = tiny.generate([text], GenerationParams(temperature=0.0, max_tokens=5))[0]
    assert result.ok and result.completions[0].completion_tokens > 0
    assert result.prompt_tokens == len(tiny._tokenizer(text).input_ids)
    assert result.prompt_tokens < chat_tokens(tiny, [{"role": "user", "content": text}])


def test_stop_string_cuts_text_and_counts_tokens_through_it(tiny):
    base = GenerationParams(temperature=1.0, max_tokens=16, seed=11)
    full = tiny.generate([HELLO], base)[0].completions[0]
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    cut = full.text.index(stop)
    assert cut > 0
    stopped = tiny.generate([HELLO], GenerationParams(temperature=1.0, max_tokens=16, seed=11, stop=(stop,)))[0]
    completion = stopped.completions[0]
    assert completion.text == full.text[:cut]
    assert completion.finish_reason == "stop"
    assert 0 < completion.completion_tokens <= full.completion_tokens


# -- per-record errors and batching ---------------------------------------------------------------------------
def test_bad_records_get_errors_and_the_rest_is_served(tiny):
    too_long = [{"role": "user", "content": "word " * 600}]
    prompts = [HELLO, [], too_long, "", SHORT]
    results = tiny.generate(prompts, GenerationParams(temperature=0.0, max_tokens=4))
    assert [r.ok for r in results] == [True, False, False, False, True]
    assert results[1].error == "empty conversation"
    assert "context is 512 tokens" in results[2].error
    assert results[2].prompt_tokens == chat_tokens(tiny, too_long)
    assert results[3].error == "empty prompt"
    assert results[4].completions[0].completion_tokens > 0


def test_max_model_len_override(tiny_model_dir):
    with HFBackend(str(tiny_model_dir), max_model_len=40) as backend:
        results = backend.generate([SHORT, LONG], GenerationParams(temperature=0.0, max_tokens=30))
    assert results[0].ok and not results[1].ok
    # A prompt near the limit gets only the room left in the context.
    assert results[0].completions[0].completion_tokens <= 40 - results[0].prompt_tokens


def test_order_is_restored_after_sorting_by_length(tiny):
    prompts = [SHORT, LONG, HELLO, "x", [{"role": "user", "content": "medium " * 30}]]
    results = tiny.generate(prompts, GenerationParams(temperature=0.0, max_tokens=3))
    assert [r.prompt_tokens for r in results] == [len(tokenize_prompt(tiny._tokenizer, p)) for p in prompts]
    assert len({r.prompt_tokens for r in results}) == len(prompts)


def test_out_of_memory_isolates_the_record_that_fails(tiny, monkeypatch):
    # Fault injection: the real generate runs, except that batches over one row or holding the long prompt "OOM".
    real = tiny._model.generate
    long_tokens = chat_tokens(tiny, LONG)

    def generate(*, input_ids, **kwargs):
        if input_ids.shape[0] > 1 or input_ids.shape[1] == long_tokens:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(input_ids=input_ids, **kwargs)

    monkeypatch.setattr(tiny._model, "generate", generate)
    results = tiny.generate([HELLO, LONG, SHORT], GenerationParams(temperature=0.0, max_tokens=3))
    assert [r.ok for r in results] == [True, False, True]
    assert "out of memory" in results[1].error


# -- structured outputs ---------------------------------------------------------------------------------------
def choice_logprob(backend: HFBackend, prompt, choice: str) -> float:
    prompt_ids = tokenize_prompt(backend._tokenizer, prompt)
    choice_ids = backend._tokenizer(choice, add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = backend._model(input_ids=torch.tensor([prompt_ids + choice_ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[len(prompt_ids) - 1 + i, token].item() for i, token in enumerate(choice_ids))


def test_greedy_choice_picks_the_best_scoring_string(tiny):
    choices = ("yes", "no", "It depends on the context")
    prompts = [HELLO, LONG]  # different lengths: the scoring batch is padded
    results = tiny.generate(prompts, GenerationParams(n=2, temperature=0.0, choice=choices, logprobs=1))
    for prompt, result in zip(prompts, results, strict=True):
        scores = {c: choice_logprob(tiny, prompt, c) for c in choices}
        best = max(scores, key=scores.get)
        assert texts(result) == [best, best]
        completion = result.completions[0]
        assert completion.finish_reason == "stop"
        assert completion.completion_tokens == len(completion.logprobs)
        assert sum(t.logprob for t in completion.logprobs) == pytest.approx(scores[best], abs=1e-3)


def test_sampled_choice_returns_only_allowed_strings(tiny):
    choices = ("A", "B", "C")
    params = GenerationParams(n=30, temperature=5.0, choice=choices, seed=0)
    result = tiny.generate([HELLO], params)[0]
    assert set(texts(result)) <= set(choices)
    assert len(set(texts(result))) > 1
    assert texts(tiny.generate([HELLO], params)[0]) == texts(result)


@pytest.mark.parametrize("constraint", [{"regex": "[0-9]+"}, {"json_schema": {"type": "object"}}])
def test_regex_and_json_schema_are_refused_with_alternatives(tiny, constraint):
    with pytest.raises(ValueError, match="vllm or openai"):
        tiny.generate([HELLO], GenerationParams(max_tokens=4, **constraint))


# -- LoRA -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # init_lora_weights=False gives B a random value, so the adapter really changes the outputs.
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("tiny-lora")
    get_peft_model(base, config).save_pretrained(out)
    return out


def test_lora_adapter_changes_output_and_can_be_switched_off(tiny, lora_dir):
    params = GenerationParams(temperature=0.0, max_tokens=6, logprobs=0)
    adapter = LoraAdapter(name="my.adapter", path=str(lora_dir))

    def logprobs(result):
        return [t.logprob for t in result.completions[0].logprobs]

    base = tiny.generate([HELLO], params)[0]
    tuned = tiny.generate([HELLO], GenerationParams(temperature=0.0, max_tokens=6, logprobs=0, lora=adapter))[0]
    assert logprobs(tuned) != pytest.approx(logprobs(base), abs=1e-3)
    again = tiny.generate([HELLO], params)[0]
    assert texts(again) == texts(base)
    assert logprobs(again) == pytest.approx(logprobs(base), abs=1e-5)
    cached = tiny.generate([HELLO], GenerationParams(temperature=0.0, max_tokens=6, logprobs=0, lora=adapter))[0]
    assert logprobs(cached) == pytest.approx(logprobs(tuned), abs=1e-5)
    assert len(tiny._adapters) == 1


# -- the builtin model ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_builtin_model_answers_in_english_and_stops_at_eos():
    question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    with HFBackend("builtin:smollm2-135m-instruct", batch_size=2) as backend:
        answer, long_story = backend.generate([question, story], GenerationParams(temperature=0.0, max_tokens=24))
        tokenizer = backend._tokenizer
    for result in (answer, long_story):
        completion = result.completions[0]
        assert completion.text.strip() and completion.completion_tokens > 0
        assert completion.finish_reason in {"stop", "length"}
        letters = sum(ch.isascii() and (ch.isalpha() or ch.isspace()) for ch in completion.text)
        assert letters > 0.8 * len(completion.text)
    short = answer.completions[0]
    assert "Paris" in short.text
    # Batched with a longer answer, the short one stops at EOS: EOS counts as a token, the padding after it does not.
    assert short.finish_reason == "stop"
    assert short.completion_tokens == len(tokenizer(short.text, add_special_tokens=False).input_ids) + 1
    assert long_story.completions[0].completion_tokens > short.completion_tokens
