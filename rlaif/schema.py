"""Records shared by every layer: generation inputs and results.

A prompt is either a conversation (a list of ``{"role", "content"}`` messages, rendered with the model's chat
template) or a plain string (raw-prompt mode: sent to the model as-is, no template, as Magpie-style methods need).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Message = dict[str, str]
Conversation = list[Message]
Prompt = Conversation | str
# How a base model's weights are held for training: bitsandbytes NF4 (QLoRA), int8, or unquantized. `rlaif plan`
# estimates memory for the same choices.
Quantize = Literal["nf4", "int8", "none"]


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
        values = {key: getattr(self, key) for key in _BOUNDS}
        if problems := _bound_problems(values):
            raise ValueError(next(iter(problems.values())))
        structured = [k for k in ("choice", "regex", "json_schema") if getattr(self, k) is not None]
        if len(structured) > 1:
            raise ValueError(f"at most one structured output constraint, got {structured}")
        if self.choice is not None and not self.choice:
            raise ValueError("choice must list at least one string")


# The sampling fields a config file may set on a model, with their types (None allowed where the default is None)
# and bounds: checked at `rlaif validate` (sampling_problems) and again whenever GenerationParams is built.
_TYPES: dict[str, tuple[type, ...]] = {
    "n": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "max_tokens": (int,),
    "seed": (int, type(None)),
    "logprobs": (int, type(None)),
}
_BOUNDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v >= 1, ">= 1"),
    "max_tokens": (lambda v: v >= 1, ">= 1"),
    "temperature": (lambda v: v >= 0, ">= 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "logprobs": (lambda v: v is None or v >= 0, ">= 0"),
}


def _bound_problems(values: dict[str, Any]) -> dict[str, str]:
    return {
        key: f"{key} must be {text}, got {values[key]}"
        for key, (ok, text) in _BOUNDS.items()
        if key in values and not ok(values[key])
    }


def sampling_problems(values: dict[str, Any]) -> dict[str, str]:
    """Per sampling key of ``values`` (n, temperature, top_p, max_tokens, seed, logprobs, stop), why its value cannot
    become a ``GenerationParams`` field; empty when all can. Other keys are not looked at."""
    problems = {}
    for key, kinds in _TYPES.items():
        value = values.get(key)
        if key in values and (isinstance(value, bool) or not isinstance(value, kinds)):
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            problems[key] = f"{key} must be {names}, got {value!r}"
    stop = values.get("stop")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        problems["stop"] = f'stop must be a list of strings (e.g. ["\\n\\n"]), got {stop!r}'
    typed = {key: value for key, value in values.items() if key in _BOUNDS and key not in problems}
    return {**problems, **_bound_problems(typed)}


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
