"""What a round reports: records made, kept and dropped by reason; train loss and margins; the held-out win rate;
wall time per phase — as one JSON row per round and a table."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich import box
from rich.console import Group
from rich.table import Column, Table

from rlaif.pipeline.run import RunSummary
from rlaif.rates import mean_interval, rate, short
from rlaif.registry import UnknownComponent
from rlaif.steps.judges import NO_LOGPROBS, PARSE_FAILURE
from rlaif.steps.registry import step_class

# The loop's phases, in round order, as keys of a round's "seconds" (the round table writes hand_off as hand-off).
PHASES = ("generate", "label", "filter", "train", "hand_off", "eval")
# Training metrics worth a column, as TRL logs them (DPO and its family, RM, SFT, KTO, PPO, GRPO/RLOO), and each
# reward component of GRPO/RLOO (rewards/<name>/mean; DPO's rewards/chosen etc. have no /mean).
TRAIN_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "accuracy", "kl", "objective/kl", "reward")
COMPONENT = re.compile(r"^rewards/[^/]+/(mean|unverifiable)$")
# Judge quarantine reasons that mean "the verdict could not be read", as the eval reports them.
PARSE_FAILURES = (PARSE_FAILURE, NO_LOGPROBS)


def step_phase(step_type: str) -> str:
    """The loop phase a step type declares (``Step.phase``: generate, label or filter); a type that no longer
    resolves (a plugin removed since the run) counts as "filter", bookkeeping on records."""
    try:
        return step_class(step_type).phase
    except (UnknownComponent, ImportError):
        return "filter"


def phase_times(stats: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Seconds per phase spent in this run of the pipeline (cached steps cost nothing)."""
    times: Counter[str] = Counter({"generate": 0.0, "label": 0.0, "filter": 0.0})
    for step in stats.values():
        if not step.get("cached"):
            times[step_phase(step["type"])] += step["wall_s"]
    return dict(times)


def data_summary(stats: dict[str, dict[str, Any]], kept: int) -> dict[str, Any]:
    """Records made (what the last generation-phase step handed on), kept (rows saved) and dropped or quarantined,
    by step and reason."""
    # Not a sum over the generate phase: prompt preparation (add_constraints) and the answers are both in it, and one
    # record then counted twice (83 prompts "made" 166). Steps run in topological order, so the last is the answers.
    generated = [s["records_out"] for s in stats.values() if step_phase(s["type"]) == "generate"]
    made = generated[-1] if generated else 0
    dropped = {f"{name}: {reason}": n for name, s in stats.items() for reason, n in s["dropped"].items()}
    quarantined = {f"{name}: {reason}": n for name, s in stats.items() for reason, n in s["quarantined"].items()}
    first = next(iter(stats.values()), None)
    return {
        "prompts": first["records_out"] if first else 0,
        "made": made,
        "kept": kept,
        "dropped": dropped,
        "quarantined": quarantined,
    }


def train_summary(output_dir: Path) -> dict[str, Any]:
    """Mean of each headline training metric over the logged steps of the round (metrics.jsonl), plus eval.json."""
    sums: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    steps = 0
    metrics_file = output_dir / "metrics.jsonl"
    lines = metrics_file.read_text().splitlines() if metrics_file.is_file() else []
    for line in lines:
        row = json.loads(line)
        steps = max(steps, int(row.get("step") or 0))
        for key in [*TRAIN_KEYS, *(k for k in row if COMPONENT.match(k))]:
            if isinstance(row.get(key), int | float):
                sums[key] += row[key]
                counts[key] += 1
    summary: dict[str, Any] = {key: sums[key] / counts[key] for key in counts}
    summary["steps"] = steps
    eval_file = output_dir / "eval.json"
    if eval_file.is_file():
        summary["eval"] = json.loads(eval_file.read_text())
    return summary


def win_rate(result: RunSummary, judge_step: str) -> dict[str, Any]:
    """The judge's figures for policy k (answer A, "candidate") against policy k-1 (B) on the held-out prompts,
    read from the eval run's judge step (its ``preference``, ``consistent`` and, when written, ``p_a`` columns and
    its quarantine counts). See ``judge_figures``."""
    table = pq.read_table(result.datasets[judge_step] / "data")
    names = set(table.column_names)
    preferences = table.column("preference").to_pylist()
    consistent = table.column("consistent").to_pylist() if "consistent" in names else None
    p_a = table.column("p_a").to_pylist() if "p_a" in names else None
    return judge_figures(preferences, consistent, p_a, dict(result.stats[judge_step]["quarantined"]))


def judge_figures(
    preferences: list[str],
    consistent: list[bool] | None = None,
    p_a: list[float | None] | None = None,
    quarantined: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Win rate of A over B from a pairwise judge's verdicts, counted so that position bias cannot pass for a win.

    A verdict whose two presentation orders disagree (``consistent`` false) is a tie, whatever side the averaged
    probabilities leaned to. ``win_rate`` = (wins + ties/2) / judged, with the 95% Wilson interval on that count
    (``rlaif.rates``: a tie is half a success; conservative). ``consistency`` = share of judged comparisons whose
    two orders agree (None when the judge writes no ``consistent`` column); ``parse_failures`` = comparisons
    quarantined as unreadable ("judge parse failure", "no answer-token logprobs"), as a share of all comparisons the
    judge was asked; ``not_judged`` = every comparison the judge step quarantined (failures of any kind);
    ``mean_p_a`` = the mean soft preference for A where the judge writes ``p_a`` (the constitutional judge, the
    pairwise judge with ``logprobs: true``), else None, with ``mean_p_a_ci95`` (Student t) over the ``mean_p_a_n``
    comparisons that have one. Every ``*_ci95`` is [low, high], or None when its n is 0 (and for a mean, n = 1).
    """
    quarantined = quarantined or {}
    flags = consistent if consistent is not None else [True] * len(preferences)
    wins = sum(p == "A" and bool(c) for p, c in zip(preferences, flags, strict=True))
    losses = sum(p == "B" and bool(c) for p, c in zip(preferences, flags, strict=True))
    judged = len(preferences)
    failures = sum(quarantined.get(reason, 0) for reason in PARSE_FAILURES)
    not_judged = sum(quarantined.values())
    win = rate(wins + 0.5 * (judged - wins - losses), judged)
    agree = rate(sum(bool(c) for c in flags), judged) if consistent is not None else None
    failed = rate(failures, judged + not_judged)
    soft = mean_interval([float(v) for v in p_a or [] if isinstance(v, int | float)])
    return {
        "judged": judged,
        "wins": wins,
        "losses": losses,
        "ties": judged - wins - losses,
        "inconsistent": judged - sum(bool(c) for c in flags),
        "win_rate": win.value,
        "win_rate_ci95": win.as_dict()["ci95"],
        "consistency": agree.value if agree else None,
        "consistency_ci95": agree.as_dict()["ci95"] if agree else None,
        "parse_failures": failures,
        "parse_failure_rate": failed.value,
        "parse_failure_ci95": failed.as_dict()["ci95"],
        "not_judged": not_judged,
        "mean_p_a": soft["mean"],
        "mean_p_a_ci95": soft["ci95"],
        "mean_p_a_n": soft["n"],
    }


def base_row() -> dict[str, Any]:
    """Round 0: the starting policy, before any training. The loop's eval compares policy k with policy k-1, so the
    base has no comparison of its own: its ``eval`` is None and the table shows "base" (it is round 1's baseline).
    With ``eval.kind: verifier`` the loop fills ``eval`` with the base's own pass rate (``verifier_eval``)."""
    return {"round": 0, "policy": "base", "trained": False, "not_trained": "the starting policy", "eval": None}


def trained(kept: int, train: dict[str, Any]) -> str | None:
    """Why round k's policy is policy k-1 (no rows kept, training skipped, zero optimizer steps), or None."""
    if kept == 0 or train.get("skipped"):
        return str(train.get("skipped") or "no rows kept")
    if not train.get("steps"):
        return "zero training steps"
    return None


def round_row(
    k: int,
    data: RunSummary,
    kept: int,
    adapter: Path | None,
    train: dict[str, Any],
    wins: dict[str, Any] | None,
    times: dict[str, float],
    released: list[str],
) -> dict[str, Any]:
    """Round k's row of summary.json. ``not_trained`` says why policy k is policy k-1 (then ``eval`` is None: a
    policy compared with itself would read 0.500, a number that measures nothing)."""
    phases = {**phase_times(data.stats), **times}
    why = trained(kept, train)
    return {
        "round": k,
        **data_summary(data.stats, kept),
        "trained": why is None,
        "not_trained": why,
        "train": train,
        "eval": wins,
        "seconds": {name: round(value, 2) for name, value in phases.items()},
        "hand_off": released,
        "adapter": str(adapter) if adapter else None,
        "dataset": str(next(iter(data.datasets.values()))),
    }


# Compact: both tables fit 80 columns, the width rich assumes when the output is a log rather than a terminal.
TABLE_STYLE: dict[str, Any] = {"box": box.SIMPLE_HEAD, "pad_edge": False, "padding": (0, 1, 0, 0)}


def rounds_table(rows: list[dict[str, Any]]) -> Group:
    """Two tables, each readable in an 80-column terminal or log: what each round made and learned, with the
    held-out win rate vs policy k-1 and its 95% interval, the judge's position consistency and its parse failures;
    and where each round's time went. Round 0 is the base policy; a round that trained nothing says so."""
    kinds = {(r.get("eval") or {}).get("kind") for r in rows}
    if "verifier" in kinds or "reward_model" in kinds:
        data = _verifier_table(rows, "reward_model" if "reward_model" in kinds else "verifier")
    else:
        data = _judge_table(rows)
    times = Table(
        "round",
        *(p.replace("_", "-") for p in PHASES),
        "total",
        "hand-off %",
        title="rlaif loop: seconds per phase",
        **TABLE_STYLE,
    )
    for row in rows:
        if "seconds" not in row:  # round 0 ran nothing but (verifier eval) its own eval
            continue
        seconds = row["seconds"]
        total = seconds.get("total", 0.0)
        times.add_row(
            str(row["round"]),
            *(f"{seconds.get(p, 0.0):.1f}" for p in PHASES),
            f"{total:.1f}",
            f"{100 * seconds.get('hand_off', 0.0) / total:.1f}" if total else "-",
        )
    return Group(data, times)


def _judge_table(rows: list[dict[str, Any]]) -> Table:
    against = next((r["eval"].get("against") for r in rows if r.get("eval")), "previous")
    data = Table(
        "round",
        "prompts",
        "made",
        "kept",
        "drop",
        "loss",
        "margin",
        Column(f"win vs {'base' if against == 'base' else 'k-1'} [95% CI]", no_wrap=True, min_width=19),
        "cons.",
        "fail",
        "n",
        title="rlaif loop: data, training, held-out judge eval",
        caption="ties and split verdicts count 1/2; cons. = both orders agree",
        **{**TABLE_STYLE, "padding": (0, 0, 0, 0)},  # 11 columns: one space between them, within 80
    )
    for row in rows:
        data.add_row(*_data_cells(row))
    return data


def _verifier_table(rows: list[dict[str, Any]], kind: str = "verifier") -> Table:
    """Each policy's own held-out figure (round 0: the base) — the verifier's pass rate, or the reward model's mean
    reward — and, per trained round, its difference from the base on the same prompts with its paired interval
    (Newcombe's for pass rates, Student t for rewards)."""
    reward = kind == "reward_model"
    data = Table(
        "round",
        "prompts",
        "made",
        "kept",
        "loss",
        Column("mean reward [95% CI]" if reward else "pass rate [95% CI]", no_wrap=True, min_width=19),
        Column("vs base [95% CI]", no_wrap=True, min_width=22),
        "n",
        title=f"rlaif loop: data, training, held-out {'reward model' if reward else 'verifier'} eval",
        caption=(
            "reward model score of greedy answers; vs base: paired, same prompts"
            if reward
            else "pass = every constraint held; greedy answers; vs base: paired, same prompts"
        ),
        **{**TABLE_STYLE, "padding": (0, 0, 0, 0)},
    )
    for row in rows:
        ev = row.get("eval") or {}
        counts = ["-"] * 4 if row["round"] == 0 else [str(row["prompts"]), str(row["made"]), str(row["kept"])]
        if row["round"]:
            counts.append(_num((row.get("train") or {}).get("loss")))
        if not ev:
            label = "base policy" if row["round"] == 0 else ("not trained" if row.get("not_trained") else "no eval")
            data.add_row(str(row["round"]), *counts, label, "-", "-")
            continue
        if reward:
            figure = _signed(ev.get("mean_reward"), ev.get("mean_reward_ci95"))
        else:
            figure = short({"rate": ev.get("pass_rate"), "ci95": ev.get("pass_rate_ci95"), "n": ev.get("n", 0)})
        diff = ev.get("vs_base") or {}
        vs = "-" if diff.get("difference") is None else _signed(diff["difference"], diff["ci95"])
        data.add_row(str(row["round"]), *counts, figure, vs, str(ev.get("n", 0)))
    return data


def _signed(value: float | None, ci95: list[float] | None) -> str:
    if value is None:
        return "n/a (n=0)"
    return f"{value:+.3f} [{ci95[0]:+.3f},{ci95[1]:+.3f}]" if ci95 else f"{value:+.3f} (n=1)"


def _data_cells(row: dict[str, Any]) -> list[str]:
    if row["round"] == 0:
        return ["0", "-", "-", "-", "-", "-", "-", "base policy", "-", "-", "-"]
    train, wins = row.get("train") or {}, row.get("eval")
    counts = [
        str(row["prompts"]),
        str(row["made"]),
        str(row["kept"]),
        str(sum(row["dropped"].values()) + sum(row["quarantined"].values())),
        _num(train.get("loss")),
        _num(train.get("rewards/margins")),
    ]
    if row.get("not_trained") and not wins:
        return [str(row["round"]), *counts, "not trained", "-", "-", "-"]
    if not wins:
        return [str(row["round"]), *counts, "no eval", "-", "-", "-"]
    win = {"rate": wins.get("win_rate"), "ci95": wins.get("win_rate_ci95"), "n": wins.get("judged", 0)}
    return [
        str(row["round"]),
        *counts,
        short(win) if win["ci95"] or win["rate"] is None else _num(win["rate"]),
        _num(wins.get("consistency"), 2),
        str(wins.get("parse_failures", wins.get("not_judged", 0))),
        str(wins.get("judged", 0)),
    ]


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"
