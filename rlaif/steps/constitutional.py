"""Constitutional AI: a judge that labels comparisons against sampled principles (RL-CAI) and critique-and-revise
(SL-CAI), both driven by a constitution file (YAML: ``principles`` with ``id``, ``comparison`` and optionally
``critique_request`` / ``revision_request``; see constitutions/default.yaml).

A constitution is validated when the pipeline is (``rlaif validate``): a missing file is reported through ``files()``,
a malformed one (no principles, a principle without an id, duplicate ids, unknown keys) by ``output_columns``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlaif.formats import preference_row, prompt_text, sft_row
from rlaif.schema import GenerationParams, GenerationResult, Prompt
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

EMPTY_REVISION = "empty revision"


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
        return [self.constitution_file(), self.template()]

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


# -- SL-CAI: critique and revision -------------------------------------------------------------------------------
class CritiqueReviseParams(StepParams):
    model: str
    constitution: str | None = None
    critique_template: str | None = None
    revision_template: str | None = None
    rounds: int = Field(1, ge=1)
    target: Literal["first", "all"] = Field("first", description="revise responses[0] only, or every response")
    emit: Literal["columns", "pairs", "sft"] = Field(
        "columns", description="columns: add revision columns; pairs: TRL prompt/chosen/rejected; sft: messages"
    )
    temperature: float | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int = 0
    prompt_column: str = "prompt"


class CritiqueRevise(Step):
    """Critique-and-revise (SL-CAI, Bai et al. 2022): per round, a sampled principle's critique request yields a
    critique of the current response, and its revision request a revision that becomes the current response.

    Inputs: ``prompt``, ``responses`` (records without responses are dropped as "no responses").
    Outputs (``emit: columns``): ``revision`` (final revision), ``critiques``, ``revisions``, ``principles`` (one
    per round), ``revision_model``; with ``target: all`` each is a list over responses. ``emit: pairs``: one TRL
    preference row per revised response (prompt messages, chosen = final revision, rejected = original) with
    those columns as provenance; ``emit: sft``: ``messages`` ending in the final revision, same provenance.
    An empty critique or revision quarantines the record as "empty revision".
    Simplifications: zero-shot prompts (the paper uses few-shot critique/revision examples), and each round shows
    only the conversation and the current response, not the earlier critiques, to stay within small contexts.
    """

    Params = CritiqueReviseParams
    inputs = (ParamColumn("prompt_column"), "responses")
    outputs = ("revision", "critiques", "revisions", "principles", "revision_model")
    phase = "label"
    default_batch_size = 64
    params: CritiqueReviseParams

    def constitution_file(self) -> Path:
        return constitution_path(self.params.constitution, self.base_dir)

    def templates(self) -> tuple[Path, Path]:
        p = self.params
        return (
            template_path("critique.jinja", p.critique_template, self.base_dir),
            template_path("revision.jinja", p.revision_template, self.base_dir),
        )

    def files(self) -> list[Path]:
        return [self.constitution_file(), *self.templates()]

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        if self.constitution_file().is_file() and not load_constitution(self.constitution_file()).revisable():
            raise ValueError(
                f"constitution {self.constitution_file()}: no principle has both critique_request and "
                "revision_request, which critique_revise needs"
            )
        critique, revision = self.templates()
        check_template(critique, conversation="c", response="r", critique_request="x")
        check_template(revision, conversation="c", response="r", critique="k", revision_request="x")
        provenance = {"critiques", "revisions", "principles", "revision_model"}
        if self.params.emit == "pairs":
            return {"prompt", "chosen", "rejected", *provenance}
        if self.params.emit == "sft":
            return {"messages", *provenance}
        return super().output_columns(available)

    def setup(self, ctx: StepContext) -> None:
        self.principles = load_constitution(self.constitution_file()).revisable()

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        kept = [r for r in records if isinstance(r.get("responses"), list) and r["responses"]]
        result.dropped += [(r, "no responses") for r in records if not any(r is k for k in kept)]
        count = 1 if self.params.target == "first" else None
        # One state per (record, response): the current text and what every round produced.
        states = [
            {"record": i, "current": text, "critiques": [], "revisions": [], "principles": []}
            for i, r in enumerate(kept)
            for text in r["responses"][:count]
        ]
        failed: dict[int, Quarantined] = {}
        for round_index in range(self.params.rounds):
            self._round(kept, [s for s in states if s["record"] not in failed], round_index, failed, result, ctx)
        reference = ctx.model_reference(self.params.model)
        for i, record in enumerate(kept):
            if i in failed:
                result.quarantined.append(failed[i])
            else:
                self._emit(record, [s for s in states if s["record"] == i], reference, result)
        if self.params.emit != "columns":
            result.inputs_emitted = len(kept) - len(failed)  # pairs/sft may emit several rows per record
        return result

    def _round(
        self,
        records: list[Record],
        states: list[dict[str, Any]],
        round_index: int,
        failed: dict[int, Quarantined],
        result: BatchResult,
        ctx: StepContext,
    ) -> None:
        critique_template, revision_template = self.templates()
        for state in states:
            prompt = records[state["record"]][self.params.prompt_column]
            key = (
                ctx.pipeline_seed,
                self.params.seed,
                self.name,
                prompt_text(prompt),
                state["current"],
                round_index,
            )
            state["principle"] = sample_principles(self.principles, 1, *key)[0]
            state["conversation"] = conversation_text(prompt)
        backend, sampling = ctx.backend(self.params.model), self._sampling(ctx)
        for stage in ("critique", "revision"):
            live = [s for s in states if s["record"] not in failed]
            prompts = [self._prompt(s, stage, critique_template, revision_template) for s in live]
            generated = backend.generate(prompts, sampling) if prompts else []
            count_tokens(result, generated)
            for state, g in zip(live, generated, strict=True):
                record, text = records[state["record"]], first_text(g).strip()
                if not (g.ok and g.completions):
                    failed.setdefault(state["record"], Quarantined(record, JUDGE_FAILED, g.error or "no completion"))
                elif not text:
                    failed.setdefault(
                        state["record"],
                        Quarantined(record, EMPTY_REVISION, f"empty {stage}", raw_output=first_text(g)),
                    )
                elif stage == "critique":
                    state["critique"] = text
                else:
                    state["critiques"].append(state["critique"])
                    state["revisions"].append(text)
                    state["principles"].append(state["principle"].id)
                    state["current"] = text

    def _sampling(self, ctx: StepContext) -> GenerationParams:
        overrides = {
            k: getattr(self.params, k) for k in ("temperature", "max_tokens") if getattr(self.params, k) is not None
        }
        return ctx.sampling(self.params.model, n=1, **overrides)

    def _prompt(self, state: dict[str, Any], stage: str, critique: Path, revision: Path) -> Prompt:
        principle: Principle = state["principle"]
        if stage == "critique":
            text = render(
                critique,
                conversation=state["conversation"],
                response=state["current"],
                critique_request=principle.critique_request,
            )
        else:
            text = render(
                revision,
                conversation=state["conversation"],
                response=state["current"],
                critique=state["critique"],
                revision_request=principle.revision_request,
            )
        return [{"role": "user", "content": text}]

    def _emit(self, record: Record, states: list[dict[str, Any]], reference: str, result: BatchResult) -> None:
        prompt = record[self.params.prompt_column]
        if self.params.emit == "columns":
            columns = {k: [s[k] for s in states] for k in ("current", "critiques", "revisions", "principles")}
            if self.params.target == "first":
                columns = {k: v[0] for k, v in columns.items()}
            revision = columns.pop("current")
            result.records.append({**record, "revision": revision, **columns, "revision_model": reference})
            return
        for state, original in zip(states, record["responses"], strict=False):
            provenance = {k: state[k] for k in ("critiques", "revisions", "principles")}
            if self.params.emit == "pairs":
                row = preference_row(prompt, state["current"], original, **provenance, revision_model=reference)
            else:
                row = sft_row(prompt, state["current"], **provenance, revision_model=reference)
            result.records.append(row)
