"""A training output's sections (rlaif.train.outputs: metrics.jsonl, eval.json, the model card): the headline curves
over optimizer steps — loss, DPO/RM reward margins and accuracy, PPO/GRPO reward, KL, entropy, clip fraction — then
every other logged number, the eval curves and the final eval."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlaif.report.page import Section, grid, note, table
from rlaif.report.svg import Series, line_chart

log = logging.getLogger(__name__)
# Chart title -> the keys it draws, as TRL's trainers (sft, rm, dpo family, kto, grpo, rloo) and our PPO log them.
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss", "loss/policy_avg", "loss/value_avg")),
    ("reward margin (DPO, RM)", ("rewards/margins", "margin")),
    ("reward accuracy (DPO, RM)", ("rewards/accuracies", "accuracy")),
    ("rewards of chosen and rejected", ("rewards/chosen", "rewards/rejected")),
    ("reward (PPO, GRPO)", ("reward", "objective/scores", "objective/rlhf_reward")),
    ("KL to the reference", ("kl", "objective/kl", "policy/approxkl_avg")),
    ("entropy", ("entropy", "objective/entropy")),
    ("clip fraction", ("policy/clipfrac_avg", "val/clipfrac_avg", "clip_ratio/region_mean", "clip_ratio/low_mean")),
    ("learning rate", ("learning_rate",)),
    ("gradient norm", ("grad_norm",)),
)
# The trainer's closing line (runtime, flops, mean loss): a table, not a curve.
SUMMARY_KEYS = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}
SKIP = {"step", "epoch"}
MAX_OTHER = 12  # further charts of the remaining logged numbers


@dataclass
class Metrics:
    rows: list[dict[str, float]] = field(default_factory=list)  # numeric training logs, by step
    evals: list[dict[str, float]] = field(default_factory=list)  # rows with eval_* keys
    summary: dict[str, Any] = field(default_factory=dict)
    resumes: list[float] = field(default_factory=list)  # steps where a resumed run started
    bad_lines: list[int] = field(default_factory=list)

    def series(self, key: str, rows: list[dict[str, float]] | None = None) -> Series:
        points = [(r["step"], r[key]) for r in (self.rows if rows is None else rows) if key in r]
        return Series(key, [p[0] for p in points], [p[1] for p in points])

    def names(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(k for k in row if k not in SKIP))
        return list(seen)


def read_metrics(path: Path) -> Metrics:
    """Parse metrics.jsonl; a line that is not a JSON object is skipped and its number kept (a run killed while
    writing leaves half a line)."""
    metrics = Metrics()
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            metrics.bad_lines.append(number)
            continue
        if not isinstance(row, dict):
            metrics.bad_lines.append(number)
            continue
        step = row.get("step")
        if row.get("event") == "train_begin":
            if isinstance(step, int | float) and step > 0:
                metrics.resumes.append(float(step))
            continue
        if SUMMARY_KEYS & set(row):
            metrics.summary.update(row)
            continue
        values = {k: float(v) for k, v in row.items() if _number(v)}
        if "step" not in values:
            continue
        if any(k.startswith("eval_") for k in values):
            metrics.evals.append(values)
        else:
            metrics.rows.append(values)
    return metrics


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def training_sections(root: Path, prefix: str = "") -> list[Section]:
    metrics = read_metrics(root / "metrics.jsonl")
    return [
        Section(f"{prefix}curves", "Training curves", curves(metrics)),
        Section(f"{prefix}eval", "Evaluation", _eval(root, metrics)),
    ]


def curves(metrics: Metrics) -> str:
    if not metrics.rows:
        return note("metrics.jsonl has no training steps.", "warn")
    keys = metrics.names()
    charts, drawn = [], set()
    for title, group in GROUPS:
        present = [k for k in group if k in keys]
        if present:
            charts.append(line_chart(title, [metrics.series(k) for k in present], marks=metrics.resumes))
            drawn.update(present)
    others = [k for k in keys if k not in drawn]
    charts += [line_chart(k, [metrics.series(k)], marks=metrics.resumes) for k in others[:MAX_OTHER]]
    last = metrics.rows[-1]
    text = f"{len(metrics.rows):,} logged steps, last step {last['step']:g}"
    if metrics.resumes:
        text += f"; resumed at step {', '.join(f'{s:g}' for s in metrics.resumes)} (dashed lines)"
    if others[MAX_OTHER:]:
        text += f"; not drawn: {', '.join(others[MAX_OTHER:])}"
    if metrics.bad_lines:
        text += f"; unreadable lines skipped: {metrics.bad_lines[:10]}"
    summary = table(["final", "value"], sorted(metrics.summary.items()), numeric=[1]) if metrics.summary else ""
    return note(text) + grid(charts) + summary


def _eval(root: Path, metrics: Metrics) -> str:
    parts = []
    keys: dict[str, None] = {}
    for row in metrics.evals:
        keys.update(dict.fromkeys(k for k in row if k.startswith("eval_")))
    if metrics.evals:
        shown = [k for k in keys if not k.endswith(("_runtime", "_per_second"))][:MAX_OTHER]
        parts.append(grid([line_chart(k, [metrics.series(k, metrics.evals)]) for k in shown]))
    final = _read_json(root / "eval.json")
    if isinstance(final, dict) and final:
        flat = [[k, v] for k, v in final.items() if not isinstance(v, dict | list)]
        parts.append("<h3>eval.json</h3>" + table(["metric", "value"], flat, numeric=[1]))
    elif not metrics.evals:
        parts.append(note("No evaluation: eval.json is empty or missing and metrics.jsonl has no eval_* rows."))
    card = model_card_tags(root)
    if card:
        parts.append(note(f"model card tags: {', '.join(card)}"))
    return "".join(parts)


def model_card_tags(root: Path) -> list[str]:
    """The tags of the model card's front matter (the recipe: dpo, reward-trainer, ...), adapter's card first."""
    for card in (root / "adapter" / "README.md", root / "README.md"):
        if card.is_file():
            text = card.read_text(errors="replace")
            if text.startswith("---"):
                try:
                    front = yaml.safe_load(text.split("---", 2)[1]) or {}
                except yaml.YAMLError:
                    continue
                tags = front.get("tags") if isinstance(front, dict) else None
                if isinstance(tags, list):
                    return [str(t) for t in tags]
    return []


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        log.warning("report: %s is not JSON; skipped", path)
        return None
