"""Records shared by every layer: generation inputs and results.

A prompt is either a conversation (a list of ``{"role", "content"}`` messages, rendered with the model's chat
template) or a plain string (raw-prompt mode: sent to the model as-is, no template, as Magpie-style methods need).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]
Conversation = list[Message]
Prompt = Conversation | str


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter directory (saved by peft) applied to one request."""

    name: str
    path: str


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters shared by all backends. Structured outputs: at most one of choice/regex/json_schema."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # number of top alternatives per generated token; 0 = only the sampled token
    choice: tuple[str, ...] | None = None
    regex: str | None = None
    json_schema: dict[str, Any] | None = None
    lora: LoraAdapter | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")
        structured = [k for k in ("choice", "regex", "json_schema") if getattr(self, k) is not None]
        if len(structured) > 1:
            raise ValueError(f"at most one structured output constraint, got {structured}")
        if self.choice is not None and not self.choice:
            raise ValueError("choice must list at least one string")


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its log-probability and the top alternatives (token text -> logprob)."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | backend-specific
    logprobs: list[TokenLogprob] | None = None
    # The sampled ids, through the stop token that ended the completion when one did (the vllm and hf backends; None
    # where a backend cannot say): what a trainer scores, since re-tokenizing ``text`` need not give them back.
    token_ids: list[int] | None = None


@dataclass(frozen=True)
class GenerationResult:
    """The n completions of one prompt, or an error that names why this prompt got none."""

    completions: list[Completion]
    prompt_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.completions)

    @classmethod
    def failed(cls, reason: str, prompt_tokens: int = 0) -> GenerationResult:
        return cls(completions=[], prompt_tokens=prompt_tokens, error=reason)
