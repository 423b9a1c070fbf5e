"""LLM-as-judge steps: pairwise comparison of two responses and pointwise rubric ratings.

Column contract shared by the judges: ``prompt`` (a string or a list of messages) and ``responses`` (list of strings,
from ``generate_responses``); pairwise judges compare A = ``responses[0]`` with B = ``responses[1]`` and drop records
with fewer than two responses ("fewer than 2 responses"). The raw judge output is always kept beside parsed fields.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from pydantic import Field, field_validator, model_validator

from rlaif.formats import as_messages, prompt_text
from rlaif.schema import Completion, GenerationParams, GenerationResult, Prompt
from rlaif.steps import verdicts
from rlaif.steps.base import BatchResult, ParamColumn, Quarantined, Record, Step, StepContext, StepParams
from rlaif.steps.judge_check import JudgeCheck, check_files, check_in_setup
from rlaif.templates import DEFAULT_RUBRIC, render, template_path

PARSE_FAILURE = verdicts.PARSE_FAILURE
JUDGE_FAILED = "judge failed"  # the backend returned no output for the prompt (context overflow, dead engine...)
FEW_RESPONSES = "fewer than 2 responses"
NO_LOGPROBS = verdicts.NO_LOGPROBS  # logprobs were asked for, the verdict token has none for the options
ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


# -- helpers shared with the constitutional steps ----------------------------------------------------------------
def conversation_text(prompt: Prompt) -> str:
    """A prompt column value as "Human: ..." / "Assistant: ..." lines (Constitutional AI's transcript format)."""
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    lines = [f"{names.get(m.get('role', ''), m.get('role', ''))}: {m.get('content', '')}" for m in as_messages(prompt)]
    return "\n\n".join(lines)


def pairs_only(records: Sequence[Record], result: BatchResult) -> list[Record]:
    """Records with at least two responses; the rest are dropped with a stable reason."""
    kept = []
    for record in records:
        responses = record.get("responses")
        if isinstance(responses, list) and len(responses) >= 2 and all(isinstance(r, str) for r in responses[:2]):
            kept.append(record)
        else:
            result.dropped.append((record, FEW_RESPONSES))
    return kept


def count_tokens(result: BatchResult, generated: Sequence[GenerationResult]) -> None:
    result.tokens_in += sum(g.prompt_tokens for g in generated)
    result.tokens_out += sum(g.completion_tokens for g in generated)


def first_text(generated: GenerationResult) -> str:
    return generated.completions[0].text if generated.completions else ""


def check_template(path: Path, **variables: Any) -> None:
    """Render a template with sample values at validation time: a syntax error or an unknown placeholder in a
    user's template fails ``rlaif validate``, not the first batch. A missing file is reported by ``files()``."""
    if not path.is_file():
        return
    try:
        render(path, **variables)
    except TemplateError as exc:
        raise ValueError(f"template {path}: {type(exc).__name__}: {exc}") from exc


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


# -- pairwise ----------------------------------------------------------------------------------------------------
class PairwiseJudgeParams(StepParams):
    model: str
    template: str | None = Field(None, description="a Jinja template path; default prompts/pairwise_judge.jinja")
    cot: bool = Field(False, description="explain before the verdict ([[A]]/[[B]]/[[C]]) instead of one word")
    parser: str | None = Field(None, description="registered verdict parser; default: brackets with cot, else choice")
    structured: bool = Field(True, description="constrain the verdict to A/B/tie (choice) when cot is false")
    logprobs: bool = Field(False, description="confidence from the verdict token's probabilities, both orders")
    top_logprobs: int = Field(20, ge=1, le=20)  # vLLM serves at most 20 alternatives per token by default
    temperature: float = Field(0.0, ge=0)
    max_tokens: int | None = Field(None, ge=1, description="default: 4 without cot, the model's with cot")
    prompt_column: str = "prompt"
    check: JudgeCheck | None = Field(None, description="score the judge on human labels before it labels")

    @field_validator("parser")
    @classmethod
    def _known_parser(cls, value: str | None) -> str | None:
        return None if value is None else verdicts.registered(verdicts.VERDICT_PARSERS, value, "verdict parser")


class PairwiseJudge(Step):
    """LLM-as-judge comparison of two responses, asked in both orders (MT-Bench pairwise judge, Zheng et al. 2023).

    Inputs: ``prompt``, ``responses`` (A = responses[0], B = responses[1]).
    Outputs: ``preference`` ("A" | "B" | "tie", in the original order), ``confidence`` (probability of the
    preference: the verdict-token probabilities averaged over both orders with ``logprobs: true``, else 1.0 when
    both orders agree and 0.5 when they do not), ``consistent`` (both orders gave the same verdict),
    ``judge_outputs`` (raw texts: [A-first order, B-first order]), ``judge_model``; with ``logprobs: true`` also
    ``p_a``, the soft label P(A better) = P(A) + P(tie)/2 of the averaged verdict distribution (a tie is a coin
    flip; with no tie mass this is RLAIF's debiased (p_AB + 1 - p_BA) / 2, as the constitutional judge writes it).
    make_pairs carries it to the pairs as ``chosen_prob``, which ``train.soft_labels`` trains on.
    Position bias: disagreeing orders become "tie", or the side the averaged probabilities favour. Unparseable
    output in either order is quarantined as "judge parse failure" with the raw output. With ``logprobs: true``,
    ``confidence`` is always a measured probability: a record whose verdict token has no log-probabilities for the
    options in either order (none returned, the letter outside the top-k, no "[[X" with cot) is quarantined as
    "no answer-token logprobs", never given the agreement fallback.
    ``check: {data, sample, min_agreement, seed}`` scores the judge on human-labelled pairs in ``setup``, before it
    labels anything (``rlaif.steps.judge_check``): recorded in the step's stats and the dataset card; below
    ``min_agreement`` the run stops.
    Simplification: one turn (the last user message); MT-Bench's multi-turn and reference-guided prompts are not here.
    """

    Params = PairwiseJudgeParams
    inputs = (ParamColumn("prompt_column"), "responses")
    outputs = ("preference", "confidence", "consistent", "judge_outputs", "judge_model")
    phase = "label"
    default_batch_size = 128
    params: PairwiseJudgeParams

    def template(self) -> Path:
        return template_path("pairwise_judge.jinja", self.params.template, self.base_dir)

    def files(self) -> list[Path]:
        return [self.template(), *check_files(self)]

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        check_template(self.template(), question="q", response_a="a", response_b="b", cot=self.params.cot)
        columns = super().output_columns(available)
        return columns | {"p_a"} if columns is not None and self.params.logprobs else columns

    def setup(self, ctx: StepContext) -> None:
        self.checked = check_in_setup(self, ctx)  # raises JudgeCheckFailed below min_agreement: nothing labelled

    def setup_report(self) -> dict[str, Any]:
        return getattr(self, "checked", {})

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        pairs = pairs_only(records, result)
        prompts = []
        for record in pairs:
            a, b = record["responses"][:2]
            prompts += [self._prompt(record, a, b), self._prompt(record, b, a)]
        generated = ctx.backend(self.params.model).generate(prompts, self._sampling(ctx)) if pairs else []
        count_tokens(result, generated)
        judge_model = ctx.model_reference(self.params.model)
        for i, record in enumerate(pairs):
            outcome = self._judge(record, generated[2 * i], generated[2 * i + 1])
            if isinstance(outcome, Quarantined):
                result.quarantined.append(outcome)
            else:
                result.records.append({**record, **outcome, "judge_model": judge_model})
        return result

    def _sampling(self, ctx: StepContext) -> GenerationParams:
        p = self.params
        max_tokens = p.max_tokens or (None if p.cot else 4)  # "A", "B" and "tie" are one token each
        return ctx.sampling(
            p.model,
            n=1,
            temperature=p.temperature,
            logprobs=p.top_logprobs if p.logprobs else None,
            choice=verdicts.VERDICTS if p.structured and not p.cot else None,
            **({"max_tokens": max_tokens} if max_tokens else {}),
        )

    def _prompt(self, record: Record, first: str, second: str) -> Prompt:
        question = prompt_text(record[self.params.prompt_column])
        text = render(self.template(), question=question, response_a=first, response_b=second, cot=self.params.cot)
        return user(text)

    def _judge(self, record: Record, ab: GenerationResult, ba: GenerationResult) -> dict[str, Any] | Quarantined:
        if not (ab.ok and ba.ok and ab.completions and ba.completions):
            return Quarantined(record, JUDGE_FAILED, ab.error or ba.error or "no completion")
        texts = [first_text(ab), first_text(ba)]
        parser = verdicts.VERDICT_PARSERS[self.params.parser or ("brackets" if self.params.cot else "choice")]
        first, second = parser(texts[0]), parser(texts[1])
        if first is None or second is None:
            order = "A-first" if first is None else "B-first"
            raw = f"[A-first order]\n{texts[0]}\n[B-first order]\n{texts[1]}"
            return Quarantined(record, PARSE_FAILURE, f"no verdict in the {order} order", raw_output=raw)
        dist = self._distribution(ab.completions[0], ba.completions[0])
        if isinstance(dist, str):
            raw = f"[A-first order]\n{texts[0]}\n[B-first order]\n{texts[1]}"
            return Quarantined(
                record, NO_LOGPROBS, f"no verdict log-probabilities in the {dist} order", raw_output=raw
            )
        preference, confidence, consistent = verdicts.combine_orders(first, verdicts.FLIP[second], dist)
        outcome = {
            "preference": preference,
            "confidence": confidence,
            "consistent": consistent,
            "judge_outputs": texts,
        }
        return outcome if dist is None else {"p_a": verdicts.tie_split_p_a(dist), **outcome}

    def _distribution(self, ab: Completion, ba: Completion) -> dict[str, float] | str | None:
        """Averaged verdict probabilities over both orders (original order); None without ``logprobs``; the order
        that lacks them ("A-first" / "B-first") when missing: a made-up confidence would pass for a measured one."""
        if not self.params.logprobs:
            return None
        first = verdicts.verdict_probabilities(ab, self.params.cot)
        second = verdicts.verdict_probabilities(ba, self.params.cot)
        if first is None or second is None:
            return "A-first" if first is None else "B-first"
        return verdicts.average_distributions([first, verdicts.flip_distribution(second)])


# -- ratings -----------------------------------------------------------------------------------------------------
class RatingJudgeParams(StepParams):
    model: str
    aspects: list[str] | str | None = Field(
        None, description="None: one rubric score; 'ultrafeedback' or a list of its aspects: one prompt per aspect"
    )
    template: str | None = Field(None, description="single-aspect template path; default prompts/rating_judge.jinja")
    templates: dict[str, str] = Field(default_factory=dict, description="aspect -> template path overrides")
    rubric: str | None = None
    scale: tuple[int, int] = (1, 5)
    parser: str = "rating_line"
    guided: bool = Field(
        True,
        description="regex-constrain the output to 'Rating: N\\nRationale: ...' (vllm and "
        "vLLM servers; set false for the hf backend, which has no regex)",
    )
    temperature: float = Field(0.0, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    prompt_column: str = "prompt"

    @field_validator("scale", mode="before")
    @classmethod
    def _scale_text(cls, value: Any) -> Any:
        if isinstance(value, str) and ".." in value:  # `scale: 1..10` reads naturally in YAML
            return tuple(part.strip() for part in value.split("..", 1))
        return value

    @field_validator("parser")
    @classmethod
    def _known_parser(cls, value: str) -> str:
        return verdicts.registered(verdicts.RATING_PARSERS, value, "rating parser")

    @model_validator(mode="after")
    def _check(self) -> RatingJudgeParams:
        if self.scale[0] >= self.scale[1]:
            raise ValueError(f"scale must be low..high with low < high, got {self.scale}")
        named = [] if self.aspects is None else self.aspect_names()
        unknown = [a for a in named if a not in ULTRAFEEDBACK_ASPECTS] + [a for a in self.templates if a not in named]
        if unknown:
            raise ValueError(
                f"unknown or unused aspect(s) {unknown}; aspects are {list(ULTRAFEEDBACK_ASPECTS)} "
                "('templates' overrides only aspects named in 'aspects'; use 'template' otherwise)"
            )
        return self

    def aspect_names(self) -> list[str]:
        if self.aspects is None:
            return ["overall"]
        if self.aspects == "ultrafeedback":
            return list(ULTRAFEEDBACK_ASPECTS)
        return [self.aspects] if isinstance(self.aspects, str) else list(self.aspects)


class RatingJudge(Step):
    """Pointwise rubric score of every response: single-answer grading (Zheng et al. 2023), or per-aspect
    UltraFeedback ratings (Cui et al. 2023: helpfulness, honesty, instruction_following, truthfulness).

    Inputs: ``prompt``, ``responses`` (at least one; records without are dropped as "no responses").
    Outputs: ``ratings`` (one float per response: the mean over aspects), ``aspect_ratings`` (per response,
    aspect -> score), ``rating_rationales`` (per response, aspect -> rationale), ``judge_outputs`` (per response,
    aspect -> raw text), ``judge_model``. A rating that is missing, ambiguous or off the scale for any response
    quarantines the record as "judge parse failure".
    Simplification: UltraFeedback rates the four completions of a prompt together in one prompt per aspect; here
    every response is rated alone (one prompt per response and aspect), which small judges follow more reliably.
    """

    Params = RatingJudgeParams
    inputs = (ParamColumn("prompt_column"), "responses")
    outputs = ("ratings", "aspect_ratings", "rating_rationales", "judge_outputs", "judge_model")
    phase = "label"
    default_batch_size = 64
    params: RatingJudgeParams

    def template(self, aspect: str) -> Path:
        if aspect == "overall":
            return template_path("rating_judge.jinja", self.params.template, self.base_dir)
        return template_path(f"ultrafeedback_{aspect}.jinja", self.params.templates.get(aspect), self.base_dir)

    def files(self) -> list[Path]:
        return [self.template(a) for a in self.params.aspect_names()]

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        for aspect in self.params.aspect_names():
            check_template(self.template(aspect), question="q", response="r", rubric="x", low=1, high=5)
        return super().output_columns(available)

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        rated = [r for r in records if isinstance(r.get("responses"), list) and r["responses"]]
        result.dropped += [(r, "no responses") for r in records if not any(r is k for k in rated)]
        aspects = self.params.aspect_names()
        jobs = [(i, j, a) for i, r in enumerate(rated) for j in range(len(r["responses"])) for a in aspects]
        prompts = [self._prompt(rated[i], rated[i]["responses"][j], a) for i, j, a in jobs]
        generated = ctx.backend(self.params.model).generate(prompts, self._sampling(ctx)) if jobs else []
        count_tokens(result, generated)
        outputs: dict[tuple[int, int, str], GenerationResult] = dict(zip(jobs, generated, strict=True))
        judge_model = ctx.model_reference(self.params.model)
        for i, record in enumerate(rated):
            per_response = [[outputs[i, j, a] for a in aspects] for j in range(len(record["responses"]))]
            outcome = self._collect(record, per_response)
            if isinstance(outcome, Quarantined):
                result.quarantined.append(outcome)
            else:
                result.records.append({**record, **outcome, "judge_model": judge_model})
        return result

    def _sampling(self, ctx: StepContext) -> GenerationParams:
        low, high = self.params.scale
        scores = "|".join(str(v) for v in range(high, low - 1, -1))
        regex = rf"Rating: ({scores})\nRationale: [^\n]{{1,400}}" if self.params.guided else None
        return ctx.sampling(
            self.params.model,
            n=1,
            temperature=self.params.temperature,
            regex=regex,
            **({"max_tokens": self.params.max_tokens} if self.params.max_tokens else {}),
        )

    def _prompt(self, record: Record, response: str, aspect: str) -> Prompt:
        low, high = self.params.scale
        rubric = self.params.rubric or (DEFAULT_RUBRIC if aspect == "overall" else "")
        question = prompt_text(record[self.params.prompt_column])
        return user(
            render(self.template(aspect), question=question, response=response, rubric=rubric, low=low, high=high)
        )

    def _collect(self, record: Record, per_response: list[list[GenerationResult]]) -> dict[str, Any] | Quarantined:
        aspects = self.params.aspect_names()
        parse = verdicts.RATING_PARSERS[self.params.parser]
        low, high = self.params.scale
        scores, rationales, raws = [], [], []
        for j, results in enumerate(per_response):
            failed = [g.error or "no completion" for g in results if not (g.ok and g.completions)]
            if failed:
                return Quarantined(record, JUDGE_FAILED, f"response {j}: {failed[0]}")
            texts = [first_text(g) for g in results]
            values = [parse(t) for t in texts]
            for aspect, text, value in zip(aspects, texts, values, strict=True):
                if value is None or not low <= value <= high:
                    why = "no rating" if value is None else f"rating {value:g} is off the scale {low}..{high}"
                    return Quarantined(record, PARSE_FAILURE, f"response {j}, {aspect}: {why}", raw_output=text)
            scores.append(dict(zip(aspects, values, strict=True)))
            rationales.append({a: _rationale(t) for a, t in zip(aspects, texts, strict=True)})
            raws.append(dict(zip(aspects, texts, strict=True)))
        ratings = [sum(s.values()) / len(s) for s in scores]
        return {"ratings": ratings, "aspect_ratings": scores, "rating_rationales": rationales, "judge_outputs": raws}


_RATIONALE = re.compile(r"rationale\s*:\s*(.*)", re.IGNORECASE | re.DOTALL)


def _rationale(text: str) -> str:
    match = _RATIONALE.search(text)
    return (match.group(1) if match else text).strip()
