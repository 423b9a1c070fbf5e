"""Evol-Instruct (Xu et al. 2023, WizardLM): harder and rarer instructions by evolving seed instructions; the
column conventions are Self-Instruct's (``rlaif.steps.instructions``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, field_validator

from rlaif.steps.base import (
    BatchResult,
    ParamColumn,
    Quarantined,
    Record,
    Step,
    StepContext,
    StepParams,
    record_digest,
    sampling_overrides,
)
from rlaif.steps.instructions import SAMPLING, normal_form, rouge_l, user_turn, words
from rlaif.templates import render, template_path

# -- Evol-Instruct -------------------------------------------------------------------------------------------------
EVOL_METHODS = {
    "constraints": "depth",
    "deepen": "depth",
    "concretize": "depth",
    "reasoning": "depth",
    "breadth": "breadth",
}
# Phrases of the evolution prompts themselves: an evolution that repeats them copied the prompt (paper rule 4).
PROMPT_MARKERS = ("given prompt", "rewritten prompt", "created prompt", "#the given prompt#")
REFUSALS = ("sorry", "as an ai", "i cannot", "i can't", "i am unable", "i'm unable")
_STOP_WORDS_TEXT = """a an the and or but if then of to in on at by for with about as is are was were be been being it
its this that these those i you he she we they me him her us them my your our their what which who whom how why when
where do does did not no yes so than too very can will just should would could may might must there here"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


def evolution_problem(current: str, evolved: str, finish_reason: str, max_similarity: float) -> str | None:
    """Why an evolution is eliminated (WizardLM section 3.3, applied to the evolved text), or None if it stands."""
    tokens = words(evolved)
    lowered = evolved.lower()
    if not evolved.strip():
        return "empty evolution"
    if finish_reason == "length":
        return "truncated evolution"
    if any(marker in lowered for marker in PROMPT_MARKERS):
        return "copies the evolution prompt"
    if any(refusal in lowered for refusal in REFUSALS) and len(tokens) < 80:
        return "refusal"
    if all(token in STOP_WORDS for token in tokens):
        return "only punctuation and stop words"
    if normal_form(evolved) == normal_form(current) or rouge_l(tokens, words(current)) >= max_similarity:
        return "no new information"
    return None


class EvolInstructParams(StepParams):
    model: str = Field(description="name under models:")
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    column: str = "instruction"
    rounds: int = Field(1, ge=1, description="evolutions per instruction (WizardLM ran 4 epochs)")
    methods: list[str] = Field(default_factory=lambda: list(EVOL_METHODS), min_length=1)
    max_similarity: float = Field(
        0.9, gt=0, le=1, description="ROUGE-L F to the previous text at or above: no new information"
    )
    seed: int = 0
    depth_template: str | None = None
    breadth_template: str | None = None

    @field_validator("methods")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in EVOL_METHODS]
        if unknown:
            raise ValueError(f"unknown evolution method(s) {unknown}; choose from {list(EVOL_METHODS)}")
        return value


@dataclass
class _Evolution:
    record: Record
    original: str
    current: str
    history: list[dict[str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    error: str | None = None


class EvolInstruct(Step):
    """Harder and rarer instructions by evolution (Xu et al. 2023, WizardLM / Evol-Instruct).

    Inputs: ``instruction`` (``column``). Each of ``rounds`` rounds evolves the current text with one method
    chosen by a hash of (seed, original instruction, round): in-depth (add constraints, deepen, concretize,
    increase reasoning steps) or in-breadth (mutation). A failed evolution is eliminated, as in the paper, and the
    next round evolves the last good text again. Elimination reasons: "empty evolution", "truncated evolution",
    "copies the evolution prompt", "refusal" (sorry/refusal phrase in fewer than 80 words), "only punctuation and
    stop words", "no new information" (identical, or ROUGE-L to the previous text >= ``max_similarity``).
    Outputs: ``instruction`` and ``prompt`` (the last successful evolution), ``original_instruction``,
    ``evolution_history`` (list of {method, text}), ``evolution_failures`` (reasons), ``origin`` ("evol_instruct").
    A record whose every round failed is dropped with its first reason; a failed request quarantines it.
    Simplified vs the paper: elimination rules 2-3 (refusal, stop words) apply to the evolved instruction, not to a
    response to it, and rule 1 (no information gain, judged by ChatGPT there) is a ROUGE-L threshold.
    """

    Params = EvolInstructParams
    inputs = (ParamColumn("column"),)
    outputs = ("instruction", "prompt", "original_instruction", "evolution_history", "evolution_failures", "origin")
    phase = "generate"
    default_batch_size = 256
    params: EvolInstructParams

    def files(self) -> list[Path]:
        return [
            template_path("evol_in_depth.jinja", self.params.depth_template, self.base_dir),
            template_path("evol_in_breadth.jinja", self.params.breadth_template, self.base_dir),
        ]

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        states = []
        for record in records:
            text = record.get(self.params.column)
            if isinstance(text, str) and text.strip():
                states.append(_Evolution(record, text.strip(), text.strip()))
            else:
                result.dropped.append((record, "empty instruction"))
        for round_index in range(self.params.rounds):
            self._round([s for s in states if s.error is None], round_index, result, ctx)
        for state in states:
            if state.error is not None:
                result.quarantined.append(Quarantined(state.record, "generation failed", state.error))
            elif not state.history:
                result.dropped.append((state.record, state.failures[0]))
            else:
                result.records.append(
                    {
                        **state.record,
                        "instruction": state.current,
                        "prompt": state.current,
                        "original_instruction": state.original,
                        "evolution_history": state.history,
                        "evolution_failures": state.failures,
                        "origin": "evol_instruct",
                    }
                )
        return result

    def method(self, original: str, round_index: int) -> str:
        methods = self.params.methods
        return methods[int(record_digest(self.params.seed, original, round_index).hex(), 16) % len(methods)]

    def _round(self, states: list[_Evolution], round_index: int, result: BatchResult, ctx: StepContext) -> None:
        if not states:
            return
        depth, breadth = self.files()
        methods = [self.method(s.original, round_index) for s in states]
        prompts = [
            user_turn(
                render(depth, instruction=s.current, method=m)
                if EVOL_METHODS[m] == "depth"
                else render(breadth, instruction=s.current)
            )
            for s, m in zip(states, methods, strict=True)
        ]
        sampling = ctx.sampling(self.params.model, **sampling_overrides(self.params, SAMPLING, n=1))
        answers = ctx.backend(self.params.model).generate(prompts, sampling)
        for state, method, answer in zip(states, methods, answers, strict=True):
            result.tokens_in += answer.prompt_tokens
            result.tokens_out += answer.completion_tokens
            if not answer.ok or not answer.completions:
                state.error = str(answer.error or "no completion")
                continue
            evolved = answer.completions[0].text.strip()
            problem = evolution_problem(
                state.current, evolved, answer.completions[0].finish_reason, self.params.max_similarity
            )
            if problem:
                state.failures.append(problem)
            else:
                state.current = evolved
                state.history.append({"method": method, "text": evolved})
