"""How a run ended: ok, partial, failed or stopped, and whether that is accepted (exit 0, the dataset saved).

- ok: no record quarantined anywhere.
- partial: some records quarantined. Accepted while every step's quarantined share is at most its
  ``max_quarantined`` (the step's key, else the pipeline's, default 0.1), or always with ``allow_partial``.
- failed: a step quarantined every record it got (nothing of it can be trusted); never accepted.
- stopped: a model reached its token or cost budget (rlaif.pipeline.budget): no batch started after that, the steps
  after the stopped one did not run; never accepted (the data is incomplete), exit 3, so a script can tell "raise the
  budget and re-run to continue from the cache" from a failure.

A run that is not accepted exits 1 (3 when stopped at a budget) and leaves the previous dataset in place.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.pipeline.runner import RunResult
from rlaif.pipeline.spec import Pipeline

DEFAULT_MAX_QUARANTINED = 0.1
STOPPED_EXIT = 3  # a run stopped at a budget: resumable by raising it (docs/cli.md lists every exit code)
TOP_REASONS = 5


@dataclass
class Reason:
    """One quarantine reason of one step: how many records, how many of them transient, and one example."""

    step: str
    reason: str
    count: int
    transient: int
    example: str


@dataclass
class Outcome:
    status: str  # ok | partial | failed | stopped
    accepted: bool
    problems: list[str] = field(default_factory=list)  # one line per step that quarantined records
    reasons: list[Reason] = field(default_factory=list)  # the most frequent first
    quarantine_files: list[Path] = field(default_factory=list)
    transient: int = 0  # quarantined records a re-run will retry
    saves: bool = True  # False for a dry run, which never saves

    @property
    def exit_code(self) -> int:
        if self.accepted:
            return 0
        return STOPPED_EXIT if self.status == "stopped" else 1


def max_quarantined(pipeline: Pipeline, step_name: str) -> float:
    own = pipeline.steps[step_name].raw.get("max_quarantined")
    if own is not None:
        return float(own)
    return float(getattr(pipeline, "max_quarantined", None) or DEFAULT_MAX_QUARANTINED)


def judge_run(pipeline: Pipeline, result: RunResult, allow_partial: bool, quarantine_dir: Path | None) -> Outcome:
    """The outcome of ``result``; ``quarantine_dir`` is where the run wrote its quarantine files (None: nowhere)."""
    status, over, problems = "ok", False, []
    for name, stats in result.stats.items():
        quarantined, records_in = sum(stats["quarantined"].values()), stats["records_in"]
        if not quarantined:
            continue
        if stats.get("failed"):
            status = "failed"
            problems.append(f"step {name!r} failed: all {records_in} of its records were quarantined")
            continue
        status = "partial" if status == "ok" else status
        limit, share = max_quarantined(pipeline, name), quarantined / records_in
        above = share > limit
        over = over or above
        problems.append(
            f"step {name!r}: {quarantined} of {records_in} records quarantined ({share:.1%}, "
            f"{'above' if above else 'within'} max_quarantined {limit:g})"
        )
    if result.failed_step:
        skipped = [n for n in pipeline.steps if n not in result.stats]
        if skipped:
            problems.append(f"not run after the failure: {', '.join(skipped)}")
    accepted = status == "ok" or (status == "partial" and (allow_partial or not over))
    if result.stopped is not None and status != "failed":
        status, accepted = "stopped", False
        problems[:0] = budget_lines(pipeline, result)
    outcome = Outcome(status, accepted, problems)
    outcome.reasons, outcome.transient = _reasons(result)
    if quarantine_dir is not None:
        steps = dict.fromkeys(reason.step for reason in outcome.reasons)
        outcome.quarantine_files = [quarantine_dir / f"{step}.jsonl" for step in steps]
    return outcome


def budget_lines(pipeline: Pipeline, result: RunResult) -> list[str]:
    """Why a stopped run stopped: the budget (model, kind, limit, spent), what was kept, what did not run, and how
    to go on."""
    stop = result.stopped
    if stop is None:
        return []
    step = next(reversed(result.stats))  # the stopped step is the last one that ran
    kept = len(result.stores[step].done_batches()) if step in result.stores else 0
    skipped = [n for n in pipeline.steps if n not in result.stats]
    lines = [
        f"budget reached: {stop.message()}",
        f"step {step!r} stopped between batches: {kept} finished batch{'' if kept == 1 else 'es'} kept in the cache",
    ]
    if skipped:
        lines.append(f"not run after the stop: {', '.join(skipped)}")
    lines += [
        f"to go on, raise it and re-run (e.g. models.{stop.model}.budget.{stop.kind}=...):",
        "the finished batches are reused, and their tokens count toward the budget",
    ]
    return lines


def _reasons(result: RunResult) -> tuple[list[Reason], int]:
    counts: Counter[tuple[str, str]] = Counter()
    transient: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, str], str] = {}
    for name, stats in result.stats.items():
        if not sum(stats["quarantined"].values()):
            continue
        for row in result.stores[name].quarantined():
            key = (name, row["reason"])
            counts[key] += 1
            transient[key] += bool(row.get("transient"))
            examples.setdefault(key, row.get("detail") or "")
    reasons = [Reason(s, r, n, transient[(s, r)], examples[(s, r)]) for (s, r), n in counts.most_common()]
    return reasons, sum(transient.values())


def outcome_lines(outcome: Outcome, kept: list[Path] | None = None) -> list[str]:
    """What the CLI prints last: the outcome, why, where the quarantine is, its top reasons with one example each,
    what a re-run would retry, and the datasets a rejected run left untouched."""
    plain = outcome.accepted or outcome.status in ("failed", "stopped")
    lines = [f"run {outcome.status}" + ("" if plain else " (not accepted)")]
    lines += [f"  {problem}" for problem in outcome.problems]
    if outcome.quarantine_files:
        lines.append("quarantine: " + ", ".join(str(path) for path in outcome.quarantine_files))
    for reason in outcome.reasons[:TOP_REASONS]:
        kind = f"{reason.transient} transient" if reason.transient else "permanent"
        example = reason.example.replace("\n", " ")
        example = example if len(example) <= 200 else example[:199] + "…"
        records = f"{reason.count} record{'' if reason.count == 1 else 's'}"
        lines.append(f"  {reason.step}: {reason.reason} — {records} ({kind}); e.g. {example}")
    if len(outcome.reasons) > TOP_REASONS:
        lines.append(f"  … {len(outcome.reasons) - TOP_REASONS} more reasons in the quarantine files")
    if outcome.transient:
        lines.append(
            f"{outcome.transient} quarantined record{'' if outcome.transient == 1 else 's'} failed for a transient "
            "reason: re-run to retry them "
            "(--retry-quarantined retries every quarantined record)"
        )
    if outcome.status == "partial" and not outcome.accepted:
        lines.append("--allow-partial accepts a partial run (or raise max_quarantined)")
    for path in kept or []:
        lines.append(f"dataset not replaced: {path} still holds the previous run's data")
    if not outcome.accepted and not kept and outcome.saves:
        lines.append("no dataset saved")
    return lines
