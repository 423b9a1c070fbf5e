"""Critique-and-revise (SL-CAI, Bai et al. 2022), driven by a constitution file like the constitutional judge
(``rlaif.steps.constitutional``): principles with ``critique_request`` and ``revision_request``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from rlaif.formats import preference_row, prompt_text, sft_row
from rlaif.schema import GenerationParams, Prompt
from rlaif.steps.base import (
    BatchResult,
    ParamColumn,
    Quarantined,
    Record,
    Step,
    StepContext,
    StepParams,
    sampling_overrides,
)
from rlaif.steps.constitutional import Principle, constitution_path, load_constitution, sample_principles
from rlaif.steps.judges import JUDGE_FAILED, check_template, conversation_text, count_tokens, first_text
from rlaif.templates import render, template_path

EMPTY_REVISION = "empty revision"


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
        return ctx.sampling(self.params.model, **sampling_overrides(self.params, ("temperature", "max_tokens"), n=1))

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
