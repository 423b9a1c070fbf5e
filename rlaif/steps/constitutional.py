"""Constitutional AI: a judge that labels comparisons against sampled principles (RL-CAI), driven by a constitution
file (YAML: ``principles`` with ``id``, ``comparison`` and optionally ``critique_request`` / ``revision_request``; see
constitutions/default.yaml). Critique-and-revise (SL-CAI) reads the same files: ``rlaif.steps.critique``.

A constitution is validated when the pipeline is (``rlaif validate``): a missing file is reported through ``files()``,
a malformed one (no principles, a principle without an id, duplicate ids, unknown keys) by ``output_columns``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlaif.schema import GenerationResult
from rlaif.steps import verdicts
from rlaif.steps.base import (
    BatchResult,
    ParamColumn,
    Quarantined,
    Record,
    Step,
    StepContext,
    StepParams,
    record_digest,
)
from rlaif.steps.judge_check import JudgeCheck, check_files, check_in_setup
from rlaif.steps.judges import (
    JUDGE_FAILED,
    NO_LOGPROBS,
    check_template,
    conversation_text,
    count_tokens,
    first_text,
    pairs_only,
)
from rlaif.templates import CONSTITUTIONS_DIR, render, template_path


# -- constitution files ------------------------------------------------------------------------------------------
class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    comparison: str = Field(min_length=1, description='a question answered with (A) or (B): "Which response ...?"')
    critique_request: str | None = None
    revision_request: str | None = None


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    description: str | None = None
    principles: list[Principle] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> Constitution:
        ids = [p.id for p in self.principles]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate principle id(s) {duplicates}")
        return self

    def revisable(self) -> list[Principle]:
        return [p for p in self.principles if p.critique_request and p.revision_request]


def load_constitution(path: Path) -> Constitution:
    """Read and validate a constitution; a ``ValueError`` names the file and every problem found."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"constitution {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not data.get("principles"):
        raise ValueError(f"constitution {path}: no principles (expected a mapping with a non-empty `principles` list)")
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"constitution {path}: {problems}") from None


def sample_principles(principles: list[Principle], k: int, *key: object) -> list[Principle]:
    """``k`` distinct principles chosen by a hash of ``key``: the same record always gets the same principles, and a
    batch redone after a kill labels exactly as before, whatever else ran."""
    digest = record_digest(*key)
    return random.Random(int.from_bytes(digest[:8], "big")).sample(principles, min(k, len(principles)))


def constitution_path(value: str | None, base_dir: Path) -> Path:
    if value is None:
        return CONSTITUTIONS_DIR / "default.yaml"
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


# -- RL-CAI: constitutional judge --------------------------------------------------------------------------------
class ConstitutionalJudgeParams(StepParams):
    model: str
    constitution: str | None = Field(None, description="constitution YAML path; default constitutions/default.yaml")
    template: str | None = Field(None, description="default prompts/constitutional_judge.jinja")
    k_principles: int = Field(1, ge=1, description="principles per comparison; their soft labels are averaged")
    cot: bool = Field(False, description="reason first, then ask for the letter in a second call (Lee et al.)")
    cot_max_tokens: int = Field(128, ge=1)
    top_logprobs: int = Field(20, ge=2, le=20)
    tie_margin: float = Field(0.0, ge=0, lt=0.5, description="|p_a - 0.5| <= tie_margin is a tie")
    structured: bool = Field(True, description="constrain the answer token to A or B (its raw log-probs are read)")
    temperature: float = Field(0.0, ge=0)
    seed: int = Field(0, description="changes which principles are sampled")
    prompt_column: str = "prompt"
    check: JudgeCheck | None = Field(None, description="score the judge on human labels before it labels")


class ConstitutionalJudge(Step):
    """Soft preference labels from a constitution (RL-CAI, Bai et al. 2022; RLAIF, Lee et al. 2023).

    Inputs: ``prompt``, ``responses`` (A = responses[0], B = responses[1]).
    Outputs: ``p_a`` (soft label: P(A better)), ``preference`` ("A" | "B" | "tie" by ``tie_margin``), ``confidence``
    (max(p_a, 1 - p_a)), ``consistent`` (both orders favour the same response, for every principle),
    ``principles`` (ids used), ``judge_outputs`` (raw texts, per principle: A-first order then B-first order),
    ``judge_model``. The ``k_principles`` are sampled per comparison (pipeline seed, ``seed``, step name, the
    conversation and both responses in either order): reproducible, and independent across pairs of one prompt.
    Per principle and order, P("A") = exp(lpA) / (exp(lpA) + exp(lpB)) from the top-k log-probabilities of the
    first answer token; both orders are averaged, P(A) = (p_AB + 1 - p_BA) / 2, then principles are averaged.
    Neither letter among the top-k in some order: quarantined as "no answer-token logprobs".
    ``check:`` scores the judge on human-labelled pairs before it labels, as for ``pairwise_judge``.
    Simplifications: zero-shot (the papers use few-shot multiple-choice prompts); one comparison question per
    principle; the conversation is shown as a plain Human/Assistant transcript.
    """

    Params = ConstitutionalJudgeParams
    inputs = (ParamColumn("prompt_column"), "responses")
    outputs = ("p_a", "preference", "confidence", "consistent", "principles", "judge_outputs", "judge_model")
    phase = "label"
    default_batch_size = 64
    params: ConstitutionalJudgeParams

    def constitution_file(self) -> Path:
        return constitution_path(self.params.constitution, self.base_dir)

    def template(self) -> Path:
        return template_path("constitutional_judge.jinja", self.params.template, self.base_dir)

    def files(self) -> list[Path]:
        return [self.constitution_file(), self.template(), *check_files(self)]

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        if self.constitution_file().is_file():
            load_constitution(self.constitution_file())
        for part in ("judge", "answer"):
            check_template(
                self.template(),
                part=part,
                conversation="c",
                question="q",
                response_a="a",
                response_b="b",
                cot=self.params.cot,
            )
        return super().output_columns(available)

    def setup(self, ctx: StepContext) -> None:
        self.constitution = load_constitution(self.constitution_file())
        self.checked = check_in_setup(self, ctx)  # raises JudgeCheckFailed below min_agreement: nothing labelled

    def setup_report(self) -> dict[str, Any]:
        return getattr(self, "checked", {})

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        pairs = pairs_only(records, result)
        chosen = [self._principles(r, ctx.pipeline_seed) for r in pairs]
        # Job order: record, principle, then the A-first and B-first presentations.
        jobs = [
            (record, principle, swap)
            for record, ps in zip(pairs, chosen, strict=True)
            for principle in ps
            for swap in (False, True)
        ]
        prompts = [self._prompt(record, principle, swap, "judge") for record, principle, swap in jobs]
        texts, answers = self._generate(prompts, jobs, result, ctx)
        judge_model = ctx.model_reference(self.params.model)
        start = 0
        for record, principles in zip(pairs, chosen, strict=True):
            end = start + 2 * len(principles)
            outcome = self._label(record, principles, texts[start:end], answers[start:end])
            start = end
            if isinstance(outcome, Quarantined):
                result.quarantined.append(outcome)
            else:
                result.records.append({**record, **outcome, "judge_model": judge_model})
        return result

    def _principles(self, record: Record, pipeline_seed: int) -> list[Principle]:
        # Keyed by the comparison, as Bai et al. 2022 sample a principle per comparison: the prompt alone would give
        # every pair of a prompt (and every loop round's new pairs) one principle. The responses are sorted so the
        # draw does not depend on which one the record lists first.
        comparison = (conversation_text(record[self.params.prompt_column]), *sorted(record["responses"][:2]))
        return sample_principles(
            self.constitution.principles,
            self.params.k_principles,
            pipeline_seed,  # the pipeline seed changes which principles are drawn
            self.params.seed,
            self.name,
            *comparison,
        )

    def _prompt(self, record: Record, principle: Principle, swap: bool, part: str) -> list[dict[str, str]]:
        a, b = record["responses"][:2]
        text = render(
            self.template(),
            part=part,
            conversation=conversation_text(record[self.params.prompt_column]),
            question=principle.comparison,
            response_a=b if swap else a,
            response_b=a if swap else b,
            cot=self.params.cot,
        )
        return [{"role": "user", "content": text}]

    def _generate(
        self, prompts: list[list[dict[str, str]]], jobs: list[Any], result: BatchResult, ctx: StepContext
    ) -> tuple[list[str], list[GenerationResult]]:
        """(raw texts, answer results) per job; with cot, a reasoning call first, then the answer call on it."""
        if not prompts:
            return [], []
        backend, p = ctx.backend(self.params.model), self.params
        rationales = [""] * len(prompts)
        if p.cot:
            reasoning = backend.generate(
                prompts, ctx.sampling(p.model, n=1, temperature=p.temperature, max_tokens=p.cot_max_tokens)
            )
            count_tokens(result, reasoning)
            rationales = [first_text(g) for g in reasoning]
            prompts = [
                [*prompt, {"role": "assistant", "content": why}, *self._prompt(r, pr, s, "answer")]
                for prompt, why, (r, pr, s) in zip(prompts, rationales, jobs, strict=True)
            ]
        answers = backend.generate(
            prompts,
            ctx.sampling(
                p.model,
                n=1,
                temperature=p.temperature,
                max_tokens=2,
                logprobs=p.top_logprobs,
                choice=("A", "B") if p.structured else None,
            ),
        )
        count_tokens(result, answers)
        if p.cot:  # a failed reasoning call fails its job, whatever the answer call made of the empty reasoning
            answers = [a if r.ok else r for r, a in zip(reasoning, answers, strict=True)]
        texts = [
            f"{why}\n\nAnswer: {first_text(g)}" if p.cot else first_text(g)
            for why, g in zip(rationales, answers, strict=True)
        ]
        return texts, answers

    def _label(
        self, record: Record, principles: list[Principle], texts: list[str], answers: list[GenerationResult]
    ) -> dict[str, Any] | Quarantined:
        failed = [g.error or "no completion" for g in answers if not (g.ok and g.completions)]
        if failed:
            return Quarantined(record, JUDGE_FAILED, failed[0])
        probabilities = [verdicts.answer_p_a(g.completions[0]) for g in answers]
        if any(p is None for p in probabilities):
            return Quarantined(
                record, NO_LOGPROBS, "neither A nor B among the top-k answer tokens", raw_output="\n---\n".join(texts)
            )
        orders = list(zip(probabilities[0::2], probabilities[1::2], strict=True))
        p_a, consistent = verdicts.soft_label(orders)  # type: ignore[arg-type]
        return {
            "p_a": p_a,
            "preference": verdicts.soft_preference(p_a, self.params.tie_margin),
            "confidence": max(p_a, 1.0 - p_a),
            "consistent": consistent,
            "principles": [pr.id for pr in principles],
            "judge_outputs": texts,
        }
