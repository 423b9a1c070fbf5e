"""The Backend protocol and helpers every backend shares.

``generate(prompts, params)`` returns one ``GenerationResult`` per prompt, in order. A prompt that cannot be served
(empty conversation, longer than the context, rejected by the server) yields a result with ``error`` set; the rest
of the batch is still served. Exceptions escape only for failures of the whole backend (bad configuration).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from rlaif.schema import GenerationParams, GenerationResult, Prompt

VALID_ROLES = ("system", "user", "assistant", "tool")


@runtime_checkable
class Backend(Protocol):
    name: str
    model: str

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[GenerationResult]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Backend: ...

    def __exit__(self, *exc: object) -> None: ...


def prompt_problem(prompt: Prompt) -> str | None:
    """Why a prompt cannot be sent at all, or None. Checked per record so one bad input never fails a batch."""
    if isinstance(prompt, str):
        return "empty prompt" if not prompt else None
    if not isinstance(prompt, list) or not prompt:
        return "empty conversation"
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return f"message {i} is not a {{'role', 'content'}} mapping"
        if message["role"] not in VALID_ROLES:
            return f"message {i} has role {message['role']!r}; expected one of {VALID_ROLES}"
        if not isinstance(message["content"], str):
            return f"message {i} content is not a string"
    return None


def context_problem(prompt_tokens: int, max_model_len: int) -> str | None:
    # The model needs at least one free position to generate; vLLM rejects the whole batch otherwise.
    if prompt_tokens >= max_model_len:
        return f"prompt has {prompt_tokens} tokens; the model context is {max_model_len} tokens"
    return None


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
