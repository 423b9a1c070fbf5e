"""A scripted backend for step unit tests: answers from a function of the prompt, records every call."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from rlaif.schema import Completion, GenerationParams, GenerationResult, Prompt, TokenLogprob

Answer = str | list[str] | GenerationResult | Exception


class ScriptedBackend:
    """``respond(prompt_text, params) -> answer``: a string (repeated n times), a list of n strings, a full
    GenerationResult, or an Exception (returned as an error result for that prompt).

    ``logprobs``: optional ``respond_logprobs(prompt_text, params) -> dict[token, logprob]`` used as the top
    alternatives of the first generated token when ``params.logprobs`` is set (for soft-label judges).
    """

    name = "scripted"

    def __init__(
        self,
        respond: Callable[[str, GenerationParams], Answer],
        respond_logprobs: Callable[[str, GenerationParams], dict[str, float]] | None = None,
        model: str = "scripted-model",
    ) -> None:
        self.respond = respond
        self.respond_logprobs = respond_logprobs
        self.model = model
        self.calls: list[tuple[list[Prompt], GenerationParams]] = []

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[GenerationResult]:
        self.calls.append((list(prompts), params))
        return [self._one(p, params) for p in prompts]

    def _one(self, prompt: Prompt, params: GenerationParams) -> GenerationResult:
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        answer: Any = self.respond(text, params)
        if isinstance(answer, GenerationResult):
            return answer
        if isinstance(answer, Exception):
            return GenerationResult.failed(str(answer), prompt_tokens=len(text.split()))
        texts = [answer] * params.n if isinstance(answer, str) else list(answer)
        completions = [self._completion(t, text, params) for t in texts]
        return GenerationResult(completions=completions, prompt_tokens=len(text.split()))

    def _completion(self, text: str, prompt_text: str, params: GenerationParams) -> Completion:
        logprobs = None
        if params.logprobs is not None:
            top = self.respond_logprobs(prompt_text, params) if self.respond_logprobs else {text: 0.0}
            first = text.split()[0] if text.split() else text
            logprobs = [TokenLogprob(token=first, logprob=top.get(first, -math.inf), top=top)]
        return Completion(
            text=text, completion_tokens=max(1, len(text.split())), finish_reason="stop", logprobs=logprobs
        )

    def close(self) -> None:
        pass

    def __enter__(self) -> ScriptedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
