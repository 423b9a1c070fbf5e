"""The judge check: how well a judge step, as configured, agrees with human preference labels — measured before it
labels anything (``check:`` on ``pairwise_judge`` / ``constitutional_judge``), or from ``rlaif judge-eval``.

The sample is any human-preference file the adapters of ``rlaif.formats.human`` read (generic prompt/chosen/
rejected, HH-RLHF, UltraFeedback, SHP, ...; JSON lines or Parquet). Each pair is shown with the human-preferred
response at a seeded random position (A or B), so a judge that always names one position scores about 50%, and the
judge asks both presentation orders as it does when labelling. Figures, each a ``rlaif.rates.Rate`` (95% Wilson
interval) with its n:

- ``agreement``: the judge's preference equals the human label, over all n pairs (ties, split verdicts and failures
  count as misses);
- ``agreement_consistent``: the same, over the judged pairs whose two orders agree;
- ``consistency``: share of judged pairs whose two orders agree (position consistency);
- ``parse_failures``: pairs quarantined as unreadable ("judge parse failure", "no answer-token logprobs"), over n.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import Field

from rlaif.config import ConfigError
from rlaif.formats import completion_text
from rlaif.formats.human import FormatError, convert, detect_format
from rlaif.rates import Rate, counts_text, short
from rlaif.steps.base import BatchResult, Record, Step, StepContext, StepParams
from rlaif.steps.item_files import read_items
from rlaif.steps.verdicts import NO_LOGPROBS, PARSE_FAILURE

log = logging.getLogger(__name__)
UNREADABLE = (PARSE_FAILURE, NO_LOGPROBS)
HUMAN, KEY = "_check_human", "_check_id"  # columns the check adds to its records: the human label and the pair id


class JudgeCheck(StepParams):
    """``check:`` on a judge step: score it on human-labelled pairs in ``setup``, before it labels anything."""

    data: str = Field(description="human-preference file (JSON lines or Parquet), relative to the pipeline file")
    sample: int | None = Field(100, ge=1, description="pairs drawn from the file (seeded); null: all of them")
    min_agreement: float | None = Field(None, ge=0, le=1, description="stop the run when agreement is below this")
    seed: int = Field(0, description="which pairs are drawn and which side is shown first")


class JudgeCheckFailed(ConfigError):
    """The judge agrees with the human labels less often than ``min_agreement``: the run stops before labelling.
    A ``ConfigError`` (the judge as configured is not fit to label), so ``rlaif run`` and ``rlaif loop`` print it
    and exit 2 like any problem found before work starts."""


def load_pairs(path: Path, sample: int | None, seed: int, prompt_column: str = "prompt") -> list[Record]:
    """Judge records from a human-preference file: ``prompt_column``, ``responses`` (the pair, human-preferred side
    drawn by ``seed``), ``_check_human`` ("A" | "B") and ``_check_id``. Records the adapters reject are skipped with a
    warning; ``sample`` pairs are drawn without replacement (seeded), in file order."""
    pairs = []
    for number, raw in enumerate(read_items(path), 1):
        try:
            rows = convert(detect_format(raw) or "generic", raw)
        except (FormatError, ValueError) as exc:
            log.warning("%s:%d: skipped: %s", path, number, exc)
            continue
        pairs += [(row["prompt"], completion_text(row["chosen"]), completion_text(row["rejected"])) for row in rows]
    rng = random.Random(seed)
    if sample is not None and sample < len(pairs):
        pairs = [pairs[i] for i in sorted(rng.sample(range(len(pairs)), sample))]
    records = []
    for i, (prompt, chosen, rejected) in enumerate(pairs):
        human_first = rng.random() < 0.5
        responses = [chosen, rejected] if human_first else [rejected, chosen]
        records.append({prompt_column: prompt, "responses": responses, HUMAN: "A" if human_first else "B", KEY: i})
    return records


def score(records: list[Record], judged: BatchResult) -> dict[str, Any]:
    """The check's figures from the judge's output on ``records`` (see the module docstring)."""
    n = len(records)
    human = {r[KEY]: r[HUMAN] for r in records}
    out = judged.records
    both = [r for r in out if r.get("consistent", True)]
    unreadable = sum(q.reason in UNREADABLE for q in judged.quarantined)
    figures: dict[str, Any] = {
        "n": n,
        "judged": len(out),
        "human_first": sum(r[HUMAN] == "A" for r in records),
        "agreement": Rate(sum(r["preference"] == human[r[KEY]] for r in out), n).as_dict(),
        "agreement_consistent": Rate(sum(r["preference"] == human[r[KEY]] for r in both), len(both)).as_dict(),
        "consistency": Rate(len(both), len(out)).as_dict(),
        "parse_failures": Rate(unreadable, n).as_dict(),
        "ties": sum(r["preference"] == "tie" for r in out),
        "quarantined": dict(Counter(q.reason for q in judged.quarantined)),
    }
    soft = [r["p_a"] if human[r[KEY]] == "A" else 1 - r["p_a"] for r in out if isinstance(r.get("p_a"), float)]
    figures["mean_p_human"] = sum(soft) / len(soft) if soft else None
    return figures


def run_check(
    process: Callable[[list[Record], StepContext], BatchResult],
    ctx: StepContext,
    records: list[Record],
    batch_size: int = 256,
) -> dict[str, Any]:
    """Judge ``records`` with ``process`` (a judge step's hook) in batches, under a context of its own (the step name
    + ":check", so its sampling seeds differ from the labelling batches'), and score the result."""
    ctx = replace(ctx, step_name=f"{ctx.step_name}:check")
    merged = BatchResult()
    for index, start in enumerate(range(0, len(records), batch_size)):
        part = process(records[start : start + batch_size], replace(ctx, batch_index=index))
        merged.records += part.records
        merged.dropped += part.dropped
        merged.quarantined += part.quarantined
        merged.tokens_in += part.tokens_in
        merged.tokens_out += part.tokens_out
    return {**score(records, merged), "tokens_in": merged.tokens_in, "tokens_out": merged.tokens_out}


def check_step(
    step_name: str,
    check: JudgeCheck,
    data: Path,
    process: Callable[[list[Record], StepContext], BatchResult],
    ctx: StepContext,
    prompt_column: str = "prompt",
) -> dict[str, Any]:
    """``check:`` in a judge step's ``setup``: run it, log it, and raise ``JudgeCheckFailed`` (naming the step, the
    figures and the threshold) when agreement is below ``min_agreement``. Returns the figures for the step's stats."""
    records = load_pairs(data, check.sample, check.seed, prompt_column)
    figures = {"data": data.name, "seed": check.seed, **run_check(process, ctx, records)}
    figures["min_agreement"] = check.min_agreement
    agreement = figures["agreement"]
    below = check.min_agreement is not None and (agreement["rate"] or 0.0) < check.min_agreement
    figures["passed"] = not below
    log.warning("judge check of step %r: %s", step_name, summary(figures))
    if below:
        raise JudgeCheckFailed(
            f"step {step_name!r}: the judge agrees with the human labels of {data.name} on "
            f"{summary(figures)}; below min_agreement {check.min_agreement}: stopped before labelling"
        )
    return figures


def check_files(step: Step) -> list[Path]:
    """The check's data file, for a judge step's ``files()``: checked before a run, hashed into its cache key."""
    check: JudgeCheck | None = getattr(step.params, "check", None)
    return [step.resolve(check.data)] if check else []


def check_in_setup(step: Step, ctx: StepContext) -> dict[str, Any]:
    """What a judge step's ``setup`` calls: ``{"judge_check": figures}`` when its params have a ``check``, else {}."""
    check: JudgeCheck | None = getattr(step.params, "check", None)
    if check is None:
        return {}
    column = getattr(step.params, "prompt_column", "prompt")
    return {"judge_check": check_step(step.name, check, step.resolve(check.data), step.process, ctx, column)}


def summary(figures: dict[str, Any]) -> str:
    """One line: agreement, agreement when both orders agree, consistency, parse failures, each with its interval."""
    parts = []
    for key, label in LABELS.items():
        figure = figures[key]
        parts.append(f"{label} {counts_text(figure['successes'], figure['n'])} = {short(figure)}")
    return "; ".join(parts)


LABELS = {
    "agreement": "agreement",
    "agreement_consistent": "agreement when both orders agree",
    "consistency": "position consistency",
    "parse_failures": "parse failures",
}
