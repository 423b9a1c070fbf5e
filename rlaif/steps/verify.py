"""Checkable rewards as steps: ``verify`` grades every response with a verifier from ``rlaif.verifiers`` (IFEval-family
constraints, math answers, exact and regex matches, or your own function by dotted path); ``add_constraints``
attaches seeded, compatible IFEval-family constraints to prompts, as instruction-following data sets are built
(Zhou et al. 2023, IFEval; Lambert et al. 2024, Tülu 3's RLVR data).
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rlaif.formats import prompt_text
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
from rlaif.verifiers import READS, Verdict, verifier_problem, verify
from rlaif.verifiers.constraints import (
    CONSTRAINTS,
    constraint_problems,
    describe,
    parse_constraints,
    sample_constraints,
)

log = logging.getLogger(__name__)

# The column each builtin verifier reads (rlaif.verifiers.READS), and the step parameter that names it in the records.
BUILTIN_COLUMNS: dict[str, tuple[str, str]] = {name: (column, f"{column}_column") for name, column in READS.items()}


class BadRow(ValueError):
    """A row that cannot be graded as it is (the record is quarantined with this reason)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def row_constraints(value: Any) -> list[dict]:
    """A row's constraint specs (a list or its JSON string); ``BadRow`` naming every problem when malformed. Specs
    read back from Parquet lose the None arguments other types gave them (``parse_constraints``)."""
    try:
        value = parse_constraints(value)
    except ValueError as exc:
        raise BadRow("malformed constraints", str(exc)) from None
    if problems := constraint_problems(value):
        raise BadRow("malformed constraints", "; ".join(problems))
    return parse_constraints(value)


# -- verify ----------------------------------------------------------------------------------------------------------
class VerifyParams(StepParams):
    verifier: str = Field(
        description="ifeval, math, exact, regex, or a dotted path to fn(prompts, completions, **cols)"
    )
    response_column: str = Field("responses", description="a list of responses per row (each graded), or a string")
    prompt_column: str = "prompt"
    constraints_column: str = Field("constraints", description="ifeval: the constraint specs (a list or JSON string)")
    answer_column: str = Field("answer", description="math, exact: the reference answer")
    pattern_column: str = Field("pattern", description="regex: the pattern a response must match")
    columns: list[str] = Field(default_factory=list, description="a dotted-path verifier: columns passed by name")
    unverifiable: Literal["drop", "keep"] = Field(
        "drop", description="a row none of whose responses can be checked: dropped with the reason, or kept"
    )

    @field_validator("verifier")
    @classmethod
    def _known(cls, value: str) -> str:
        if problem := verifier_problem(value):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _columns_for_plugins(self) -> VerifyParams:
        if self.columns and self.verifier in BUILTIN_COLUMNS:
            raise ValueError(f"columns is for a dotted-path verifier; {self.verifier} reads its own column")
        return self


class Verify(Step):
    """Grade every response with a verifier: checkable rewards, no model (Lambert et al. 2024, Tülu 3's RLVR).

    Inputs: ``prompt``, ``responses`` (a list of strings, each graded; or a string column such as ``chosen`` or
    ``completion``), and the verifier's column: ``constraints`` (ifeval), ``answer`` (math, exact), ``pattern``
    (regex), or ``columns`` (a dotted-path verifier, passed by name). Outputs, aligned with the responses (a list per
    row for a list column, one value for a string column): ``rewards`` (score in [0, 1], None when unverifiable),
    ``verified`` (passed: bool, None when unverifiable or not pass/fail), ``verification`` (per response:
    ``{score, passed, reason, constraints}``, ``constraints`` being ifeval's per-constraint ``{type, passed}``), and
    ``verifier``. Unverifiable responses keep None, which ``make_pairs`` and ``best_of_n`` leave out (never chosen,
    never rejected). A row none of whose responses can be checked is dropped as "unverifiable: REASON" (the most
    common reason; ``unverifiable: keep`` keeps it with Nones). Quarantined: "malformed constraints" (a spec with an
    unknown type or ill-typed argument, contradictory constraints), any other "malformed ..." reason a verifier
    gives (regex: "malformed pattern"), "invalid responses" (neither a string nor a list of strings).
    """

    Params = VerifyParams
    params: VerifyParams
    outputs = ("rewards", "verified", "verification", "verifier")
    phase = "label"
    default_batch_size = 1000

    def required_columns(self) -> set[str]:
        p = self.params
        builtin = BUILTIN_COLUMNS.get(p.verifier)
        own = [getattr(p, builtin[1])] if builtin else p.columns
        return {p.prompt_column, p.response_column, *own}

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        graded: list[tuple[Record, list[str]]] = []
        prompts: list[Any] = []
        completions: list[str] = []
        columns: dict[str, list[Any]] = {}
        for record in records:
            try:
                responses, values = self._inputs(record)
            except BadRow as exc:
                result.quarantined.append(Quarantined(record, exc.reason, exc.detail))
                continue
            graded.append((record, responses))
            prompts += [record.get(self.params.prompt_column)] * len(responses)
            completions += responses
            for name, value in values.items():
                columns.setdefault(name, []).extend([value] * len(responses))
        verdicts = verify(self.params.verifier, prompts, completions, columns) if completions else []
        # Responses that could not be checked inside rows that stay (stats count rows; this counts responses).
        unchecked = Counter((v.reason or "unverifiable").split(":")[0] for v in verdicts if v.score is None)
        if unchecked:
            log.info(
                "%s: %d of %d responses unverifiable: %s", self.name, unchecked.total(), len(verdicts), dict(unchecked)
            )
        position = 0
        for record, responses in graded:
            mine = verdicts[position : position + len(responses)]
            position += len(responses)
            self._emit(record, mine, result)
        return result

    def _inputs(self, record: Record) -> tuple[list[str], dict[str, Any]]:
        """(the row's responses, the verifier's columns for them); ``BadRow`` when it cannot be graded."""
        p = self.params
        value = record.get(p.response_column)
        responses = [value] if isinstance(value, str) else value
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise BadRow("invalid responses", f"{p.response_column!r} is neither a string nor a list of strings")
        builtin = BUILTIN_COLUMNS.get(p.verifier)
        if builtin is None:
            return responses, {name: record.get(name) for name in p.columns}
        name, param = builtin
        column = record.get(getattr(p, param))
        return responses, {name: row_constraints(column) if name == "constraints" else column}

    def _emit(self, record: Record, verdicts: list[Verdict], result: BatchResult) -> None:
        single = isinstance(record.get(self.params.response_column), str)
        # Stats count by a stable label: a reason's text before its first colon ("malformed pattern: ...").
        reasons = Counter((v.reason or "unverifiable").split(":")[0] for v in verdicts if v.score is None)
        if malformed := next((v.reason for v in verdicts if (v.reason or "").startswith("malformed")), None):
            result.quarantined.append(Quarantined(record, malformed.split(":")[0], malformed))
            return
        if verdicts and sum(reasons.values()) == len(verdicts) and self.params.unverifiable == "drop":
            top = reasons.most_common(1)[0][0]
            result.dropped.append((record, "unverifiable" if top == "unverifiable" else f"unverifiable: {top}"))
            return
        rewards = [v.score for v in verdicts]
        passed = [v.passed for v in verdicts]
        details = [_verification(v) for v in verdicts]
        out = {"rewards": rewards, "verified": passed, "verification": details}
        if single:
            out = {key: values[0] for key, values in out.items()}
        result.records.append({**record, **out, "verifier": self.params.verifier})


def _verification(verdict: Verdict) -> dict[str, Any]:
    # One fixed shape per response (Parquet needs one type per column): the per-constraint results as {type, passed}.
    constraints = [{"type": str(d.get("type")), "passed": d.get("passed")} for d in verdict.details]
    return {"score": verdict.score, "passed": verdict.passed, "reason": verdict.reason, "constraints": constraints}


# -- add_constraints -------------------------------------------------------------------------------------------------
class AddConstraintsParams(StepParams):
    k: int = Field(1, ge=1, description="constraints per prompt")
    k_max: int | None = Field(None, ge=1, description="draw between k and k_max constraints per prompt")
    types: list[str] | None = Field(None, description="allow-list of constraint types (default: every sampled type)")
    seed: int = 0
    prompt_column: str = "prompt"
    constraints_column: str = "constraints"

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        drawable = sorted(name for name, spec in CONSTRAINTS.items() if spec.sampled)
        if wrong := [t for t in value if t not in drawable]:
            unknown = [t for t in wrong if t not in CONSTRAINTS]
            what = "unknown constraint type(s)" if unknown else "constraint type(s) that need the prompt to draw"
            raise ValueError(f"{what} {unknown or wrong}; drawable: {', '.join(drawable)}")
        if not value:
            raise ValueError("types is empty: name at least one constraint type, or leave it unset for all")
        return value

    @model_validator(mode="after")
    def _range(self) -> AddConstraintsParams:
        most = self.k_max or self.k
        if self.k_max is not None and self.k_max < self.k:
            raise ValueError(f"k_max ({self.k_max}) is below k ({self.k})")
        available = len(self.types) if self.types else sum(spec.sampled for spec in CONSTRAINTS.values())
        if most > available:
            raise ValueError(f"{most} constraints per prompt, but only {available} types to draw from (one each)")
        return self


class AddConstraints(Step):
    """Attach verifiable instruction-following constraints to each prompt (IFEval-family, as Tülu 3's RLVR and
    IFEval-like data sets are built): ``k`` (to ``k_max``) compatible constraints drawn per prompt, seeded by the
    prompt's text and ``seed`` (the same prompt gets the same constraints in any batch, on any re-run).

    Inputs: ``prompt`` (a string, or a conversation whose last user message gets the constraints). Outputs:
    ``prompt`` with each constraint's instruction sentence appended (IFEval's wording), ``constraints`` (the specs
    as a JSON string: ``[{"type": ..., **args}]``, what ``verify`` with ``verifier: ifeval`` reads — a JSON string
    because each type has its own arguments, which one Parquet column could not hold), ``instruction`` (the prompt
    before the constraints). Quarantined: "invalid prompt" (neither text nor a conversation with a user message),
    "no compatible constraints" (the draw found too few, e.g. from a short ``types`` list).
    """

    Params = AddConstraintsParams
    params: AddConstraintsParams
    inputs = (ParamColumn("prompt_column"),)
    phase = "generate"

    def output_columns(self, available: set[str] | None) -> set[str] | None:
        return None if available is None else available | {self.params.constraints_column, "instruction"}

    def process(self, records: list[Record], ctx: StepContext) -> BatchResult:
        result = BatchResult()
        p = self.params
        for record in records:
            prompt = record.get(p.prompt_column)
            if not _has_user_text(prompt):
                result.quarantined.append(Quarantined(record, "invalid prompt", "neither text nor a user message"))
                continue
            rng = random.Random(int.from_bytes(record_digest(p.seed, prompt_text(prompt))[:8], "big"))
            k = rng.randint(p.k, p.k_max) if p.k_max is not None else p.k
            try:
                specs = sample_constraints(rng, k, p.types)
            except ValueError as exc:
                result.quarantined.append(Quarantined(record, "no compatible constraints", str(exc)))
                continue
            sentences = " ".join(describe(spec) for spec in specs)
            result.records.append(
                {
                    **record,
                    p.prompt_column: _append(prompt, sentences),
                    p.constraints_column: json.dumps(specs),
                    "instruction": prompt_text(prompt),
                }
            )
        return result


def _has_user_text(prompt: Any) -> bool:
    if isinstance(prompt, str):
        return bool(prompt.strip())
    return isinstance(prompt, list) and any(
        isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str) for m in prompt
    )


def _append(prompt: str | list[dict], sentences: str) -> str | list[dict]:
    """The prompt with ``sentences`` after its text (a string) or after its last user message (a conversation)."""
    if isinstance(prompt, str):
        return f"{prompt.rstrip()}\n\n{sentences}"
    last = max(i for i, m in enumerate(prompt) if isinstance(m, dict) and m.get("role") == "user")
    message = prompt[last]
    return [
        *prompt[:last],
        {**message, "content": f"{message['content'].rstrip()}\n\n{sentences}"},
        *prompt[last + 1 :],
    ]
