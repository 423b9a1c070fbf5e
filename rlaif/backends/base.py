"""The Backend protocol, the registry that builds a backend by name, and helpers every backend shares.

``generate(prompts, params)`` returns one ``GenerationResult`` per prompt, in order. A prompt that cannot be served
(empty conversation, longer than the context, rejected by the server) yields a result with ``error`` set; the rest
of the batch is still served. Exceptions escape only for failures of the whole backend (bad configuration).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rlaif.formats import ROLES
from rlaif.registry import resolve_component
from rlaif.schema import GenerationParams, GenerationResult, Prompt


@runtime_checkable
class Backend(Protocol):
    name: str
    model: str

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[GenerationResult]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...


# Registry name -> "module:Class". A backend module (and its heavy dependencies) is imported only when built, so code
# that needs an engine (pipelines, the loop, PPO rollouts) depends on this protocol module alone.
BACKENDS: dict[str, str] = {
    "vllm": "rlaif.backends.vllm_backend:VllmBackend",
    "hf": "rlaif.backends.hf_backend:HFBackend",
    "openai": "rlaif.backends.openai_backend:OpenAIBackend",
}


def backend_class(name: str) -> type:
    """The class registered under ``name``, or a dotted ``pkg.module.Class`` path for user backends."""
    return resolve_component(BACKENDS, name, "backend")


def load_backend(name: str, model: str, **options: Any) -> Backend:
    """Build a backend by registry name; ``options`` are the backend constructor's keyword arguments."""
    return backend_class(name)(model, **options)


def prompt_problem(prompt: Prompt) -> str | None:
    """Why a prompt cannot be sent at all, or None. Checked per record so one bad input never fails a batch."""
    if isinstance(prompt, str):
        return "empty prompt" if not prompt else None
    if not isinstance(prompt, list) or not prompt:
        return "empty conversation"
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f"message {i} is not a {{'role', 'content'}} mapping"
        if message["role"] not in ROLES:
            return f"message {i} has role {message['role']!r}; expected one of {ROLES}"
        if not isinstance(message["content"], str):
            return f"message {i} content is not a string"
    return None


def context_problem(prompt_tokens: int, max_model_len: int) -> str | None:
    # The model needs at least one free position to generate; vLLM rejects the whole batch otherwise.
    if prompt_tokens >= max_model_len:
        return f"prompt has {prompt_tokens} tokens; the model context is {max_model_len} tokens"
    return None


# -- transient failures -----------------------------------------------------------------------------------------
# An error reason that starts with this prefix names a failure that may pass on its own (server down, rate limit,
# timeout, dead engine): the pipeline quarantines the record as transient and retries it on the next run. Steps copy
# a backend's reason into the quarantine detail (often behind their own prefix), so the mark travels as text.
TRANSIENT = "transient error: "
# Exception classes (by name, anywhere in the MRO, so no heavy import is needed to test for them) whose failures may
# pass on their own. Everything else a step raises (TypeError from a bad config value, KeyError from a bad record)
# is permanent: the same input fails the same way again.
TRANSIENT_EXCEPTIONS = frozenset(
    {
        "TransientBackendError",
        "TimeoutError",
        "ConnectionError",
        "TransportError",  # httpx: timeouts, network and protocol errors
        "EngineDeadError",
        "EngineGenerateError",
        "OutOfMemoryError",
    }
)


class TransientBackendError(RuntimeError):
    """Raised by a backend for a failure of the whole call that may pass on its own (the server is unreachable)."""


def transient(reason: str) -> str:
    """``reason`` marked as transient (see ``TRANSIENT``)."""
    return reason if reason.startswith(TRANSIENT) else TRANSIENT + reason


def is_transient_reason(text: str | None) -> bool:
    return bool(text) and TRANSIENT in text


def is_transient_exception(exc: BaseException) -> bool:
    return any(cls.__name__ in TRANSIENT_EXCEPTIONS for cls in type(exc).__mro__)


@dataclass
class TokenizedPrompt:
    """A prompt that passed the per-record checks: its position in the batch and its token ids."""

    index: int
    token_ids: list[int]


def tokenize_prompt(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids as the model sees them: conversations through the chat template, strings as-is (raw mode)."""
    if isinstance(prompt, str):  # raw-prompt mode: special tokens only as the tokenizer itself adds them
        return tokenizer(prompt).input_ids
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def admit_prompts(
    prompts: Sequence[Prompt], tokenize: Callable[[Prompt], list[int]], max_model_len: int
) -> tuple[dict[int, GenerationResult], list[TokenizedPrompt]]:
    """Split a batch into error results for prompts that cannot be served and tokenized prompts that can."""
    rejected: dict[int, GenerationResult] = {}
    admitted: list[TokenizedPrompt] = []
    for index, prompt in enumerate(prompts):
        problem = prompt_problem(prompt)
        if problem:
            rejected[index] = GenerationResult.failed(problem)
            continue
        token_ids = tokenize(prompt)
        problem = context_problem(len(token_ids), max_model_len)
        if problem:
            rejected[index] = GenerationResult.failed(problem, prompt_tokens=len(token_ids))
            continue
        admitted.append(TokenizedPrompt(index, token_ids))
    return rejected, admitted


class BackendBase:
    """Context-manager plumbing only; subclasses implement generate/close."""

    name = "base"
    model = ""

    def __enter__(self) -> BackendBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


# The special-token ids of a model's generation_config: everything else in it reshapes what generate() produces.
_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


@contextmanager
def plain_generation(model: Any) -> Iterator[None]:
    """Inside the block, ``model.generate`` (a peft model or a plain one) takes only the special-token ids from the
    model's own generation_config; callers set temperature, top_k and top_p (library defaults 1.0, 50, 1.0).

    transformers fills every field a call leaves unset from that config, and chat models ship sampling settings in it
    (Qwen2.5-Instruct: repetition_penalty 1.05; others top_k, min_p, no_repeat_ngram_size...): samples would come from
    a reshaped distribution, unlike vLLM's (which applies none unless asked) and unlike the plain policy that PPO's
    ratio and KL assume. Swapped for the call rather than listed field by field, so a setting added to transformers
    later cannot slip in; min_p, suppress_tokens and the like have no "off" value but None, which is what gets filled.
    """
    from transformers import GenerationConfig

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = inner.generation_config
    inner.generation_config = GenerationConfig(**{key: getattr(own, key, None) for key in _TOKEN_FIELDS})
    try:
        yield
    finally:
        inner.generation_config = own
