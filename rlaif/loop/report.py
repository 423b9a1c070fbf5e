"""What a round reports: records made, kept and dropped by reason; train loss and margins; the held-out win rate;
wall time per phase — as one JSON row per round and a table."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich import box
from rich.console import Group
from rich.table import Table

from rlaif.pipeline.run import RunSummary
from rlaif.registry import UnknownComponent
from rlaif.steps.registry import step_class

# The loop's phases, in round order, as keys of a round's "seconds" (the round table writes hand_off as hand-off).
PHASES = ("generate", "label", "filter", "train", "hand_off", "eval")
# Training metrics worth a column, as TRL logs them (DPO and its family, RM, SFT, KTO, PPO).
TRAIN_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "accuracy", "kl", "objective/kl", "reward")


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
    """Records made (by the generation steps), kept (rows saved) and dropped or quarantined, by step and reason."""
    made = sum(s["records_out"] for s in stats.values() if step_phase(s["type"]) == "generate")
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
        for key in TRAIN_KEYS:
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
    """Policy k (answer A, "candidate") against policy k-1 (B): wins + ties/2 over the judged held-out prompts."""
    preferences = pq.read_table(result.datasets[judge_step] / "data", columns=["preference"]).column(0).to_pylist()
    counts = Counter(preferences)
    judged = len(preferences)
    rate = (counts["A"] + 0.5 * counts["tie"]) / judged if judged else None
    return {
        "win_rate": rate,
        "wins": counts["A"],
        "losses": counts["B"],
        "ties": counts["tie"],
        "judged": judged,
        "not_judged": sum(s["quarantined"].get("judge parse failure", 0) for s in result.stats.values()),
    }


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
    phases = {**phase_times(data.stats), **times}
    return {
        "round": k,
        **data_summary(data.stats, kept),
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
    """Two tables, each readable in an 80-column terminal or log: what each round made and learned, and where
    its time went."""
    data = Table(
        "round",
        "prompts",
        "made",
        "kept",
        "dropped",
        "train loss",
        "margin",
        "win rate vs k-1",
        title="rlaif loop: data, training, held-out win rate",
        **TABLE_STYLE,
    )
    times = Table(
        "round",
        *(p.replace("_", "-") for p in PHASES),
        "total",
        "hand-off %",
        title="rlaif loop: seconds per phase",
        **TABLE_STYLE,
    )
    for row in rows:
        train, seconds, wins = row["train"], row["seconds"], row.get("eval") or {}
        data.add_row(
            str(row["round"]),
            str(row["prompts"]),
            str(row["made"]),
            str(row["kept"]),
            str(sum(row["dropped"].values()) + sum(row["quarantined"].values())),
            _num(train.get("loss")),
            _num(train.get("rewards/margins")),
            _num(wins.get("win_rate")) + (f" ({wins['judged']})" if wins else ""),
        )
        total = seconds.get("total", 0.0)
        times.add_row(
            str(row["round"]),
            *(f"{seconds.get(p, 0.0):.1f}" for p in PHASES),
            f"{total:.1f}",
            f"{100 * seconds.get('hand_off', 0.0) / total:.1f}" if total else "-",
        )
    return Group(data, times)


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"
